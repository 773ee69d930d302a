"""Small widgets shared by the pages: run pickers, the live progress panel, downloads, empty states."""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from typing import Any

import pandas as pd
import streamlit as st

from sfsd.dashboard import data, jobs
from sfsd.errors import SfsdError
from sfsd.options import LISTS, Option
from sfsd.runs import transfer
from sfsd.runs.readonly import READONLY_ENV, readonly

SELECTED_RUN = "sfsd_run"  # session state: the run last picked on any page
SELECTED_LAYER = "sfsd_layer"  # session state: the layer last picked (heatmap -> spectra)
WATCHED = "sfsd_watched"  # session state: runs launched from this session


def page_setup(title: str, caption: str | None = None):
    """The page's config, title and caption; returns the place under them where the page's headline goes (it
    is written once the page knows what it shows)."""
    route_through_app()
    st.set_page_config(page_title=f"sfsd · {title}", layout="wide")
    st.title(title)
    if caption:
        st.caption(caption)
    if readonly():
        st.caption(f":material/lock: Read-only presenting mode ({READONLY_ENV}=1): nothing can be started, cancelled, "
                   "deleted, saved or imported here.")
    return st.empty()


def headline(place, text: str) -> None:
    """The page's one-sentence story (`sfsd.dashboard.headlines`), in bold, where `page_setup` left room."""
    if text:
        place.markdown(f"**{text}**")


def route_through_app() -> None:
    """Rerun through app.py's navigation when Streamlit ran this page on its own.

    Until some session on the server has called st.navigation, Streamlit treats pages/ beside app.py as a
    legacy multipage folder: a page URL opened first on a fresh server runs that page's file alone, with a
    sidebar that lists "app" and no Home. Marking the folder as handled (what st.navigation itself does) and
    rerunning runs app.py instead; the rerun keeps this page's hash, and app.py names each page's URL as the
    legacy folder does (1_Runs.py -> /Runs), so its navigation opens this same page, Home first."""
    from streamlit.runtime.pages_manager import PagesManager

    if getattr(PagesManager, "uses_pages_directory", False):
        PagesManager.uses_pages_directory = False
        if not _session_routed():  # routed once already: a rerun would only drop this run's button click
            st.rerun()


ROUTED = "_sfsd_routed_by_app"  # session state: app.py's navigation has run in this session


def mark_routed() -> None:
    """Called by app.py before its navigation runs a page: this session's pages are routed through it."""
    st.session_state[ROUTED] = True


def _session_routed() -> bool:
    return bool(st.session_state.get(ROUTED))


def duration(seconds) -> str:
    if seconds is None or pd.isna(seconds) or not math.isfinite(float(seconds)):
        return data.EMPTY
    minutes, secs = divmod(int(round(float(seconds))), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def csv_download(frame: pd.DataFrame, name: str, key: str, label: str = "Download CSV") -> None:
    st.download_button(label, frame.to_csv(index=False).encode(), file_name=f"{name}.csv", mime="text/csv",
                       key=key, icon=":material/download:", on_click="ignore")


def run_columns(**widths: int) -> dict:
    """Column config of a runs table (Home, Runs): short headers and fixed widths that fit 1400 px, the
    progress as a bar; `widths` overrides a column's width (e.g. method=80)."""
    def text(label: str, column: str, width: int, help: str | None = None):
        return st.column_config.TextColumn(label, width=widths.get(column, width), help=help)

    return {
        "run_id": text("run", "run_id", 335), "kind": text("kind", "kind", 65),
        "method": text("method", "method", 75), "model": text("model", "model", 100),
        "metric": text("target", "metric", 95, "what a search keeps (ppl +5%: within 5% of the base; task −5 pts), "
                       "or an allocation's strategy and target budget"),
        "state": text("state", "state", 75),
        "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent",
                                                    width=widths.get("progress", 100)),
        "eta": text("ETA", "eta", 60), "overall_budget": text("budget %", "overall_budget", 70),
        "layers": text("layers", "layers", 60, "decided / total"),
        "updated": text("updated (UTC)", "updated", 105),
    }


