"""The budget-quality frontier: eval perplexity against overall budget for each allocation strategy."""

import streamlit as st

from sfsd.dashboard import data, frontier, widgets

widgets.page_setup("Budget-quality frontier", "Each point is a run of `sfsd frontier` (or `sfsd search "
                   "--target-budget B --strategy S`): ranks allocated to reach B, the final model evaluated on the "
                   "eval split; SliceGPT's points are its uniform runs (`sfsd frontier --baselines slicegpt`, Table "
                   "1), the whole model sliced to the same parameters, at their parameter-equivalent budget. Lower is "
                   "better; the dashed line is the base model.")

points = frontier.points()
if points.empty:
    st.info("No frontier yet. Run e.g. `sfsd frontier --strategies uniform,spectrum,sensitivity,alg1 "
            "--budgets 0.9,0.8,0.6`; its points appear here as they finish.")
    st.stop()

c1, c2, c3 = st.columns([2, 1, 1])
model = c1.selectbox("Model", sorted(points["model"].unique()), format_func=data.model_display, key="frontier-model")
frame = frontier.points(model)
columns = frontier.ppl_columns(frame)
if not columns:
    st.info("These runs have no eval-split perplexity yet: run `sfsd frontier` with the same flags to evaluate them.")
    st.stop()
column = c2.radio("Perplexity at", columns, horizontal=True, key="frontier-ppl")
x_axis = frontier.X_AXES[c3.radio("Against", list(frontier.X_AXES), horizontal=True, key="frontier-x")]
headline = frontier.frontier_headline(frame, column)
if headline:
    st.markdown(f"**{headline}**")
st.caption("Lines: target-budget runs of one strategy; diamonds: Algorithm 1 searches (a tolerance, no target). "
           "Click a point to open its budget heatmap below.")
event = widgets.chart(frontier.frontier_figure(frame, column, x_axis), key="frontier-chart", on_select="rerun",
                      selection_mode="points")
_, other_protocols = frontier.one_protocol(frame, column)
if other_protocols:
    st.caption(other_protocols)
broken = frontier.broken_note(frame, column)
if broken:
    st.warning(broken, icon=":material/warning:")
tasks = frontier.task_columns(frame)
if tasks:
    task = st.selectbox("Accuracy on", tasks, key="frontier-task") if len(tasks) > 1 else tasks[0]
    widgets.chart(frontier.accuracy_figure(frame, task, x_axis), key="frontier-acc-chart")
else:
    st.caption("No accuracy yet: `sfsd frontier ... --tasks piqa --limit 500` adds eval-split accuracy per point.")
st.caption(data.PPL_NOTE)
widgets.table(frontier.display_table(frame), "frontier", key="frontier")

clicked = frontier.clicked_run(event)
if clicked:
    widgets.chart(frontier.heatmap_of(clicked, f"clicked point: {clicked}"), key="frontier-clicked-heatmap")

st.subheader("Where does each strategy put the ranks?")
runs = frame[~frame["strategy"].isin(["base", frontier.ALG1])].dropna(subset=["target"])  # target-budget runs
if runs.empty:  # only the base model so far (e.g. a uniform `--method none` run): nothing to compare yet
    st.info("No target-budget run yet: `sfsd frontier --strategies spectrum,uniform --budgets 0.9,0.8` adds some.")
    st.stop()
c1, c2, c3 = st.columns(3)
target = c1.selectbox("Target budget", sorted(runs["target"].unique(), reverse=True), key="frontier-target")
at_target = runs[runs["target"] == target]
labels = {frontier.point_name(row.strategy, row.method): row.run_id for row in at_target.itertuples()}
names = list(labels)
left = c2.selectbox("Left", names, index=0, key="frontier-left")
right = c3.selectbox("Right", names, index=min(1, len(names) - 1), key="frontier-right")
for side, column_, name in zip(("left", "right"), st.columns(2), (left, right), strict=True):
    with column_:
        widgets.chart(frontier.heatmap_of(labels[name], f"{name} at {target:g}", cell_text=False),
                      key=f"frontier-heatmap-{side}")
