"""The Frontier page's data and figure: eval perplexity against overall budget, one line per strategy and
method, the base model as a horizontal line (read from the run store through `frontier_frame`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from sfsd.dashboard import data
from sfsd.dashboard.plots import (
    DASHES,
    METHOD_COLORS,
    _layout,
    empty_figure,
    interval_error_bars,
    log_ticks,
    method_color,
    method_label,
    wilson_error_bars,
)
from sfsd.decompose import METHODS
from sfsd.runs.frames import PPL_PARTS
from sfsd.runs.frontier import ALG1, frontier_frame
from sfsd.search.allocation import ALLOCATIONS

# One colour per strategy (the page compares strategies; usually of one method), one dash per method.
# The strategies' colours are those of their registry entries; a plain Algorithm 1 search (ALG1) is black.
STRATEGY_COLORS = {name: allocation.color for name, allocation in ALLOCATIONS.items()} | {ALG1: "#111111"}
METHOD_DASH = {name: method.dash for name, method in METHODS.items() if method.dash is not None}


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


X_AXES = {"overall budget": "overall_budget", "MACs": "macs"}
_X_TITLES = {"overall_budget": "overall budget (% of the decomposable parameters, Appendix B)",
             "macs": "MACs of one forward pass over 128 tokens (G)"}


def _x_values(group: pd.DataFrame, x: str) -> list[float]:
    return (100 * group["overall_budget"] if x == "overall_budget" else group["macs"].astype("float64") / 1e9).tolist()


def _hover_data(group: pd.DataFrame) -> list[list]:
    cells = group[["run_id", "target", "tolerance"]].astype(object)
    return cells.where(cells.notna(), "—").values.tolist()


def point_name(strategy: str, method: str) -> str:
    """A line's name: strategy (method), or a whole-model baseline's label (its strategy is its method)."""
    return method_label(method) if strategy == method else f"{strategy} ({method})"


def strategy_color(strategy: str) -> str:
    # a compact-factor or calibration-stream line ("spectrum compact anchored") keeps its strategy's colour; its
    # markers tell them apart
    return STRATEGY_COLORS.get(strategy.split(" ", 1)[0]) or STRATEGY_COLORS.get(strategy) or method_color(strategy)


def _base_line(fig: go.Figure, y: float, text: str, log: bool) -> None:
    """A dashed horizontal line with its label. The label is placed by hand: on a log axis Plotly puts an
    hline's own annotation at y itself instead of log10(y), which stretches the axis to 10^y."""
    fig.add_hline(y=y, line=dict(color=METHOD_COLORS["base"], dash="dash", width=1.5))
    fig.add_annotation(x=0, xref="paper", y=math.log10(y) if log else y, yref="y", text=text, showarrow=False,
                       xanchor="left", yanchor="bottom")


def _traces(fig: go.Figure, points_: pd.DataFrame, x: str, y_of, hover: str, error_of=None, text_of=None) -> None:
    """One line per (strategy, method) of target-budget runs; Algorithm 1 searches as separate markers.
    `text_of(group)`: each point's value as the hover shows it (default: y to 4 digits)."""
    for i, ((strategy, method), group) in enumerate(points_.groupby(["strategy", "method"], sort=True)):
        group = group.sort_values(x)
        words = strategy.split(" ")
        alg1, compact, stream = strategy == ALG1, "compact" in words, bool({"closed-loop", "anchored"} & set(words))
        symbol = "diamond" if alg1 else ("square" if stream else "circle") + ("-open" if compact else "")
        label = point_name(strategy, method)
        texts = text_of(group) if text_of else [f"{y:.4g}" for y in y_of(group)]
        fig.add_trace(go.Scatter(
            x=_x_values(group, x), y=y_of(group), name=label, mode="markers" if alg1 else "lines+markers",
            marker=dict(symbol=symbol, size=11 if alg1 else 8, color=strategy_color(strategy)),
            line=dict(color=strategy_color(strategy), dash=METHOD_DASH.get(method, DASHES[i % len(DASHES)])),
            error_y=error_of(group) if error_of else None,
            customdata=[[*cells, text] for cells, text in zip(_hover_data(group), texts, strict=True)],
            hovertemplate=f"{label}<br>x %{{x:.4g}}<br>{hover} %{{customdata[3]}}<br>target %{{customdata[1]}}, "
                          "tolerance %{customdata[2]}<br>%{customdata[0]}<extra></extra>"))