def table(frame: pd.DataFrame, name: str, key: str, **kwargs) -> None:
    """A dataframe with its CSV download button under it (the CSV keeps empty cells empty)."""
    st.dataframe(data.empty_cells_as_text(frame), width="stretch", hide_index=True, key=f"{key}-table", **kwargs)
    csv_download(frame, name, key=f"{key}-csv")


def page_link(path: str, label: str, icon: str | None = None, container=None) -> None:
    """st.page_link that degrades to plain text where the page is not registered (a page run on its own)."""
    from streamlit.errors import StreamlitAPIException

    try:
        (container or st).page_link(path, label=label, icon=icon)
    except StreamlitAPIException:
        (container or st).caption(f"{label}: open it from the sidebar")


def chart(fig, key: str, **kwargs):
    """A Plotly chart at full width (its toolbar saves PNG)."""
    config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2, "filename": key}}
    return st.plotly_chart(fig, width="stretch", key=key, config=config, **kwargs)


# ---- picking runs --------------------------------------------------------------------------------------


def pick_run(runs: pd.DataFrame, key: str, label: str = "Run", help: str | None = None,
             starts_among: Sequence[str] | None = None) -> str | None:
    """A selectbox over `runs` (newest first) that starts at the run last picked on any page; with
    `starts_among`, only one of those runs (the first of them, unless the last picked is one) is a start."""
    if runs.empty:
        return None
    ids = list(runs["run_id"])
    labels = {row.run_id: data.run_label(row.run_id, {"kind": row.kind, "method": row.method, "model": row.model},
                                         row.state) for row in runs.itertuples()}
    for row in runs.itertuples():  # richer labels need the config; cached per run
        config = data.run_config(row.run_id)
        if config is not None:
            labels[row.run_id] = data.run_label(row.run_id, config, row.state)
    if st.session_state.get(key) not in ids:
        wanted = st.session_state.get(SELECTED_RUN)
        starts = [i for i in (starts_among or ids) if i in ids] or ids
        st.session_state[key] = wanted if wanted in starts else starts[0]
    chosen = st.selectbox(label, ids, key=key, format_func=lambda i: labels.get(i, i), help=help)
    st.session_state[SELECTED_RUN] = chosen
    origin_note([chosen])
    return chosen


def origin_note(run_ids: Sequence[str]) -> None:
    """A caption per imported run among `run_ids`: where and when it was computed."""
    for run_id in run_ids:
        view = data.load_run(run_id)
        if view is not None and view.origin:
            st.caption(f":material/move_to_inbox: `{run_id}`: {view.origin}")


def pick_loaded_run(runs: pd.DataFrame, key: str,
                    starts_among: Sequence[str] | None = None) -> tuple[str | None, data.RunView | None]:
    """`pick_run`, then the chosen run's view; a run that cannot be read any more gets a warning and None."""
    run_id = pick_run(runs, key=key, starts_among=starts_among)
    view = data.load_run(run_id) if run_id else None
    if run_id and view is None:
        st.warning(f"Run {run_id} cannot be read any more.")
    if view is not None:
        broken_run_warnings([view])
    return run_id, view


def pick_runs(runs: pd.DataFrame, key: str, label: str = "Runs", default: int = 3,
              initial: Sequence[str] | None = None) -> list[str]:
    """A multiselect over `runs`, starting with `initial` when given, else the run last picked plus the newest
    ones."""
    if runs.empty:
        return []
    ids = list(runs["run_id"])
    labels = {}
    for row in runs.itertuples():
        labels[row.run_id] = data.run_label(row.run_id, data.run_config(row.run_id) or {}, row.state)
    current = [i for i in st.session_state.get(key) or [] if i in ids]
    if key not in st.session_state or len(current) != len(st.session_state[key]):
        wanted = st.session_state.get(SELECTED_RUN)
        start = [i for i in initial or () if i in ids] or \
            (([wanted] if wanted in ids else []) + [i for i in ids if i != wanted])[:default]
        st.session_state[key] = current or start
    chosen = st.multiselect(label, ids, key=key, format_func=lambda i: labels.get(i, i))
    origin_note(chosen)
    return chosen


