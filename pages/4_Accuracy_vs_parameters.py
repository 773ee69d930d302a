"""Accuracy (or perplexity) versus remaining parameters (the paper's Figures 1-2), from the searches'
snapshots, several runs overlaid; uniform runs as single points."""

from pathlib import Path

import streamlit as st

from sfsd.dashboard import data, headlines, plots, widgets

top = widgets.page_setup("Accuracy versus parameters", "Each search records a snapshot every few decided layers: "
                         "its metric and the parameters left. Overlay runs to compare weight and feature space, or "
                         "tolerances.")

runs = widgets.search_runs_with("snapshots")
if runs.empty:
    widgets.no_runs("search runs with snapshots", key="acc-empty")
    st.stop()

# the newest run of each method on one model (the demo's feature against weight), not the newest runs whatever
run_ids = widgets.pick_runs(runs, key="acc-runs", label="Runs to overlay", initial=data.comparison_runs(runs))
views = [view for view in (data.load_run(run_id) for run_id in run_ids) if view is not None]
widgets.broken_run_warnings(views)
if not views:
    st.info("Pick at least one run.")
    st.stop()


def series_of(view: data.RunView) -> dict[str, str]:
    """y options of one run: its search metric and the eval-split task columns of its snapshots."""
    options = {f"search metric: {view.metric_label}": "metric"}
    for column in view.snapshots.columns:
        if ":" in column and column.split(":", 1)[0] in ("acc", "acc_norm"):
            name, task = column.split(":", 1)
            options[f"{name} {task} (eval split, %)"] = column
    return options


options: dict[str, str] = {}
for view in views:
    options.update(series_of(view))
# the y axis on a row of its own: its options are long, and three columns cut them and the toggle at 1000 px
# accuracy first where a task was scored at the snapshots: the search metric is on the split it was searched on
labels = list(options)
y_label = st.selectbox("y axis", labels, key="acc-y",
                       index=next((i for i, label in enumerate(labels) if options[label] != "metric"), 0))
c2, c3 = st.columns(2, vertical_alignment="bottom")
x_mode = c2.radio("x axis", ["parameters (M)", "overall budget (%)"], horizontal=True, key="acc-x")
zoom = c3.toggle("Zoom to the searches", key="acc-zoom",
                 help="x axis from the smallest to the largest model the searches visited (uniform runs may fall "
                      "outside it); off: everything shown fits")
column = options[y_label]
percent = column != "metric"
by_params = x_mode.startswith("parameters")

curves, bases, baselines, skipped, tables, drawn, borrowed = [], {}, [], [], [], [], []
for view in views:
    if series_of(view).get(y_label) != column:
        skipped.append(view.label)
        continue
    frame = view.snapshots.dropna(subset=[column]).sort_values("step")
    if frame.empty:
        skipped.append(view.label)
        continue
    if percent and not (frame["step"] == 0).any():  # the curve starts at the base model, on the same documents
        frame, source = data.with_base_accuracy(frame, view.snapshots, view.model, column)
        if source:
            borrowed.append(f"{view.label}: {source}")
    drawn.append((view.label, frame))
    x = frame["params"] / 1e6 if by_params else 100 * frame["budget"]
    y = frame[column] * (100 if percent else 1)
    errors = plots.wilson_error_bars(list(frame[column]), list(data.counts(frame, column))) if percent else None
    curves.append(plots.Curve(view.label, view.method, list(x), list(y), error_y=errors,
                              text=[f"{view.run_id}<br>step {s} ({s} layers decided)" for s in frame["step"]]))
    base = frame["step"] == 0
    if base.any():  # the uncompressed model: every parameter, the run's first snapshot
        name = f"base model ({Path(view.model).name})"
        bases.setdefault(name, plots.Curve(
            name, "base", [float(x[base].iloc[0])], [float(y[base].iloc[0])], markers_only=True, symbol="star",
            error_y=plots.wilson_error_bars([frame.loc[base, column].iloc[0]],
                                            [data.counts(frame, column)[base].iloc[0]]) if percent else None,
            text=[f"{view.run_id}<br>step 0 (nothing compressed)"]))
        baselines.append((name, float(y[base].iloc[0])))
    tables.append(frame.assign(run_id=view.run_id, method=view.method))