def protocol_tokens(frame: pd.DataFrame, column: str) -> int | None:
    """The token count of `column`'s comparison: the one most points (not the base model) were measured on."""
    tokens = frame.get(f"tokens:{column}")
    if tokens is None:
        return None
    measured = pd.to_numeric(tokens[(frame["strategy"] != "base") & frame[column].notna()], errors="coerce").dropna()
    if measured.empty:
        return None
    counts = measured.astype("int64").value_counts()
    return int(max(counts.index, key=lambda n: (counts[n], n)))


def one_protocol(frame: pd.DataFrame, column: str) -> tuple[pd.DataFrame, str | None]:
    """The rows whose `column` was measured on `protocol_tokens` tokens (base lines included), and a note on
    what was left out: perplexities on other token counts are another protocol, never drawn beside them."""
    tokens = protocol_tokens(frame, column)
    if tokens is None:
        return frame, None
    counted = pd.to_numeric(frame[f"tokens:{column}"], errors="coerce")
    same = (counted == tokens) | frame[column].isna()
    left = frame[~same]
    note = None
    if not left.empty:
        others = ", ".join(f"{int(n):,}" for n in sorted(counted[~same].dropna().unique()))
        note = (f"{column} on {tokens:,} eval-split tokens; {len(left)} point(s) measured on other token counts "
                f"({others}) are another protocol and are not drawn.")
    return frame[same], note


def _ppl_parts(frame: pd.DataFrame, column: str) -> tuple[pd.Series, pd.Series]:
    """The `low:` and `high:` bounds of a perplexity column (NaN where a run recorded none)."""
    return tuple(pd.to_numeric(frame[f"{part}:{column}"], errors="coerce") if f"{part}:{column}" in frame
                 else pd.Series(float("nan"), index=frame.index) for part in ("low", "high"))


def frontier_figure(frame: pd.DataFrame, column: str, x: str = "overall_budget") -> go.Figure:
    """`column` (log scale) against overall budget or MACs, with its 95% bootstrap interval over windows as
    error bars; one line per (strategy, method), Algorithm 1 searches as points, base models as horizontal
    lines labelled with their interval; all on one protocol (`one_protocol`)."""
    frame, _ = one_protocol(frame, column)
    tokens = protocol_tokens(frame, column)
    points_ = frame[(frame["strategy"] != "base")].dropna(subset=[column, x])
    if points_.empty:
        return empty_figure(f"No frontier point has {column} {'and MACs ' if x == 'macs' else ''}yet: run "
                            "`sfsd frontier`")
    fig = go.Figure()
    _traces(fig, points_, x, lambda g: g[column].tolist(), column,
            error_of=lambda g: interval_error_bars(g[column].tolist(), *(b.tolist() for b in _ppl_parts(g, column))),
            text_of=lambda g: [data.ppl_text(*cells) for cells in zip(g[column], *_ppl_parts(g, column), strict=True)])
    bases = frame[frame["strategy"] == "base"].dropna(subset=[column])
    low, high = _ppl_parts(bases, column)
    for value, text in dict(zip(bases[column], map(data.ppl_text, bases[column], low, high), strict=True)).items():
        _base_line(fig, float(value), f"base model {text}", log=True)
    fig.update_xaxes(title=_X_TITLES[x])
    # Plotly labels minor log ticks with a bare digit (400 read "4"): round values written out instead
    values = pd.concat([pd.to_numeric(frame[column], errors="coerce"), *_ppl_parts(frame, column)])
    values = values.to_numpy(dtype="float64")
    values = values[np.isfinite(values) & (values > 0)]
    span = (math.log10(values.min()) - 0.1, math.log10(values.max()) + 0.1)
    ticks = log_ticks(*span, mantissas=(1, 2, 5) if span[1] - span[0] < 3 else (1,))
    on = f", {tokens:,} tokens" if tokens else ""
    fig.update_yaxes(title=f"eval-split perplexity, {column.split('@')[1]}-token windows{on} (log scale, 95% CI)",
                     type="log",
                     range=list(span), tickvals=[v for v, _ in ticks] or None, ticktext=[t for _, t in ticks] or None)
    return _layout(fig, None, height=500)