def search_runs_with(what: str = "layers") -> pd.DataFrame:
    """Search runs that have something to show: decided layers, spectra or snapshots (newest first); for
    layers, also the uniform runs of a structured method (each layer's kept share)."""
    runs = data.list_runs(kind="search")
    if what == "layers":
        runs = pd.concat([runs, data.list_runs(kind="uniform")], ignore_index=True)
    keep = []
    for run_id in runs["run_id"]:
        view = data.load_run(run_id)
        if view is None:
            continue
        if what == "layers" and not view.decided.empty:
            keep.append(run_id)
        elif what == "snapshots" and not view.snapshots.empty:
            keep.append(run_id)
        elif what == "spectra" and view.extra.get("has_spectra"):
            keep.append(run_id)
        elif what == "any":
            keep.append(run_id)
    return runs[runs["run_id"].isin(keep)].reset_index(drop=True)


# ---- forms generated from the option declarations --------------------------------------------------------


def option_input(container, option: Option, key: str, value: Any = None, **kwargs: Any) -> Any:
    """The form widget of one option (sfsd.options): its label, help, default and choices come from the
    declaration that the command line's flag comes from; `kwargs` add widget limits (min_value, step, ...) or
    narrow the choices."""
    value = option.default if value is None else value
    common = {"label": kwargs.pop("label", option.form_label()), "key": key, "help": kwargs.pop("help", option.help)}
    choices = list(kwargs.pop("choices", None) or option.choice_list() or [])
    if option.kind == "bool":
        return container.checkbox(value=bool(value), **common)
    if choices and option.kind in LISTS:
        return container.multiselect(options=choices, default=[v for v in value or [] if v in choices], **common)
    if choices:
        return container.selectbox(options=choices, index=choices.index(value) if value in choices else 0, **common)
    if option.kind in ("int", "float"):
        return container.number_input(value=value, **common, **kwargs)
    return container.text_input(value=str(value or ""), **common)


# ---- empty states ----------------------------------------------------------------------------------------


def no_runs(what: str, key: str) -> None:
    """Say what is missing and how to get it, with the quick demo one click away."""
    if readonly():
        st.info(f"No {what} yet. This dashboard is read-only: compute runs on a full one (or `sfsd search`) and "
                "import them there with `sfsd runs import`.", icon=":material/info:")
        return
    model = data.demo_model()
    commands = "\n".join(jobs.command_line(config) for config in jobs.demo_configs(model, data.model_blocks(model)))
    st.info(f"No {what} yet. Start the quick demo (a feature-space and a weight-space search, about 4 minutes on a "
            f"laptop CPU), start a search on the **Runs** page, or run it from a terminal:\n\n```\n{commands}\n```",
            icon=":material/info:")
    demo_button(key=f"{key}-demo")
    progress_panel(key=f"{key}-progress")


def demo_button(key: str = "demo") -> None:
    """Start the quick demo: its runs one after the other in one background process."""
    if readonly():
        return
    model = data.demo_model()
    blocks = data.model_blocks(model)
    if st.button("Start the quick demo search", key=key, type="primary", icon=":material/play_arrow:",
                 help="\n\n".join(jobs.command_line(config) for config in jobs.demo_configs(model, blocks))):
        report_started(lambda: jobs.start_demo(model, blocks))


