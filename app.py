"""sfsd dashboard: entry page (the other pages live in pages/)."""

import streamlit as st

st.set_page_config(page_title="sfsd", layout="wide")
st.title("sfsd: Surgical Feature-Space Decomposition")
st.write("The dashboard pages are being built. Use the `sfsd` command line meanwhile: `sfsd --help`.")
