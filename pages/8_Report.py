"""Report: one run as a single self-contained HTML file (all its figures and tables), to download or share."""

import streamlit as st

from sfsd.dashboard import data, report, widgets

widgets.page_setup("Report", "Everything the dashboard shows about one run, or about one model (its Table 1 "
                   "protocols, its frontier, its disagreement and bias comparisons), in a single HTML file: works "
                   "offline, interactive figures included.")

runs = data.list_runs()
if runs.empty:
    widgets.no_runs("runs", key="report-empty")
    st.stop()

if st.radio("Report of", ["one run", "one model"], horizontal=True, key="report-of") == "one model":
    models = sorted(runs["model"].dropna().astype(str).unique())
    model = st.selectbox("Model", models, format_func=data.model_display, key="report-model")

    # the comparisons made on the Disagreement and Bias pages in this browser session (cached on disk: a second
    # Compare or Score is instant)
    pairs, scored = report.model_comparisons(model, st.session_state.get("dis-results", {}),
                                             st.session_state.get("bias-results", {}))

    @st.cache_data(ttl=10, show_spinner="Building the report...", max_entries=4)
    def build_model(root: str, model: str, newest: str, compared: tuple, _pairs: list, _scored: list) -> str:
        return report.build_model_report(model, _pairs, _scored)

    compared = (tuple(st.session_state.get("dis-results", {})), tuple(st.session_state.get("bias-results", {})))
    document = build_model(data.store_root(), model, str(runs["updated"].max()), compared, pairs, scored)
    st.caption(f"Includes {len(pairs)} disagreement and {len(scored)} bias comparison(s) of this model made on those "
               "pages in this session; make more there and they join the report.")
    st.download_button("Download the HTML report", document.encode(), file_name="sfsd-model-report.html",
                       mime="text/html", key="report-model-download", type="primary", icon=":material/download:",
                       on_click="ignore")
    st.caption(f"{len(document) / 1e6:.1f} MB · self-contained (Plotly's JavaScript is inlined once).")
    if st.toggle("Preview", value=True, key="report-model-preview"):
        st.iframe(document, height=900)
    st.stop()

finished = list(runs.loc[runs["state"] == "done", "run_id"])  # newest first: the report starts at the latest
run_id, view = widgets.pick_loaded_run(runs, key="report-run", starts_among=finished)
if view is None:
    st.stop()


@st.cache_data(ttl=10, show_spinner="Building the report...", max_entries=8)
def build(root: str, run_id: str, updated: str | None) -> str:
    view = data.load_run(run_id)
    if view is None:
        return ""
    group = None
    if view.kind == "uniform":
        group = data.table1_rows(data.uniform_frame(), view.model, view.config.get("beta"),
                                 view.config.get("last_blocks"), **{k: view.config.get(k, v)
                                                                    for k, v in data.PAPER_FORMAT.items()})
    return report.build_report(view, data.spectra(run_id) if view.kind == "search" else data.spectra(run_id).head(0),
                               group)


document = build(data.store_root(), run_id, str(view.status.get("updated")))
if view.state in data.ACTIVE_STATES:
    st.caption("This run is still going: the report shows what it has written so far.")
# the button on a row of its own: in a quarter of the page its label was cut at 1000 px
st.download_button("Download the HTML report", document.encode(), file_name=f"sfsd-report-{run_id}.html",
                   mime="text/html", key="report-download", type="primary", icon=":material/download:",
                   on_click="ignore")
st.caption(f"{len(document) / 1e6:.1f} MB · self-contained (Plotly's JavaScript is inlined once).")
if st.toggle("Preview", value=True, key="report-preview"):
    st.iframe(document, height=900)
