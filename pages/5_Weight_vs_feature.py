"""Weight versus feature space (the paper's Table 1): the uniform protocol (last N blocks at one beta) for
every method side by side: perplexity first, then parameters, MACs, accuracy per task (95% intervals, n) and
average, with the majority-class and chance rates each accuracy must beat."""

from dataclasses import replace

import streamlit as st

from sfsd import options
from sfsd.compress import CalibrationSpec
from sfsd.dashboard import data, jobs, plots, widgets
from sfsd.data import OFFLINE_TASKS
from sfsd.errors import SfsdError
from sfsd.runs.readonly import readonly
from sfsd.search.uniform import UniformConfig

widgets.page_setup("Weight versus feature space", "Table 1's protocol: every linear layer of the last N blocks at "
                   "the same beta (rank from Eq. 3), one uniform run per method, all evaluated alike; LLM-Pruner "
                   "removes whole heads and MLP channels of the same blocks down to the same parameter count; "
                   "SliceGPT slices the whole model (the residual stream every block shares) down to the same "
                   "total parameters as the weight-space row, its untied head and shortcut matrices included.")

uniform = data.uniform_frame()


def settings(defaults: dict, key: str) -> dict:
    """Protocol and evaluation settings of new uniform runs, as UniformConfig's fields; `defaults` are checked
    starting values (`data.protocol_defaults`), each widget is generated from its option's declaration
    (sfsd.options) and takes the limits the check used (`data.FORM_LIMITS`)."""
    limits = data.FORM_LIMITS
    c1, c2, c3, c4 = st.columns(4, vertical_alignment="bottom")  # a label that wraps at 1000 px keeps the row
    model = widgets.option_input(c1, options.MODEL, f"{key}-model", defaults.get("model", data.demo_model()))
    blocks = data.model_blocks(model)
    beta = widgets.option_input(c2, options.BETA, f"{key}-beta", defaults.get("beta", options.BETA.default),
                                min_value=limits["beta"][0], max_value=limits["beta"][1], step=0.01)
    # the option's default (12 blocks) is cut to the model's depth; a stored protocol's blocks are within it
    last = widgets.option_input(c3, options.LAST_BLOCKS, f"{key}-last",
                                min(defaults.get("last_blocks", options.LAST_BLOCKS.default), blocks or 1000),
                                min_value=limits["last_blocks"][0], max_value=max(1, blocks or 1000))
    limit = widgets.option_input(c4, options.LIMIT, f"{key}-limit", defaults.get("limit", options.LIMIT.default),
                                 min_value=limits["limit"][0], max_value=limits["limit"][1])
    c1, c2, c3 = st.columns([2, 1, 1], vertical_alignment="bottom")
    tasks = widgets.option_input(c1, options.TASKS, f"{key}-tasks", defaults.get("tasks", list(OFFLINE_TASKS)),
                                 choices=OFFLINE_TASKS)
    calibration = CalibrationSpec(**defaults.get("calibration", {"samples": 128}))
    samples = widgets.option_input(c2, options.CALIB_SAMPLES, f"{key}-calib", calibration.samples,
                                   min_value=limits["samples"][0], max_value=limits["samples"][1])
    seq_lens = defaults.get("ppl_seq_lens", options.PPL_SEQ_LENS.default)
    ppl_len = widgets.option_input(c3, options.PPL_SEQ_LENS, f"{key}-ppl", int(seq_lens[0]),
                                   min_value=limits["ppl_seq_len"][0], max_value=limits["ppl_seq_len"][1])
    c1, c2, _ = st.columns([1, 1, 2], vertical_alignment="bottom")  # the paper's: two factors, open loop
    factors = widgets.option_input(c1, options.FACTORS, f"{key}-factors", defaults.get("factors"))
    stream = widgets.option_input(c2, options.CALIBRATION_STREAM, f"{key}-stream", defaults.get("calibration_stream"))
    return {"model": model, "beta": float(beta), "last_blocks": int(last), "factors": factors,
            "calibration_stream": stream, "tasks": tasks, "limit": int(limit),
            "ppl_seq_lens": [int(ppl_len)], "ppl_tokens": defaults.get("ppl_tokens", options.PPL_TOKENS.default),
            "calibration": replace(calibration, samples=int(samples))}


