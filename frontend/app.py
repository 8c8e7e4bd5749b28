"""KLQ Lab's dashboard: `streamlit run frontend/app.py` (or `klq ui`), talking to the API at
KLQ_API_URL with the token from KLQ_API_TOKEN, <KLQ_DATA_DIR>/api_token, or the sidebar."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `streamlit run frontend/app.py` from a checkout that is not installed
    sys.path.insert(0, str(ROOT))

import streamlit as st  # noqa: E402

from frontend import ui  # noqa: E402

st.set_page_config(page_title="KLQ Lab", page_icon=":material/science:", layout="wide")

RUNS_ICON = ":material/table_rows:"
pages = [
    # The default page is served at "/" only (Streamlit ignores a default page's url_path; "index" just
    # names it). It comes first: st.switch_page to views/runs.py (ui.go("runs")) picks the first match.
    st.Page(ui.PAGE_FILES["runs"], title="Runs", icon=RUNS_ICON, url_path="index", default=True),
    # The same page at /runs (the path users type, like /launch or /run), else "Page not found".
    st.Page(ui.PAGE_FILES["runs"], title="Runs", icon=RUNS_ICON, url_path="runs", visibility="hidden"),
    st.Page(ui.PAGE_FILES["launch"], title="Launch", icon=":material/rocket_launch:", url_path="launch"),
    st.Page(ui.PAGE_FILES["run"], title="Run", icon=":material/monitoring:", url_path="run"),
    st.Page(ui.PAGE_FILES["compare"], title="Compare", icon=":material/compare_arrows:", url_path="compare"),
    st.Page(
        ui.PAGE_FILES["samples"], title="Samples & judgements", icon=":material/chat:", url_path="samples"
    ),
    st.Page(
        ui.PAGE_FILES["experiments"], title="Experiments", icon=":material/science:", url_path="experiments"
    ),
    st.Page(
        ui.PAGE_FILES["leaderboard"],
        title="Leaderboard",
        icon=":material/leaderboard:",
        url_path="leaderboard",
    ),
    st.Page(ui.PAGE_FILES["vote"], title="Vote", icon=":material/how_to_vote:", url_path="vote"),
]
page = st.navigation(pages)
with st.sidebar:
    st.markdown("### KLQ Lab")
    st.caption("RLHF runs with KLQ and PPO")
ui.connection_sidebar()
page.run()