def demo_summary(views: Sequence[data.RunView | None], record: dict | None = None) -> str | None:
    """What the finished quick demo ran and how long it took (None until all its runs are done): its searches'
    overall budgets, its uniform runs, and the duration the demo's process measured (`record`, see
    jobs.demo_record), else the span of the runs' own start and finish times."""
    if not views or any(view is None or view.state != "done" for view in views):
        return None
    searches = [view for view in views if view.kind == "search"]
    uniform = [view for view in views if view.kind == "uniform"]
    parts = []
    for view in searches:
        budget = (view.result or {}).get("overall_budget")
        parts.append(f"a {view.method}-space search (overall budget "
                     f"{data.EMPTY if budget is None else f'{100 * budget:.1f}%'}; {view.metric_label.split(' (')[0]} "
                     f"{view.heldout_change})")
    if uniform:
        config = uniform[0].config
        methods = ", ".join("base" if view.method == "none" else view.method for view in uniform)
        parts.append(f"Table 1's uniform protocol at beta {config.get('beta')} on the last "
                     f"{config.get('last_blocks')} blocks ({methods})")
    text = "The quick demo ran " + "; ".join(parts) + "." + _heldout_verdict(searches)
    took = _demo_seconds(views, record)
    if took is None:
        return text
    if not _measured(record):
        return text + f" It took {duration(took)}."
    partial = len(record["commands"]) < len(views)  # the other runs were already done when it was started
    return (text + (" Its last start, for the runs still missing, took" if partial else " It took")
            + f" {duration(took)} ({_demo_steps(record)}).")


def _heldout_verdict(searches: Sequence[data.RunView]) -> str:
    """Whether the searches' tolerance held on text they never saw (within twice it), said plainly."""
    from sfsd.search.heldout import heldout_summary

    over = []
    for view in searches:
        summary, tolerance = heldout_summary(view.result), view.config.get("metric", {}).get("tolerance")
        if summary and tolerance and not summary["higher_is_better"] and summary["eval_change"] > 2 * tolerance:
            over.append(f"{view.method} {100 * summary['eval_change']:+.1f}%")
    if not over:
        return ""
    metric = searches[0].config.get("metric", {})
    return (f" On held-out text the change is more than twice the {100 * metric['tolerance']:+.0f}% tolerance "
            f"({', '.join(over)}): a search on {metric.get('samples')} windows of {metric.get('seq_len')} tokens "
            "fits its own text; `sfsd search` uses 32 windows of 128 tokens by default, which hold it better.")


def _measured(record: dict | None) -> bool:
    return bool(record and record.get("finished") and record.get("commands"))


def demo_seconds(record: dict | None) -> float | None:
    """The wall-clock seconds a finished demo's process measured (None: no finished record)."""
    if not _measured(record):
        return None
    span = pd.to_datetime(record["finished"], utc=True) - pd.to_datetime(record["started"], utc=True)
    return span.total_seconds()


def _demo_seconds(views: Sequence[data.RunView], record: dict | None) -> float | None:
    """The demo's wall-clock time: measured by its process when it ran here, else from its runs' times."""
    if _measured(record):
        return demo_seconds(record)
    started = min(pd.to_datetime(view.status.get("started"), utc=True, errors="coerce") for view in views)
    finished = max(pd.to_datetime(view.status.get("finished"), utc=True, errors="coerce") for view in views)
    return None if pd.isna(started) or pd.isna(finished) else (finished - started).total_seconds()


def _demo_steps(record: dict) -> str:
    """Each command of the demo's record with its measured time: "search feature 2m10s, uniform base 31s"."""
    return ", ".join(f"{entry.get('label') or ' '.join(entry.get('argv') or ['?'])} {duration(entry.get('seconds'))}"
                     + ("" if not entry.get("exit") else " (failed)") for entry in record["commands"])


def launch_and_report(config: jobs.RunConfig) -> jobs.Started | None:
    """Create a run from its config and start it in the background, remember it for the progress panel, say
    what happened."""
    return remember_started(lambda: jobs.start(config))


def remember_started(start) -> jobs.Started | None:
    """Call `start` (which returns one jobs.Started), watch its run, say what happened."""
    try:
        started = start()
    except SfsdError as exc:
        st.error(str(exc))
        return None
    data.clear()
    if started.run_id:
        st.session_state.setdefault(WATCHED, [])
        if started.run_id not in st.session_state[WATCHED]:
            st.session_state[WATCHED].append(started.run_id)
        st.session_state[SELECTED_RUN] = started.run_id
    (st.success if started.launched else st.info)(started.message)
    return started


def launch_all_and_report(configs: Sequence[jobs.RunConfig]) -> None:
    """Start several runs one after the other in one background process (see `jobs.start_all`)."""
    report_started(lambda: jobs.start_all(list(configs)))


