"""The dashboard's pages, run by Streamlit as scripts (frontend/ui.py's PAGE_FILES); a package so that
the import contracts (tests/test_layout.py) cover them too."""
