"""sfsd dashboard: the navigation (Home first, then the pages in pages/) and the Home page: the model, the runs
in the cache, and a one-click quick demo.

A page URL opened first on a freshly started server reaches Streamlit's legacy handling of pages/, which runs
that page alone; `widgets.page_setup` then reruns it through this navigation (see `widgets.route_through_app`),
so every page shows "Home" first in the sidebar however it was opened.

`make app` runs `streamlit run app.py --server.address 127.0.0.1`.
"""

from pathlib import Path

import pandas as pd
import streamlit as st

from sfsd.dashboard import data, jobs, widgets
from sfsd.errors import SfsdError
from sfsd.runs.readonly import READONLY_ENV, readonly

PAGES_DIR = Path(__file__).resolve().parent / "pages"
# (file in pages/, label of its link on Home, icon); the sidebar names pages after their files, and their URLs
# are Streamlit's names for the files (1_Runs.py -> /Runs), the names its legacy pages/ handling uses too
PAGE_LINKS = [("1_Runs.py", "Runs: start, watch, cancel", ":material/list:"),
              ("2_Budget_heatmap.py", "Budget heatmap (Fig. 3)", ":material/grid_on:"),
              ("3_Spectra.py", "Eigenvalue spectra", ":material/show_chart:"),
              ("4_Accuracy_vs_parameters.py", "Accuracy vs params (Fig. 1-2)", ":material/trending_down:"),
              ("5_Weight_vs_feature.py", "Weight vs feature (Table 1)", ":material/table_chart:"),
              ("6_Disagreement.py", "Disagreement (Table 3)", ":material/compare_arrows:"),
              ("7_Bias.py", "Bias: StereoSet (Table 2)", ":material/balance:"),
              ("8_Report.py", "HTML report of a run", ":material/description:"),
              ("9_Frontier.py", "Budget-quality frontier", ":material/ssid_chart:")]

PAGE_LINK_COLUMNS = 2  # the longest label fits half the page at 1000 px (four columns cut them)

# where the finished quick demo sends the reader: (file in pages/, label, icon)
DEMO_NEXT = [("2_Budget_heatmap.py", "Budget per layer: heatmap", ":material/grid_on:"),
             ("3_Spectra.py", "Spectra: feature vs weight", ":material/show_chart:"),
             ("4_Accuracy_vs_parameters.py", "Accuracy vs parameters", ":material/trending_down:"),
             ("5_Weight_vs_feature.py", "Table 1: feature vs weight at one budget", ":material/table_chart:")]


def home() -> None:
    widgets.page_setup("sfsd: Surgical Feature-Space Decomposition",
                       "Where is a language model low-rank? Compress its linear layers in weight space or feature "
                       "space, search per-layer budgets, and compare accuracy, perplexity, flips and bias.")
    if readonly():
        st.info(f"**Read-only presenting mode** ({READONLY_ENV}=1): the runs can be explored and downloaded, but "
                "nothing can be started, cancelled, deleted, saved or imported from this dashboard.",
                icon=":material/lock:")
    model = data.demo_model()
    # one column: side by side, the model's figures and roles and the demo's text and button were cut at 1000 px
    info = model_panel(model)
    if readonly():  # no demo to start: only what is running
        st.subheader("In progress")
    else:
        demo_panel(model, info["blocks"] if info else data.model_blocks(model))
    widgets.progress_panel(key="start-progress")

    st.subheader("Runs in the cache")
    runs_table()

    st.subheader("Pages")
    cols = st.columns(PAGE_LINK_COLUMNS)
    for i, (name, label, icon) in enumerate(PAGE_LINKS):
        if readonly() and name == "1_Runs.py":
            label = "Runs: watch, move them"
        widgets.page_link(f"pages/{name}", label, icon, container=cols[i % PAGE_LINK_COLUMNS])


