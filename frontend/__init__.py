"""KLQ Lab's dashboard (Streamlit): `klq ui` runs `streamlit run frontend/app.py`.

`frontend.client` is the REST client (no Streamlit), `frontend.logic` the pages' data shaping (no
Streamlit), `frontend.ui` the Streamlit helpers, `frontend/views/` the pages (not `pages/`: a
folder of that name beside app.py switches Streamlit to its legacy multipage mode, which ignores
`st.navigation`).
"""
