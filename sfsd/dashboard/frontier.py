"""The Frontier page's data and figure: eval perplexity against overall budget, one line per strategy and
method, the base model as a horizontal line (read from the run store through `frontier_frame`)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from sfsd.dashboard import data
from sfsd.dashboard.plots import DASHES, METHOD_COLORS, _layout, empty_figure, method_color
from sfsd.runs.frontier import frontier_frame

STRATEGY_DASH = {"uniform": "dot", "spectrum": "solid", "sensitivity": "dash", "alg1": "dashdot"}


@st.cache_data(ttl=data.TTL_S, show_spinner=False)
def _points(root: str) -> pd.DataFrame:
    from pathlib import Path

    return frontier_frame(Path(root))


def points(model: str | None = None) -> pd.DataFrame:
    """All frontier points of the store (optionally of one model)."""
    frame = _points(data.store_root())
    return frame if model is None else frame[frame["model"] == model].reset_index(drop=True)


def ppl_columns(frame: pd.DataFrame) -> list[str]:
    """The `ppl@<n>` columns that hold at least one number, shortest sequence first."""
    columns = [c for c in frame.columns if c.startswith("ppl@") and frame[c].notna().any()]
    return sorted(columns, key=lambda c: int(c.split("@", 1)[1]))


def frontier_figure(frame: pd.DataFrame, column: str) -> go.Figure:
    """`column` (log scale) against overall budget; one line per (strategy, method), base models as lines."""
    points_ = frame[(frame["strategy"] != "base")].dropna(subset=[column])
    if points_.empty:
        return empty_figure(f"No frontier point has {column} yet: run `sfsd frontier`")
    fig = go.Figure()
    for i, ((strategy, method), group) in enumerate(points_.groupby(["strategy", "method"], sort=True)):
        group = group.sort_values("overall_budget")
        fig.add_trace(go.Scatter(
            x=(100 * group["overall_budget"]).tolist(), y=group[column].tolist(), name=f"{strategy} ({method})",
            mode="lines+markers",
            line=dict(color=method_color(method), dash=STRATEGY_DASH.get(strategy, DASHES[i % len(DASHES)])),
            customdata=group[["run_id", "target"]].values.tolist(),
            hovertemplate="budget %{x:.2f}%<br>" + column + " %{y:.4g}<br>target %{customdata[1]}"
                          "<br>%{customdata[0]}<extra></extra>"))
    for value in frame.loc[frame["strategy"] == "base", column].dropna().unique():
        fig.add_hline(y=float(value), line=dict(color=METHOD_COLORS["base"], dash="dash", width=1.5),
                      annotation_text=f"base model {column} {value:.4g}", annotation_position="top left")
    fig.update_xaxes(title="overall budget (% of the decomposable parameters, Appendix B)")
    fig.update_yaxes(title=f"eval-split perplexity, {column.split('@')[1]} tokens (log scale)", type="log")
    return _layout(fig, None, height=500)


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The points for reading: budgets in %, perplexities, and each task's accuracy with its 95% interval
    and n (`acc:<task>` / `n:<task>` columns become one `acc <task> [95% CI] (n)` text column)."""
    from sfsd.evaluate.intervals import format_proportion

    table = frame.drop(columns=[c for c in frame.columns if c.startswith(("acc:", "n:"))])
    for column in [c for c in frame.columns if c.startswith("acc:")]:
        task = column.split(":", 1)[1]
        n = frame.get(f"n:{task}")
        table[f"acc {task} [95% CI] (n)"] = [
            format_proportion(float(p), int(k)) if pd.notna(p) and n is not None and pd.notna(k) else "—"
            for p, k in zip(frame[column], n if n is not None else [None] * len(frame), strict=True)]
    return table


def heatmap_of(run_id: str, title: str) -> go.Figure:
    """The budget heatmap (blocks x roles, % of parameters kept) of one frontier point."""
    from sfsd.dashboard.plots import budget_heatmap, heatmap_cells

    view = data.load_run(run_id)
    if view is None:
        return empty_figure(f"run {run_id} cannot be read")
    return budget_heatmap(heatmap_cells(view.layers), title)
