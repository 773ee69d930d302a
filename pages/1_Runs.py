"""Runs: the run store's table, live progress, starting a search, and one run's details."""

import json

import pandas as pd
import streamlit as st

from sfsd.adapters.base import ROLE_ORDER
from sfsd.compress import CalibrationSpec
from sfsd.dashboard import data, jobs, plots, widgets
from sfsd.data import CALIBRATION_SOURCES, OFFLINE_TASKS
from sfsd.decompose import METHODS
from sfsd.models import DTYPE_CHOICES
from sfsd.runs.readonly import readonly
from sfsd.search import METRICS, STRATEGIES

widgets.page_setup("Runs", "Every search and uniform run in the cache: status, progress, config. Runs execute in "
                   "background processes; this page only watches them.")

st.subheader("In progress")
widgets.progress_panel(key="runs-progress")

st.subheader("All runs")
runs = data.list_runs(readable=False)
if runs.empty:
    widgets.no_runs("runs", key="runs-empty")
else:
    shown = data.runs_text(runs)
    shown["eta"] = [widgets.duration(eta) if state in data.ACTIVE_STATES else data.EMPTY
                    for eta, state in zip(runs["eta_s"], runs["state"], strict=True)]
    # what to read first fits at 1400 px (short headers, fixed widths); the details follow, by scrolling right
    shown["metric"] = shown["target"]
    shown["layers"] = [data.EMPTY if d == data.EMPTY else f"{d}/{t}" for d, t in zip(shown["layers_done"],
                                                                                    shown["layers_total"], strict=True)]
    order = ["run_id", "kind", "method", "metric", "state", "progress", "eta", "overall_budget", "layers", "model",
             "updated", "created", "origin", "message", "pid"]
    widgets.table(shown[order], "runs", key="runs-all", column_config=widgets.run_columns())

with st.expander("Move runs between machines", icon=":material/move_to_inbox:", expanded=runs.empty):
    widgets.transfer_panel(data.list_runs(), key="runs-transfer")

# ---- start a search --------------------------------------------------------------------------------------

if not readonly():  # read-only mode: nothing is started from this page
    with st.expander("Start a search", expanded=runs.empty, icon=":material/play_arrow:"):
        defaults = CalibrationSpec()
        c1, c2, c3, c4 = st.columns(4)
        model = c1.text_input("Model (short name, folder or hub id)", value=data.demo_model(), key="new-model")
        method = c2.selectbox("Method", list(METHODS), index=list(METHODS).index("feature"), key="new-method")
        metric = c3.selectbox("Metric", list(METRICS), key="new-metric",
                              help="ppl: perplexity on wiki windows; task: accuracy on a task's search split")
        tolerance = c4.number_input("Tolerance", min_value=0.0, max_value=10.0, value=0.05, step=0.01, format="%.3f",
                                    key="new-tolerance",
                                    help="ppl: relative increase allowed (0.05 = 5%); task: accuracy drop allowed")
        c1, c2, c3, c4 = st.columns(4)
        task, limit, acc_norm, samples, seq_len = None, None, False, 8, 128
        if metric == "task":
            task = c1.selectbox("Task", list(OFFLINE_TASKS), key="new-task")
            limit = c2.number_input("Documents (0 = all)", min_value=0, value=100, step=10, key="new-limit")
            acc_norm = c3.checkbox("acc_norm", key="new-accnorm")
        else:
            samples = c1.number_input("Search windows", min_value=1, value=32, key="new-samples",
                                      help="32 windows of 128 tokens (4,096) keep a +5% search near +5% on unseen text")
            seq_len = c2.number_input("Tokens per window", min_value=2, value=128, step=16, key="new-seqlen")
        strategy = c4.selectbox("Strategy", list(STRATEGIES), key="new-strategy",
                                help="linear: the paper's scan of beta 0.1..0.9; bisect: fewer trials")
        c1, c2, c3, c4 = st.columns(4)
        calib_source = c1.selectbox("Calibration source", list(CALIBRATION_SOURCES), key="new-calib-source",
                                    index=list(CALIBRATION_SOURCES).index(defaults.source)
                                    if defaults.source in CALIBRATION_SOURCES else 0)
        calib_samples = c2.number_input("Calibration samples", min_value=1, value=128, step=32, key="new-calib-samples")
        calib_seq_len = c3.number_input("Calibration tokens per sample", min_value=2, value=defaults.seq_len, step=16,
                                        key="new-calib-seqlen")
        blocks = data.model_blocks(model)
        first_block = c4.number_input("First block", min_value=0, max_value=max(0, (blocks or 1000) - 1),
                                      value=max(0, (blocks or 3) - 3), key="new-first-block",
                                      help="blocks below it are never touched"
                                      + (f" (model has {blocks})" if blocks else ""))
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        roles = c1.multiselect("Roles (none = all)", [r for r in ROLE_ORDER if r not in ("qkv", "gate_up")],
                               key="new-roles")
        snapshot_tasks = c2.multiselect("Tasks evaluated at each snapshot", list(OFFLINE_TASKS), key="new-snap-tasks",
                                        help="eval-split accuracy for the accuracy-versus-parameters page (slower)")
        snapshot_every = c3.number_input("Snapshot every (layers)", min_value=1, value=7, key="new-snap-every")
        dtype = c4.selectbox("Dtype", list(DTYPE_CHOICES), key="new-dtype",
                             help="auto: the checkpoint's dtype on CUDA, float32 on CPU")
        argv = jobs.search_argv(model, method, metric, float(tolerance), task, int(limit or 0) or None, acc_norm,
                                int(samples), int(seq_len), strategy, int(first_block), roles, calib_source,
                                int(calib_samples), int(calib_seq_len), int(snapshot_every), snapshot_tasks,
                                dtype=dtype)
        st.code(jobs.command_line(argv), language="bash", wrap_lines=True)
        if st.button("Start search", key="new-start", type="primary", icon=":material/play_arrow:"):
            widgets.launch_and_report(argv)

