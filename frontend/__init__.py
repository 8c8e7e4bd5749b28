"""KLQ Lab's dashboard (Streamlit): `klq ui` runs `streamlit run frontend/app.py`.

The pages talk to the API through `klq.client` (the library's REST client, the one scripts use);
`frontend.logic` is the pages' data shaping (no Streamlit), `frontend.ui` the Streamlit helpers,
`frontend/views/` the pages (not `pages/`: a folder of that name beside app.py switches Streamlit to its
legacy multipage mode, which ignores `st.navigation`).
"""