def report_started(start) -> None:
    """Call `start` (which returns a list of jobs.Started), watch its runs, say what happened."""
    try:
        results = start()
    except SfsdError as exc:
        st.error(str(exc))
        return
    data.clear()
    watched = st.session_state.setdefault(WATCHED, [])
    for started in results:
        if started.run_id and started.run_id not in watched:
            watched.append(started.run_id)
    st.success("\n\n".join(started.message for started in results))


def save_table1_models(models: Sequence[str]) -> None:
    """Save the Table 1 models among `models` that are not saved yet (each rebuilt from its run's cached
    decompositions), so that they can be loaded and evaluated; says which it saves."""
    for run_id in data.unsaved_table1_runs(list(models)):
        with st.spinner(f"Saving Table 1's model of run {run_id} (compressing from its cached decompositions)..."):
            st.toast(f"saved {data.shown(str(jobs.save_uniform_model(run_id)))}")
    data.clear()


def has_accuracy(view: data.RunView | None) -> bool:
    """Whether a search run's snapshots carry a task accuracy (their own or added by `sfsd snapshot-eval`)."""
    return view is not None and any(c.startswith(("acc:", "acc_norm:")) for c in view.snapshots.columns)


def accuracy_panel(runs: pd.DataFrame, key: str) -> None:
    """How to get task accuracy for the accuracy-versus-parameters figure, and a button that computes it for a
    finished search in the background (`sfsd snapshot-eval`: the eval split at each of its snapshots)."""
    from sfsd.data import OFFLINE_TASKS

    finished = [row.run_id for row in runs.itertuples() if row.state == "done"]
    without = [run_id for run_id in finished if not has_accuracy(data.load_run(run_id))]
    none_yet = not any(has_accuracy(data.load_run(run_id)) for run_id in runs["run_id"])
    how = ("Accuracy needs tasks evaluated at the snapshots: start a search with `--snapshot-tasks piqa` (Runs page, "
           "\"Tasks evaluated at each snapshot\"), or evaluate a finished search's snapshots afterwards with "
           "`sfsd snapshot-eval RUN_ID --tasks piqa --limit 100`.")
    if none_yet:
        st.info(f"**No accuracy yet**, only the searches' own metric. {how}", icon=":material/info:")
    if readonly() or not finished:
        return
    with st.expander("Compute accuracy for a finished search", expanded=none_yet, icon=":material/calculate:"):
        c1, c2, c3 = st.columns([3, 1, 1], vertical_alignment="bottom")
        choices = without + [run_id for run_id in finished if run_id not in without]
        run_id = c1.selectbox("Finished search", choices, key=f"{key}-run",
                              format_func=lambda i: data.run_label(i, (data.load_run(i) or data.empty_view()).config,
                                                                   "done" if i in without else "has accuracy"))
        task = c2.selectbox("Task", list(OFFLINE_TASKS), key=f"{key}-task", index=list(OFFLINE_TASKS).index("piqa"))
        limit = c3.number_input("Documents", min_value=10, value=100, step=10, key=f"{key}-limit",
                                help="per snapshot, first N of the eval split; fewer: faster, wider intervals")
        st.code(shlex.join(["sfsd", *jobs.snapshot_eval_argv(run_id, [task], int(limit))]), language="bash",
                wrap_lines=True)
        if st.button("Compute accuracy", key=f"{key}-start", icon=":material/play_arrow:"):
            if remember_started(lambda: jobs.start_snapshot_eval(run_id, [task], int(limit))):
                st.caption("It runs in the background: each snapshot's accuracy appears here when it is evaluated "
                           "(reload the page).")


# ---- live progress ---------------------------------------------------------------------------------------


