"""Runs: the run store's table, live progress, starting a search, and one run's details."""

import json

import pandas as pd
import streamlit as st

from sfsd import options
from sfsd.adapters.base import ROLE_ORDER
from sfsd.compress import CalibrationSpec
from sfsd.dashboard import data, jobs, plots, widgets
from sfsd.data import CALIBRATION_SOURCES, OFFLINE_TASKS
from sfsd.errors import SfsdError
from sfsd.runs.readonly import readonly
from sfsd.search import STRATEGIES, MetricSpec, SearchConfig
from sfsd.search.allocation import ALLOCATIONS

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
        # every widget is generated from the option its `sfsd search` flag is declared by (sfsd.options)
        c1, c2, c3, c4 = st.columns(4)
        model = widgets.option_input(c1, options.MODEL, "new-model", data.demo_model(),
                                     label="Model (short name, folder or hub id)")
        method = widgets.option_input(c2, options.METHOD, "new-method")
        metric_name = widgets.option_input(c3, options.METRIC, "new-metric")
        tolerance = widgets.option_input(c4, options.TOLERANCE, "new-tolerance", min_value=0.0, max_value=10.0,
                                         step=0.01, format="%.3f")
        c1, c2, c3, c4 = st.columns(4)
        metric = {"name": metric_name, "tolerance": float(tolerance)}
        if metric_name == "task":
            metric["task"] = widgets.option_input(c1, options.SEARCH_TASK, "new-task", choices=OFFLINE_TASKS)
            metric["limit"] = int(widgets.option_input(c2, options.SEARCH_LIMIT, "new-limit", 100, min_value=0,
                                                       step=10)) or None
            metric["use_norm"] = widgets.option_input(c3, options.ACC_NORM, "new-accnorm")
        else:
            metric["samples"] = int(widgets.option_input(c1, options.SEARCH_SAMPLES, "new-samples", min_value=1))
            metric["seq_len"] = int(widgets.option_input(c2, options.SEARCH_SEQ_LEN, "new-seqlen", min_value=2,
                                                         step=16))
        c1, c2, c3, c4 = st.columns(4)
        # Algorithm 1 (a tolerance), or an allocation that reaches a target budget (the Frontier's points); the
        # compact format is offered with a target only (Algorithm 1 searches in two factors)
        targeted = c1.checkbox("Reach a target budget", key="new-targeted",
                               help="off: Algorithm 1, each layer's smallest beta within the tolerance; on: "
                                    + options.TARGET_BUDGET.help)
        target = widgets.option_input(c2, options.TARGET_BUDGET, "new-target", 0.8, min_value=0.05, max_value=1.0,
                                      step=0.05) if targeted else None
        factors = widgets.option_input(c3, options.FACTORS, "new-factors") if targeted else options.FACTORS.default
        stream = options.OPEN_LOOP
        if targeted:
            strategy = widgets.option_input(c4, options.STRATEGY, "new-allocation", "spectrum",
                                            choices=list(ALLOCATIONS), label="Allocation strategy")
            stream = widgets.option_input(st.columns(4)[0], options.CALIBRATION_STREAM, "new-stream",
                                          help="how the final model is built once the ranks are allocated: "
                                               + options.CALIBRATION_STREAM.help)
        else:
            strategy = widgets.option_input(c4, options.STRATEGY, "new-strategy", "linear", choices=list(STRATEGIES),
                                            help="linear: the paper's scan of beta 0.1..0.9; bisect: fewer trials")
        c1, c2, c3, c4 = st.columns(4)
        calibration = CalibrationSpec(
            source=widgets.option_input(c1, options.CALIB_SOURCE, "new-calib-source", choices=CALIBRATION_SOURCES),
            # fewer sequences than the paper's 512 by default here: a search started from a laptop's browser
            samples=int(widgets.option_input(c2, options.CALIB_SAMPLES, "new-calib-samples", 128, min_value=1,
                                             step=32)),
            seq_len=int(widgets.option_input(c3, options.CALIB_SEQ_LEN, "new-calib-seqlen", min_value=2, step=16)))
        blocks = data.model_blocks(model)
        first_block = widgets.option_input(c4, options.FIRST_BLOCK, "new-first-block", max(0, (blocks or 3) - 3),
                                           min_value=0, max_value=max(0, (blocks or 1000) - 1),
                                           help=options.FIRST_BLOCK.help
                                           + (f" (model has {blocks})" if blocks else ""))
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        roles = widgets.option_input(c1, options.ROLES, "new-roles",
                                     choices=[r for r in ROLE_ORDER if r not in ("qkv", "gate_up")])
        snapshot_tasks = widgets.option_input(c2, options.SNAPSHOT_TASKS, "new-snap-tasks", choices=OFFLINE_TASKS,
                                              help="eval-split accuracy for the accuracy-versus-parameters page "
                                                   "(slower)")
        snapshot_every = widgets.option_input(c3, options.SNAPSHOT_EVERY, "new-snap-every", 7, min_value=1)
        dtype = widgets.option_input(c4, options.DTYPE, "new-dtype")
        try:
            config = SearchConfig(model=model, method=method, metric=MetricSpec(**metric), strategy=strategy,
                                  target_budget=None if target is None else float(target), factors=factors,
                                  calibration_stream=stream,
                                  first_block=int(first_block), roles=roles or None, calibration=calibration,
                                  snapshot_every=int(snapshot_every), snapshot_tasks=snapshot_tasks, dtype=dtype)
        except SfsdError as exc:
            st.error(str(exc))
            config = None
        if config is not None:
            st.code(jobs.command_line(config), language="bash", wrap_lines=True)
            if st.button("Start search", key="new-start", type="primary", icon=":material/play_arrow:"):
                widgets.launch_and_report(config)

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
                    if (view.evaluations.get("kind") == "ppl").any():
                        st.caption(data.PPL_NOTE)
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
                st.code(view.log_tail or "(no log here: this run was started from a terminal, which got its output)",
                        language="text")