def launch_buttons(chosen: dict, methods: list[str], key: str) -> None:
    if not methods:
        st.success("Every method has a run for these settings.")
        return
    if readonly():
        names = ", ".join(plots.method_label(m) for m in methods)
        st.caption(f"Missing here: {names} (read-only mode: nothing is started).")
        return
    configs, refused = {}, {}
    for method in methods:  # a format may not suit every method (anchored: feature only; compact: no pruning)
        try:
            configs[method] = UniformConfig(method="none" if method == "base" else method, **chosen)
        except SfsdError as exc:
            refused[method] = str(exc)
    if refused:
        st.caption("Not with these settings: " + "; ".join(f"{m} ({why})" for m, why in refused.items()))
    if not configs:
        return
    st.code("\n".join(jobs.command_line(config) for config in configs.values()), language="bash", wrap_lines=True)
    if st.button("Run all missing", key=f"{key}-all", type="primary", icon=":material/play_arrow:",
                 help="one after the other, in one background process"):
        widgets.launch_all_and_report(list(configs.values()))
    per_row = 3  # wide enough for the longest method name (its --method value) at 1400 px
    items = list(configs.items())
    for start in range(0, len(items), per_row):
        for col, (method, config) in zip(st.columns(per_row), items[start:start + per_row], strict=False):
            if col.button(f"Run {method}", key=f"{key}-{method}", width="stretch", help=plots.method_label(method)):
                widgets.launch_and_report(config)


groups = data.table1_protocols(uniform)  # base evaluations (sfsd frontier's, 0 blocks) are no protocol
if not groups:
    bases = data.base_evaluations(uniform)
    if bases.empty:
        st.info("No uniform runs yet. Start them here (each runs in the background: compress, then evaluate), or "
                "from a terminal with `sfsd uniform --model M --method X --beta B --last-blocks N --tasks a,b`.")
    else:
        st.info(f"Only base-model evaluations so far ({len(bases)}: what `sfsd frontier` evaluates first, nothing "
                "compressed), no Table 1 protocol yet. Start one here, at a beta on the last N blocks; a protocol "
                "on the same tasks and documents borrows that evaluation as its base row.")
    first = data.load_run(bases["run_id"].iloc[0]) if not bases.empty else None
    chosen = settings(data.protocol_defaults(first.config if first else None), key="uni-new")
    launch_buttons(chosen, list(data.UNIFORM_METHODS), key="uni-new-launch")
    widgets.progress_panel(key="uni-progress")
    st.stop()

labels = [data.protocol_label(g) for g in groups]
index = st.selectbox("Protocol", range(len(groups)), format_func=lambda i: labels[i], key="uni-group")
group = groups[index]
rows = data.table1_rows(uniform, **group)

st.subheader("Table 1")
headline = data.table1_headline(rows)
if headline:
    st.markdown(f"**{headline}**")
for note in data.table1_warnings(rows):
    st.warning(note)
widgets.table(data.table1_text(rows), "table1", key="uni-table")
st.caption("Perplexity comes first: on a small model it is the number that separates the methods. "
           f"{data.PPL_NOTE} Accuracy in %, its 95% Wilson interval in brackets (the average: a normal interval of "
           "the mean), n = documents per task. **Equal by theory:** SVD-LLM (`svdllm`) and `feature-uncentred` "
           "(uncentred, no bias) give identical outputs, so their rows must match.")
details = rows.reindex(columns=["method", "calibration", "tasks", "limit", "run_id", "origin"])
st.caption("Calibration, tasks and documents per task of each row: "
           + "; ".join(f"{r.method}: {r.calibration}, {r.tasks or 'no tasks'}, limit {r.limit}"
                       + (f" ({r.origin})" if isinstance(r.origin, str) and r.origin else "")
                       for r in details.itertuples()))
widgets.chart(plots.perplexity_bars(rows, title="Perplexity (log scale)"), key="uni-ppl")
widgets.chart(plots.accuracy_bars(rows, title="Accuracy per task with 95% intervals; dashes: majority class and chance",
                                  references=data.task_references(rows)), key="uni-bars")

missing = [m for m in data.UNIFORM_METHODS if m not in set(rows["method"])]
# the form starts at the protocol picked, with the evaluation settings of its first row (which may be a borrowed
# base evaluation: its beta 1.0 and 0 blocks are not the protocol's)
first = data.load_run(rows["run_id"].iloc[0])
defaults = data.protocol_defaults(first.config if first else None, group)
# settings' widget keys, after its key
FORM_FIELDS = ("model", "beta", "last", "limit", "tasks", "calib", "ppl", "factors", "stream")
picked = repr(sorted((k, str(v)) for k, v in group.items()))
if st.session_state.get("uni-fill-protocol") != picked:  # another protocol: its form starts at its settings
    for name in FORM_FIELDS:
        st.session_state.pop(f"uni-fill-{name}", None)
    st.session_state["uni-fill-protocol"] = picked
with st.expander(f"Add methods (missing here: {', '.join(missing) if missing else 'none'})", expanded=bool(missing)):
    chosen = settings(defaults, key="uni-fill")
    made = data.same_format(uniform, chosen["factors"], chosen["calibration_stream"])
    have = made[(made["model"] == chosen["model"]) & (made["beta"] == chosen["beta"])
                & (made["last_blocks"] == chosen["last_blocks"])]["method"]
    launch_buttons(chosen, [m for m in data.UNIFORM_METHODS if m not in set(have)], key="uni-fill-launch")
widgets.progress_panel(key="uni-progress")

with st.expander("Every uniform run"):
    widgets.table(uniform, "uniform-runs", key="uni-all")
