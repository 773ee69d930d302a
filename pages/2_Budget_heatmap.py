"""Budget heatmap (the paper's Figure 3): blocks x roles, % of each layer's parameters the search kept."""

from pathlib import Path

import pandas as pd
import streamlit as st

from sfsd.dashboard import data, headlines, plots, widgets

top = widgets.page_setup("Budget heatmap", "Per layer: the share of its parameters the surgical search kept, "
                         "r (d_in + d_out) / (d_in d_out). Click a cell (or box-select it) to open its spectrum.")

runs = widgets.search_runs_with("layers")
if runs.empty:
    widgets.no_runs("search runs with decided layers", key="heatmap-empty")
    st.stop()

mode = st.radio("Show", ["one run", "average over runs of one method"], horizontal=True, key="heatmap-mode",
                help="Figure 3 averages the searches of one method on one model (over tasks or seeds): runs of other "
                     "methods or models are not offered for an average")
if mode == "one run":  # the feature-space search by default: the paper's method
    feature = runs[(runs["kind"] == "search") & (runs["method"] == "feature")]["run_id"]
    run_ids = [widgets.pick_run(runs, key="heatmap-run", starts_among=list(feature) or None)]
else:
    groups = data.same_method_groups(runs)
    keys = sorted(groups, key=lambda k: (k[0] != "feature", -len(groups[k])))  # feature first, then the largest
    group = st.selectbox("Method · model", keys, key="heatmap-group",
                         format_func=lambda k: f"{k[0]} · {Path(k[1]).name} ({len(groups[k])} "
                                              f"run{'s' if len(groups[k]) > 1 else ''})")
    run_ids = widgets.pick_runs(runs[runs["run_id"].isin(groups[group])], key="heatmap-runs-" + "-".join(group),
                                label="Runs to average", default=len(groups[group]))
views = [view for view in (data.load_run(run_id) for run_id in run_ids) if view is not None]
if not views:
    st.info("Pick at least one run.")
    st.stop()
widgets.broken_run_warnings(views)

frames = [view.layers.assign(run_id=view.run_id) for view in views]
layers = pd.concat(frames, ignore_index=True)
cells = plots.heatmap_cells(layers)
widgets.headline(top, headlines.heatmap_headline(
    [(view.method, view.kind, view.model, view.layers, (view.result or {}).get("overall_budget"))
     for view in views]))
if len(views) == 1:
    view = views[0]
    budget = (view.result or {}).get("overall_budget")
    title = (f"{view.label}: {int(view.layers['decided'].sum())}/{len(view.layers)} layers decided"
             + (f", overall budget {100 * budget:.1f}%" if budget is not None else "")
             + (f"<br><sup>{view.heldout_change}</sup>" if view.heldout_change else ""))
else:
    title = f"Mean of {len(views)} {views[0].method} runs (hover: min-max and std per cell)"

# The picked layer is settled before the figure is drawn: the figure (its outline) must not change between
# a click and the rerun that reports it, or Streamlit drops the selection.
names = list(cells.sort_values(["block", "role"], ascending=[False, True])["layer"])
if st.session_state.get("heatmap-layer") not in names:
    current = st.session_state.get(widgets.SELECTED_LAYER)
    st.session_state["heatmap-layer"] = current if current in names else names[0]
event = widgets.chart(plots.budget_heatmap(cells, title, selected=st.session_state["heatmap-layer"]),
                      key="heatmap-chart", on_select="rerun", selection_mode=("points", "box"))
picked = plots.selected_layer(event, cells)
if picked and picked != st.session_state.get("heatmap-last-pick"):
    st.session_state["heatmap-last-pick"] = picked
    st.session_state["heatmap-layer"] = picked
    st.session_state[widgets.SELECTED_LAYER] = picked
    st.rerun()  # redraw with the cell outlined

# ---- the selected layer's spectrum -----------------------------------------------------------------------

layer = st.selectbox("Layer", names, key="heatmap-layer", help="the cell clicked in the heatmap, or pick one here")
st.session_state[widgets.SELECTED_LAYER] = layer
view = views[0]
row = view.layers[view.layers["layer"] == layer]
spectrum = data.spectra(view.run_id, layer)
if row.empty or spectrum.empty:
    st.info("No spectrum stored for this layer in this run.")
else:
    row = row.iloc[0]
    rank = None if pd.isna(row["rank"]) else int(row["rank"])
    decided = "intact" if row["intact"] else (f"rank {rank}" if rank is not None else "not decided yet")
    widgets.chart(plots.spectrum_figure(spectrum, int(row["d_in"]), int(row["d_out"]), rank, view.method,
                                        title=f"{layer} ({decided}) · {view.label}"), key="heatmap-spectrum")
    widgets.page_link("pages/3_Spectra.py", label="More on the Spectra page", icon=":material/show_chart:")

with st.expander("Cells as a table"):
    widgets.table(data.heatmap_cells_text(cells), "budget-heatmap", key="heatmap-cells")