# ---- one run -----------------------------------------------------------------------------------------------

readable = data.list_runs()
if not readable.empty:
    st.subheader("Run details")
    run_id, view = widgets.pick_loaded_run(readable, key="runs-detail")
    if view is not None:
        status = view.status
        cols = st.columns(5)
        cols[0].metric("State", view.state)
        total = status.get("layers_total")
        cols[1].metric("Layers decided", f"{status.get('layers_done') or 0}/{total or '?'}")
        cols[2].metric("Trials", status.get("trials_done") or 0)
        budget = (view.result or {}).get("overall_budget")
        cols[3].metric("Overall budget", data.EMPTY if budget is None else f"{100 * budget:.1f}%")
        final, base = (view.result or {}).get("final_metric"), status.get("base_metric")
        cols[4].metric("Final metric", data.EMPTY if final is None else f"{final:.4g}",
                       None if final is None or base is None else f"{final - base:+.3g} vs base {base:.4g}",
                       delta_color="off", help=view.metric_label)
        if view.heldout:
            st.caption(f"Held-out check ({view.metric_label.replace(' (search split)', '')}): {view.heldout}")
        if status.get("message"):
            st.caption(status["message"])

        if not readonly():  # read-only mode: no cancel, resume, save or delete
            widgets.run_actions(run_id, view)

        if view.kind == "search":
            tabs = st.tabs(["Layers", "Trials", "Config", "Log"])
            with tabs[0]:
                if view.layers.empty:
                    st.info("No layer list yet: the search writes it once the model is loaded.")
                else:
                    widgets.table(view.layers, f"{run_id}-layers", key="detail-layers")
            with tabs[1]:
                if view.trials.empty:
                    st.info("No trials yet.")
                else:
                    widgets.chart(plots.search_trace(view.trials, view.metric_label), key="detail-trace")
                    widgets.table(view.trials, f"{run_id}-trials", key="detail-trials")
        else:
            tabs = st.tabs(["Evaluations", "Table 1 row", "Config", "Log"])
            with tabs[0]:
                if view.evaluations.empty:
                    st.info("No evaluations yet.")
                else:
                    widgets.table(data.evaluations_text(view.evaluations), f"{run_id}-evaluations",
                                  key="detail-evaluations")
            with tabs[1]:
                widgets.table(data.table1_text(pd.DataFrame([data.uniform_row(view)])), f"{run_id}-row",
                              key="detail-row")
        with tabs[2]:
            config = {key: value for key, value in view.config.items() if key != "layers"}
            st.json(config, expanded=True)
            if view.result:
                shown = {k: v for k, v in view.result.items() if k != "ranks"}
                st.write("Result")
                st.json(shown, expanded=True)
            st.download_button("Download config.json", json.dumps(view.config, indent=2).encode(),
                               file_name=f"{run_id}-config.json", key="detail-config-json")
        with tabs[3]:
            if readonly():
                st.caption("The log is not shown in read-only mode (it names local paths).")
            else:
                st.code(view.log_tail or "(no log: this run was not launched from the dashboard)", language="text")