def task_columns(frame: pd.DataFrame) -> list[str]:
    """Tasks with at least one accuracy among the compressed points (the base model's alone draws no line)."""
    compressed = frame[frame["strategy"] != "base"]
    return sorted(c.split(":", 1)[1] for c in frame.columns if c.startswith("acc:") and compressed[c].notna().any())


def accuracy_figure(frame: pd.DataFrame, task: str, x: str = "overall_budget") -> go.Figure:
    """Eval-split accuracy (%) on `task` with 95% Wilson error bars against budget or MACs; the base model
    as a line with its interval in the label."""
    from sfsd.evaluate.intervals import format_proportion

    acc, n = f"acc:{task}", f"n:{task}"
    points_ = frame[frame["strategy"] != "base"].dropna(subset=[acc, x])
    if points_.empty:
        return empty_figure(f"No frontier point has {task} accuracy yet: run `sfsd frontier --tasks {task}`")
    fig = go.Figure()
    _traces(fig, points_, x, lambda g: (100 * g[acc]).tolist(), f"{task} acc (%)",
            error_of=lambda g: wilson_error_bars(g[acc].tolist(), g[n].tolist()))
    for _, row in frame[frame["strategy"] == "base"].dropna(subset=[acc]).iterrows():
        value, count = row[acc], row[n]
        text = format_proportion(float(value), int(count), scale=100, digits=1)  # the axis's unit: %
        _base_line(fig, 100 * float(value), f"base model {text.replace(' [', '% [', 1)}", log=False)
    fig.update_xaxes(title=_X_TITLES[x])
    fig.update_yaxes(title=f"{task} accuracy, eval split (%, 95% Wilson interval)")
    return _layout(fig, None, height=450)