@st.fragment(run_every=2)
def progress_panel(key: str = "progress") -> None:
    """Every active run (and the runs launched from this session): progress, ETA, cancel. Refreshes itself
    every 2 s; the page reruns once when a run finishes, so that its tables and figures appear."""
    active = data.active_runs()
    watched = [i for i in st.session_state.get(WATCHED, []) if i not in set(active["run_id"])]
    previous = set(st.session_state.get(f"{key}-active", []))
    now = set(active["run_id"])
    st.session_state[f"{key}-active"] = sorted(now)
    if active.empty and not watched:
        st.caption("No run in progress.")
        return
    order = sorted(active.itertuples(), key=lambda row: (row.state != "running", jobs.queue_place(row.message)))
    for row in order:  # the running run first, then the queued ones in the order they will run
        _progress_row(row.run_id, key)
    for run_id in watched:
        view = data.load_run(run_id)
        if view is None:
            continue
        state = view.state
        icon = {"done": ":material/check_circle:", "failed": ":material/error:", "cancelled": ":material/stop_circle:",
                "interrupted": ":material/pause_circle:", "stopped": ":material/pause_circle:",
                }.get(state, ":material/radio_button_unchecked:")
        line = f"{icon} `{run_id}`: {state}"
        if view.result and view.result.get("overall_budget") is not None:
            line += f", overall budget {100 * view.result['overall_budget']:.1f}%"
        if view.status.get("message") and state != "done":
            line += f" — {view.status['message']}"
        st.markdown(line)
    if previous - now:
        data.clear()
        st.rerun()  # a run just finished: refresh the whole page


def _progress_row(run_id: str, key: str) -> None:
    view = data.load_run(run_id)
    if view is None:
        return
    status = view.status
    total = status.get("layers_total") or len(view.config.get("layers") or []) or None
    done = int(status.get("layers_done") or 0)
    label = view.label
    message = str(status.get("message") or "")
    if status.get("state") == "pending" and message.startswith("queued"):
        text, value = f"{label}: {message}", 0.0
    elif view.kind != "search":
        text, value = _uniform_progress(view)
    elif status.get("state") == "pending" or not status.get("layers_total"):
        text = f"{label}: preparing (loading the model, calibrating, decomposing)"
        value = 0.0
    else:
        value = min(1.0, done / total) if total else 0.0
        current = str(status.get("current_layer") or "").removeprefix("model.")
        text = (f"{label}: {done}/{total} layers · {status.get('trials_done') or 0} trials · "
                f"ETA {duration(status.get('eta_s'))}" + (f" · last {current}" if current else ""))
    st.progress(value, text=text)
    label = "Cancel this run" if view.kind == "search" else "Stop this run"
    if not readonly() and st.button(label, key=f"{key}-cancel-{run_id}", icon=":material/stop:", type="tertiary"):
        try:
            st.toast(jobs.cancel_run(run_id))
        except SfsdError as exc:
            st.toast(str(exc))
        data.clear()


def _uniform_progress(view: data.RunView) -> tuple[str, float]:
    """A uniform run's progress: evaluations written of those configured (one per task and per perplexity
    length), the one under way, and an ETA from the time spent so far per evaluation."""
    config, status = view.config, view.status
    steps = [*(f"task {t}" for t in config.get("tasks") or []),
             *(f"perplexity @{n}" for n in config.get("ppl_seq_lens") or [])]
    if status.get("state") != "running":
        return f"{view.label}: starting", 0.0
    done = min(len(view.evaluations), len(steps))
    if not steps:
        return f"{view.label}: compressing", 0.0
    text = f"{view.label}: {done}/{len(steps)} evaluations"
    if done < len(steps):
        text += f" · now {steps[done]}" if done else f" · compressing, then {steps[0]}"
    started = pd.to_datetime(status.get("started"), utc=True, errors="coerce")
    if done and not pd.isna(started):
        spent = (pd.Timestamp.now(tz="UTC") - started).total_seconds()
        text += f" · ETA {duration(spent / done * (len(steps) - done))} (from the pace so far)"
    return text, done / len(steps)