search_x = [value for curve in curves for value in curve.x]
curves = [*bases.values(), *curves]

# Uniform runs (Table 1) of the same models as single points, for the eval-split accuracies they share.
if percent and column.startswith("acc:"):
    uniform = data.uniform_frame()
    models = {view.model for view in views}
    x_column = "params" if by_params else "overall_budget"
    if not uniform.empty and column in uniform and x_column in uniform:
        for row in uniform.dropna(subset=[column, x_column]).to_dict("records"):
            if row["model"] not in models:
                continue
            x = row["params"] / 1e6 if by_params else 100 * row["overall_budget"]
            if row["method"] == "base":  # the uncompressed model's accuracy, where no search snapshot has it
                name = f"base model ({Path(row['model']).name})"
                if name not in bases:
                    n = row.get(data.n_column(column))
                    bases[name] = plots.Curve(name, "base", [x], [100 * row[column]], markers_only=True,
                                              symbol="star", text=[f"{row['run_id']}<br>Table 1 base run, n={n:.0f}"],
                                              error_y=plots.wilson_error_bars([row[column]], [n]))
                    curves.insert(0, bases[name])
                continue
            curves.append(plots.Curve(f"uniform {row['method']} β{row['beta']} last {row['last_blocks']}",
                                      row["method"], [x], [100 * row[column]], markers_only=True,
                                      text=[f"{row['run_id']}<br>Table 1 protocol"],
                                      error_y=plots.wilson_error_bars([row[column]], [row.get(data.n_column(column))])))

widgets.headline(top, headlines.accuracy_headline(drawn, column, y_label.removeprefix("search metric: ")))
unique_bases = list(dict.fromkeys((name, round(value, 6)) for name, value in baselines))
x_title = "parameters remaining (millions)" if by_params else \
    "overall budget (% of decomposable parameters kept)"
y_title = y_label if not percent else y_label.replace(" (eval split, %)", " (%), eval split")
references = {}
if percent and tables:
    rates = data.reference_rates(column.split(":", 1)[1], data.snapshot_documents(tables, column))
    references = {f"majority class ({rates['majority_label']})": 100 * rates["majority"],
                  "chance": 100 * rates["chance"]}
x_range = plots.padded_range(search_x) if zoom else None
widgets.chart(plots.metric_vs_params(curves, y_title, x_title, unique_bases, references=references, x_range=x_range),
              key="acc-chart")
if percent:
    st.caption("Error bars: 95% Wilson intervals over the n documents of each snapshot (the table's n column); "
               "dotted lines: the rates of always giving the commonest answer and of guessing.")
if borrowed:
    st.caption("The base model's point (step 0) comes from its Table 1 evaluation on the same task and documents "
               "(the search scored no task on the base model): " + "; ".join(borrowed) + ".")
missing = [label for label, frame in drawn if percent and not (frame["step"] == 0).any()]
if missing:
    st.caption("No base-model accuracy on these documents, so these curves start at their first snapshot: "
               + ", ".join(missing) + ".")
heldout = [f"{view.label}: {view.heldout}" for view in views if view.heldout]
if heldout:
    st.caption("Held-out check, the searched metric's change on the search split vs the eval split it never saw: "
               + "; ".join(heldout) + ".")
if skipped:
    st.caption(f"Not shown (no such series): {', '.join(skipped)}. Task accuracies need "
               "`--snapshot-tasks` on the search, or can be computed below.")
if tables:
    widgets.table(data.snapshot_table(tables), "snapshots", key="acc-table")

widgets.accuracy_panel(runs, key="acc-compute")