def display_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The points for reading: budgets in %, perplexities with their 95% bootstrap interval and tokens
    (`data.ppl_column_text`), and each task's accuracy with its 95% interval and n (`acc:<task>` / `n:<task>`
    columns become one `acc <task> [95% CI] (n)` text column)."""
    from sfsd.evaluate.intervals import format_proportion

    parts = tuple(f"{part}:" for part in PPL_PARTS)
    table = frame.drop(columns=[c for c in frame.columns if c.startswith(("acc:", "n:", *parts))])
    for column in [c for c in frame.columns if c.startswith("ppl@")]:
        header, cells = data.ppl_column_text(frame, column)
        table.insert(table.columns.get_loc(column), header, cells)
        table = table.drop(columns=[column])
    for column in [c for c in frame.columns if c.startswith("acc:")]:
        task = column.split(":", 1)[1]
        n = frame.get(f"n:{task}")
        table[f"acc {task} [95% CI] (n)"] = [
            format_proportion(float(p), int(k)) if pd.notna(p) and n is not None and pd.notna(k) else "—"
            for p, k in zip(frame[column], n if n is not None else [None] * len(frame), strict=True)]
    for column in ("target", "overall_budget"):  # budgets in %, as everywhere else
        if column in frame:
            table[column] = [data.number_text(100 * v if pd.notna(v) else None, 1) for v in frame[column]]
    if "tolerance" in frame:
        table["tolerance"] = [f"+{100 * v:g}%" if pd.notna(v) else data.EMPTY for v in frame["tolerance"]]
    for column in ("params", "macs"):
        if column in frame:
            table[column] = [data.number_text(v, 0) for v in frame[column]]
    if "model" in frame:  # its name, not a local folder's path (read-only mode shows none)
        table["model"] = [data.model_display(str(m)) for m in frame["model"]]
    table = table.rename(columns={"target": "target (%)", "overall_budget": "budget (%)"})
    # every cell text (a column mixing numbers and "—" is not one Arrow type); an empty cell reads "—"
    return table.astype(object).where(table.notna(), data.EMPTY).astype(str)


def heatmap_of(run_id: str, title: str, cell_text: bool = True) -> go.Figure:
    """The budget heatmap (blocks x roles, % of parameters kept) of one frontier point (`cell_text` False: colour
    only, for two side by side)."""
    from sfsd.dashboard.plots import budget_heatmap, heatmap_cells

    view = data.load_run(run_id)
    if view is None:
        return empty_figure(f"run {run_id} cannot be read")
    return budget_heatmap(heatmap_cells(view.layers), title, cell_text=cell_text)


def clicked_run(event) -> str | None:
    """The run id of the point clicked on the frontier chart (its first custom datum), if any."""
    points_ = ((event or {}).get("selection") or {}).get("points") or []
    for point in points_:
        custom = point.get("customdata")
        if custom and str(custom[0]).startswith(("search-", "uniform-")):
            return str(custom[0])
    return None


def frontier_headline(frame: pd.DataFrame, column: str) -> str | None:
    """The slide sentence of the frontier, from the points drawn (one protocol): at the target budget most
    strategies reached, each line's perplexity as a multiple of the base model's, best first."""
    frame, _ = one_protocol(frame, column)
    bases = frame.loc[frame["strategy"] == "base", column].dropna()
    targets = frame[(frame["strategy"] != "base") & frame["target"].notna() & frame[column].notna()]
    if bases.empty or targets.empty:
        return None
    base = float(bases.iloc[0])
    counts = targets.groupby("target")["strategy"].nunique()
    target = max(counts.index, key=lambda t: (counts[t], -abs(t - 0.8)))
    at = targets[targets["target"] == target].sort_values(column)
    lines = [f"{point_name(s, m)} {v / base:,.{1 if v / base < 100 else 0}f}x"
             for s, m, v in zip(at["strategy"], at["method"], at[column], strict=True)]
    tokens = protocol_tokens(frame, column)
    on = f" on {tokens:,} eval-split tokens" if tokens else ""
    return (f"At the {100 * target:.0f}% target budget, perplexity ({column.removeprefix('ppl@')}-token windows{on}) "
            f"as a multiple of the base model's {base:,.2f}: " + ", ".join(lines) + " (best first).")


def broken_note(frame: pd.DataFrame, column: str) -> str | None:
    """A warning for the drawn points whose perplexity is more than data.PPL_BLOWUP x the base model's (what
    their accuracy shows says little about their method), or None."""
    frame, _ = one_protocol(frame, column)
    bases = frame.loc[frame["strategy"] == "base", column].dropna()
    if bases.empty:
        return None
    base = float(bases.iloc[0])
    broken = frame[(frame["strategy"] != "base") & (frame[column] > data.PPL_BLOWUP * base)]
    if broken.empty:
        return None
    named = [f"{point_name(s, m)} at {100 * b:.0f}% ({v / base:,.0f}x)"
             for s, m, b, v in zip(broken["strategy"], broken["method"], broken["overall_budget"], broken[column],
                                   strict=True)]
    return (f"{len(named)} point(s) above {data.PPL_BLOWUP:g}x the base model's perplexity ({base:,.2f}): "
            + ", ".join(named) + ". These models are broken: their accuracies only show which answer they favour.")