def run_actions(run_id: str, view: data.RunView) -> None:
    """Cancel or resume, save the model, delete: the Runs page's buttons for one run (never in read-only mode)."""
    actions = st.columns(4)
    if view.state in data.ACTIVE_STATES:
        if actions[0].button("Cancel run", key="detail-cancel", icon=":material/stop:"):
            try:
                st.toast(jobs.cancel_run(run_id))
            except SfsdError as exc:
                st.error(str(exc))
            data.clear()
    elif view.kind in ("search", "uniform") and view.state != "done":
        if actions[0].button("Resume run", key="detail-resume", icon=":material/replay:"):
            remember_started(lambda: jobs.resume(run_id))
    if view.kind == "search" and view.state == "done":
        if actions[1].button("Save its model (materialize)", key="detail-materialize", icon=":material/save:",
                             help="for the Disagreement and Bias pages"):
            with st.spinner("Building the compressed model..."):
                try:
                    st.success(f"saved {jobs.materialize_run(run_id)}")
                except SfsdError as exc:
                    st.error(str(exc))
    confirm = actions[3].checkbox("Confirm delete", key="detail-confirm-delete")
    if actions[2].button("Delete run", key="detail-delete", icon=":material/delete:", disabled=not confirm):
        try:
            st.toast(jobs.delete_run(run_id))
            data.clear()
            st.rerun()
        except SfsdError as exc:
            st.error(str(exc))


# ---- moving runs between machines ---------------------------------------------------------------------------


def transfer_panel(runs: pd.DataFrame, key: str) -> None:
    """Export the picked runs as one zip (download) and import such a zip (upload; refused in read-only mode)."""
    left, right = st.columns(2, gap="large")
    finished = runs[~runs["state"].isin(data.ACTIVE_STATES)]
    with left:
        ids = list(finished["run_id"])
        wanted = st.session_state.get(SELECTED_RUN)
        chosen = st.multiselect("Runs to export", ids, default=[wanted] if wanted in ids else ids[:1],
                                key=f"{key}-export-runs", help="running runs cannot be exported until they stop")
        models = data.saved_model_runs(chosen)
        with_model = st.checkbox(f"With saved models ({len(models)} of {len(chosen)} runs have one)",
                                 key=f"{key}-with-model", disabled=not models)
        with_model = with_model and bool(models)
        st.download_button("Download the archive", data=lambda: transfer.export_bytes(chosen, with_model),
                           file_name="sfsd-runs.zip", mime="application/zip", key=f"{key}-export",
                           disabled=not chosen, icon=":material/download:", on_click="ignore")
        st.caption("A zip of each run's config, trace, layers, spectra, snapshots, evaluations and per-example "
                   "records, with a manifest (versions, host, date, sha256 of every file).")
    with right:
        if readonly():
            st.caption("Importing writes to the cache, so it is off in read-only mode: import on the full dashboard "
                       "or with `sfsd runs import runs.zip`.")
            return
        upload = st.file_uploader("Import an archive of `sfsd runs export`", type=["zip"], key=f"{key}-upload")
        if upload is not None and st.button("Import", key=f"{key}-import", icon=":material/upload:"):
            try:
                result = transfer.import_archive(upload)
            except SfsdError as exc:
                st.error(str(exc))
                return
            data.clear()
            st.success("\n\n".join(result.lines()))


def broken_run_warnings(views: Sequence[data.RunView]) -> None:
    """A warning per run whose model's perplexity is more than data.PPL_BLOWUP x its base model's (every page that
    shows runs: what they show of a broken model says little about its method)."""
    from sfsd.dashboard.headlines import broken_line

    for view in views:
        facts = data.run_vs_base(view)
        if facts is not None and facts["ratio"] > data.PPL_BLOWUP:
            st.warning(broken_line(data.run_label(view.run_id, view.config, view.state), facts),
                       icon=":material/warning:")


def broken_model_warnings(models: Sequence[str]) -> None:
    """A warning per compared model whose perplexity is more than data.PPL_BLOWUP x its base model's (from the run
    that made it): its answers then say little about its method (Disagreement and Bias pages)."""
    from sfsd.dashboard.headlines import broken_line

    for model, facts in data.broken_models(list(dict.fromkeys(models))):
        st.warning(broken_line(data.model_display(model), facts), icon=":material/warning:")