def model_panel(model: str) -> dict | None:
    """The model's family, size and roles (None when it cannot be read)."""
    st.subheader(f"Model: {data.model_display(model)}")
    try:
        info = data.model_summary(model)
    except (SfsdError, OSError, ValueError) as exc:
        st.warning(data.shown(f"Cannot read the model {model!r}: {exc}. Run `make setup` (or `sfsd prepare`) "
                              "first."))
        return None
    cols = st.columns(4)  # short values: a metric does not wrap, and a quarter of the page is ~130 px at 1000 px
    cols[0].metric("Family", info["model_type"], help=info["architecture"])
    cols[1].metric("Blocks", info["blocks"])
    cols[2].metric("Parameters", f"{info['params'] / 1e6:.3g} M", help=f"{info['params']:,} parameters")
    cols[3].metric("Linear share", f"{100 * info['params_linear_full'] / info['params']:.0f}%",
                   help="share of the parameters in the decomposable linear layers (the rest: embeddings, norms)")
    st.caption(f"{info['architecture']} · roles: {', '.join(info['roles'])} · hidden size {info['hidden_size']} · "
               f"{info['heads']} attention heads ({info['kv_heads'] or info['heads']} key/value) · "
               f"vocabulary {info['vocab_size']:,} · {info['layers_total']} decomposable layers · "
               f"loaded from `{data.shown(info['source'])}`")
    widgets.table(info["roles_table"], "model-roles", key="start-roles", column_config={  # short: fits at 1000 px
        "layers": st.column_config.NumberColumn("layers", help="one per block", width=60),
        "d_in": st.column_config.NumberColumn("d_in", width=60),
        "d_out": st.column_config.NumberColumn("d_out", width=60),
        "params": st.column_config.NumberColumn("params (all blocks)", format="localized", width=130),
        "share_of_linear_%": st.column_config.NumberColumn("% of linear", format="%.1f", width=90)})
    return info


def demo_panel(model: str, blocks: int | None) -> None:
    """What the quick demo runs, its command lines, its button; once done, what it ran, how long it took (as
    measured by its process) and where to look."""
    st.subheader("Quick demo")
    configs = jobs.demo_configs(model, blocks)
    record = jobs.demo_record()
    summary = widgets.demo_summary([data.load_run(run_id) for run_id in jobs.demo_run_ids(model, blocks)], record)
    measured = widgets.demo_seconds(record)
    took = "" if summary else ("about 4 minutes on an idle 2-core laptop CPU" if measured is None
                               else f"{widgets.duration(measured)} when it last ran here")
    last = min(jobs.DEMO_BLOCKS, blocks) if blocks else jobs.DEMO_BLOCKS
    st.write(f"One background process runs two surgical searches over the last {last} blocks of "
             f"**{data.model_display(model)}**, in feature space then in weight space (perplexity within 10% of "
             f"the base model), each scoring {jobs.DEMO_TASK} on {jobs.DEMO_SNAPSHOT_LIMIT} documents at every "
             f"snapshot; then Table 1's protocol on the same blocks at beta {jobs.DEMO_BETA:g}: the base model, "
             "feature space and weight space at the same budget, scored on the same documents and on perplexity"
             + (f": {took}" if took else "") + ". Closing the tab does not stop it.")
    with st.expander("Its command lines"):
        st.code("\n".join(jobs.command_line(config) for config in configs), language="bash", wrap_lines=True)
    widgets.demo_button(key="start-demo")
    if summary:
        st.success(summary, icon=":material/check_circle:")
        st.caption("Where to look next:")
        for name, label, icon in DEMO_NEXT:  # one per line: two columns cut the labels at 1400 px
            widgets.page_link(f"pages/{name}", label, icon)


@st.fragment(run_every=3)
def runs_table() -> None:
    """The runs of the store, refreshed every 3 s so that a running one's state and progress move."""
    runs = data.list_runs(readable=False)
    if runs.empty:
        where = "the cache" if readonly() else f"`{data.store_root()}`"
        st.info(f"No runs in {where} yet: start the quick demo above, a search on the Runs page, or import runs "
                "there.")
        return
    # no "kind" column: the run id starts with it (search-..., uniform-...), and the id needs the room
    columns = ["run_id", "method", "model", "metric", "tolerance", "strategy", "target_budget", "state", "progress",
               "overall_budget", "updated", "origin"]
    shown = data.runs_text(runs[columns])
    shown["model"] = [data.model_display(m) if isinstance(m, str) else m for m in shown["model"]]  # full: Runs
    # one short "target" instead of metric and tolerance, minutes instead of milliseconds: all fits at 1400 px
    shown["metric"] = shown["target"]
    shown["updated"] = [data.EMPTY if pd.isna(u) else pd.Timestamp(u).strftime("%m-%d %H:%M") for u in runs["updated"]]
    hidden = ["tolerance", "strategy", "target_budget", "target"]
    shown = shown.drop(columns=hidden + ([] if (runs["origin"].fillna("") != "").any() else ["origin"]))
    # narrower than the Runs page's: every column up to "updated" fits the 940 px of a 1400 px window
    widgets.table(shown, "runs", key="start-runs",
                  column_config=widgets.run_columns(run_id=315, method=80, model=95, state=80, progress=90))


# No icon on Home: the start page's icon becomes the tab's favicon, which Streamlit fetches from fonts.gstatic.com
# for a Material icon (the dashboard makes no request outside this machine; tests/test_browser.py checks).
pages = [st.Page(home, title="Home", default=True),
         *(st.Page(str(PAGES_DIR / name)) for name, _, _ in PAGE_LINKS)]
navigation = st.navigation(pages)
widgets.mark_routed()
navigation.run()
