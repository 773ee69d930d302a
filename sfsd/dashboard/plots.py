"""Every figure of the dashboard (and of the HTML report): pure functions from frames to Plotly figures.

One colour per method across all pages (`METHOD_COLORS`); axis titles carry their units.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from sfsd.adapters.base import ROLE_ORDER
from sfsd.decompose import BETA_GRID, METHODS, rank_for_budget
from sfsd.evaluate.intervals import format_ppl, mean_interval, wilson_interval

# Every method's colour and label come from its registry entry (sfsd.decompose.methods); "base", the
# uncompressed model, is not a method but is drawn beside them.
BASE = "base"
METHOD_COLORS = {name: method.color for name, method in METHODS.items()} | {BASE: "#7f7f7f"}  # base: grey
METHOD_LABELS = {name: method.label for name, method in METHODS.items()} | {BASE: "base model"}
OTHER_COLORS = ["#e377c2", "#bcbd22", "#393b79", "#637939"]
DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
TEMPLATE = "plotly_white"
# reference lines of accuracy charts: black and grey, no method's colour
REFERENCE_COLORS = {"majority": "#111111", "chance": "#9a9a9a"}


def method_color(method: str | None) -> str:
    if method in METHOD_COLORS:
        return METHOD_COLORS[method]
    return OTHER_COLORS[sum(map(ord, str(method))) % len(OTHER_COLORS)]


def method_label(method: str | None) -> str:
    return METHOD_LABELS.get(str(method), str(method))


def ordered_roles(roles: Iterable[str]) -> list[str]:
    """Roles in forward order (q, k, v, o, gate, up, down), unknown ones last."""
    order = {role: i for i, role in enumerate(ROLE_ORDER)}
    return sorted(dict.fromkeys(roles), key=lambda r: (order.get(r, len(order)), r))


# What a chart must fit at the narrowest width people present on (1000 px: a chart about 540 px wide, its plot
# area about 450 px): Plotly does not wrap a title, and a legend above the plot grows into the title.
TITLE_CHARS = 58  # characters of a title line (bold, about 17 px)
LEGEND_WIDTH = 450  # px a legend row may fill
TITLE_LINE, LEGEND_ROW = 26, 21  # px


def wrap_title(title: str, width: int = TITLE_CHARS) -> str:
    """`title` with line breaks (<br>) at its spaces (after a " · " separator, never before it) so that no line is
    longer than `width` characters where it can be broken; its own lines and <sup> lines are kept."""
    lines = []
    for line in title.split("<br>"):
        if line.startswith("<sup>") or len(line) <= width:
            lines.append(line)
            continue
        current = ""
        for word in re.split(r" (?!·)", line):  # a " · " separator stays at the end of its line
            candidate = f"{current} {word}" if current else word
            if current and len(candidate) > width:
                lines.append(current)
                current = word
            else:
                current = candidate
        lines.append(current)
    return "<br>".join(lines)


def legend_rows(names: Sequence[str], width: int = LEGEND_WIDTH) -> int:
    """How many rows a horizontal legend of `names` takes in `width` px (Plotly's entry: a 40 px symbol and
    about 6.5 px per character)."""
    rows, used = 0, width
    for name in names:
        entry = 40 + 6.5 * len(re.sub(r"<[^>]+>", "", name))
        if used + entry > width:
            rows, used = rows + 1, 0
        used += entry
    return rows


def _layout(fig: go.Figure, title: str | None = None, height: int | None = None, legend: str = "top") -> go.Figure:
    """Common look; `legend` "top" (above the plot) or "bottom" (under it, for figures with panel titles). A
    long title is wrapped; the top margin holds the title's lines and, above the plot, the legend's rows as
    they wrap in a narrow chart (the title at the top, the legend under it: they never overlap)."""
    title = wrap_title(title) if title else title
    title_height = TITLE_LINE * (title.count("<br>") + 1) + 14 if title else 0
    if legend == "bottom":
        place = dict(orientation="h", yanchor="top", y=-0.14, xanchor="left", x=0)
        margin = dict(l=60, r=30, t=max(80 if title else 40, title_height + 20), b=90)
    else:
        place = dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0)
        names = [str(trace.name) for trace in fig.data if trace.name and trace.showlegend is not False
                 and trace.type not in ("heatmap",)]
        rows = legend_rows(names) if len(names) > 1 or fig.layout.showlegend else 0
        margin = dict(l=60, r=30, t=max(80 if title else 40, title_height + LEGEND_ROW * rows + 16), b=50)
    fig.update_layout(template=TEMPLATE, margin=margin, legend=place,
                      title=dict(text=title, y=1, yref="container", yanchor="top", pad=dict(t=10)) if title
                      else None)
    if height:
        fig.update_layout(height=height + max(0, margin["t"] - 80))
    return fig


def wilson_error_bars(values: Sequence[float | None], counts: Sequence[float | None],
                      scale: float = 100.0) -> dict | None:
    """Plotly `error_y` for proportions `values` (fractions) over `counts` documents: the 95% Wilson
    interval, asymmetric, in the plot's unit (`scale` 100 for percent). None if no count is known."""
    plus, minus = [], []
    for value, n in zip(values, counts, strict=True):
        if value is None or n is None or pd.isna(value) or pd.isna(n) or n <= 0:
            plus.append(None)
            minus.append(None)
            continue
        low, high = wilson_interval(float(value) * int(n), int(n))
        plus.append(scale * (high - float(value)))
        minus.append(scale * (float(value) - low))
    if all(v is None for v in plus):
        return None
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.3, width=4)


def _reference_lines(fig: go.Figure, references: Mapping[str, float], **kwargs) -> None:
    """Horizontal dashed lines (in the plot's y unit) for `references` {label: value}."""
    for i, (name, value) in enumerate(references.items()):
        if value is None or pd.isna(value):
            continue
        color = REFERENCE_COLORS["majority" if name.startswith("majority") else "chance"]
        fig.add_hline(y=float(value), line=dict(color=color, dash="dot", width=1.5), annotation_text=name,
                      annotation_position="bottom right" if i % 2 else "top right",
                      annotation_font=dict(color=color, size=11), **kwargs)


def empty_figure(message: str, height: int = 300) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, font=dict(size=14), x=0.5, y=0.5, xref="paper", yref="paper")
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, height=height)


# ---- budget heatmap (Figure 3) --------------------------------------------------------------------------


def heatmap_cells(layers: pd.DataFrame) -> pd.DataFrame:
    """One row per (block, role): retained % (mean over runs when several are stacked with a `run_id`
    column, with its min, max and standard deviation over them), rank (mean), d_in, d_out, layer name and how
    many runs decided it. Undecided layers give NaN."""
    columns = ["block", "role", "retained_pct", "rank", "d_in", "d_out", "layer", "runs", "retained_min",
               "retained_max", "retained_std"]
    if layers.empty:
        return pd.DataFrame(columns=columns)
    frame = layers.copy()
    decided = frame["decided"].astype(bool) if "decided" in frame else pd.Series(True, index=frame.index)
    frame["retained_pct"] = pd.to_numeric(frame["retained"], errors="coerce").where(decided) * 100
    frame["rank_value"] = pd.to_numeric(frame["rank"], errors="coerce").astype("float64")
    # An intact layer keeps its full rank min(d_in, d_out).
    full = np.minimum(frame["d_in"].astype("float64"), frame["d_out"].astype("float64"))
    frame["rank_value"] = frame["rank_value"].where(~(decided & frame["rank_value"].isna()), full)
    frame["rank_value"] = frame["rank_value"].where(decided)
    cells = (frame.groupby(["block", "role"], sort=False)
             .agg(retained_pct=("retained_pct", "mean"), rank=("rank_value", "mean"), d_in=("d_in", "first"),
                  d_out=("d_out", "first"), layer=("layer", "first"), runs=("retained_pct", "count"),
                  retained_min=("retained_pct", "min"), retained_max=("retained_pct", "max"),
                  retained_std=("retained_pct", "std"))
             .reset_index())
    return cells[columns]


def budget_heatmap(cells: pd.DataFrame, title: str | None = None, selected: str | None = None,
                   cell_text: bool = True) -> go.Figure:
    """Blocks (rows, last block on top) x roles (columns), colour and text = % of the layer's parameters
    retained (`cell_text` False: colour only, for heatmaps side by side, whose cells are too narrow for the
    text; the hover says it). A transparent marker over each cell makes the cells selectable (click or box
    select)."""
    if cells.empty:
        return empty_figure("No decided layers yet")
    roles = ordered_roles(cells["role"])
    blocks = sorted(int(b) for b in cells["block"].dropna().unique())
    index = {(int(r.block), r.role): r for r in cells.itertuples()}
    z, text, custom = [], [], []
    for block in blocks:
        z_row, t_row, c_row = [], [], []
        for role in roles:
            cell = index.get((block, role))
            value = None if cell is None or pd.isna(cell.retained_pct) else float(cell.retained_pct)
            z_row.append(value)
            t_row.append("" if value is None else f"{value:.0f}%")
            c_row.append(_cell_custom(cell))
        z.append(z_row)
        text.append(t_row)
        custom.append(c_row)
    x_labels = [str(role) for role in roles]
    fig = go.Figure(go.Heatmap(
        z=z, x=x_labels, y=blocks, text=text, texttemplate="%{text}" if cell_text else "", textfont=dict(size=11),
        colorscale="Viridis", zmin=0, zmax=100, xgap=1, ygap=1, hoverinfo="skip",
        colorbar=dict(title=dict(text="retained<br>params (%)"), ticksuffix="%"),
    ))
    points = [(role, block, _cell_custom(index.get((block, role)))) for block in blocks for role in roles
              if (block, role) in index]
    fig.add_trace(go.Scatter(
        x=[p[0] for p in points], y=[p[1] for p in points], customdata=[p[2] for p in points], mode="markers",
        marker=dict(symbol="square", size=26, color="rgba(0,0,0,0)"), name="layers", showlegend=False,
        selected=dict(marker=dict(color="rgba(255,255,255,0.45)")), unselected=dict(marker=dict(opacity=0)),
        hovertemplate=("block %{y} · %{x}<br>retained %{customdata[4]} of parameters<br>rank %{customdata[0]}"
                       "<br>d_in %{customdata[1]} · d_out %{customdata[2]}<br>%{customdata[3]}<extra></extra>"),
    ))
    if selected:
        hit = cells[cells["layer"] == selected]
        if not hit.empty:
            fig.add_shape(type="rect", xref="x", yref="y", line=dict(color="red", width=3),
                          x0=x_labels.index(str(hit["role"].iloc[0])) - 0.5,
                          x1=x_labels.index(str(hit["role"].iloc[0])) + 0.5,
                          y0=int(hit["block"].iloc[0]) - 0.5, y1=int(hit["block"].iloc[0]) + 0.5)
    fig.update_xaxes(title="role (linear layer of the block)", type="category", categoryorder="array",
                     categoryarray=x_labels, side="bottom")
    fig.update_xaxes(range=[-0.5, len(x_labels) - 0.5])
    fig.update_yaxes(title="block (decoder layer index)", dtick=1 if len(blocks) <= 40 else None,
                     range=[min(blocks) - 0.5, max(blocks) + 0.5])
    return _layout(fig, title, height=max(320, 26 * len(blocks) + 140))


def _cell_custom(cell) -> list:
    if cell is None:
        return ["", "", "", "", ""]
    rank = "" if pd.isna(cell.rank) else (f"{cell.rank:.0f}" if float(cell.rank).is_integer() else f"{cell.rank:.1f}")
    retained = "undecided" if pd.isna(cell.retained_pct) else f"{cell.retained_pct:.1f}%"
    runs = getattr(cell, "runs", 1)
    if retained != "undecided" and runs > 1:  # an average: its spread over the runs
        retained += (f" (mean of {runs} runs, {cell.retained_min:.1f}-{cell.retained_max:.1f}%, "
                     f"std {cell.retained_std:.1f})")
    return [rank, int(cell.d_in) if not pd.isna(cell.d_in) else "", int(cell.d_out) if not pd.isna(cell.d_out) else "",
            cell.layer, retained]


def selected_layer(event, cells: pd.DataFrame) -> str | None:
    """The layer name of the first point of a `st.plotly_chart(on_select=...)` selection event."""
    try:
        points = event["selection"]["points"]
    except (KeyError, TypeError):
        points = getattr(getattr(event, "selection", None), "points", None) or []
    for point in points:
        custom = point.get("customdata")
        if isinstance(custom, (list, tuple)) and len(custom) >= 4 and custom[3]:
            return str(custom[3])
        x, y = point.get("x"), point.get("y")
        hit = cells[(cells["role"].astype(str) == str(x)) & (cells["block"].astype(str) == str(y))]
        if not hit.empty:
            return str(hit["layer"].iloc[0])
    return None


# ---- spectra ---------------------------------------------------------------------------------------------

SPECTRUM_NAMES = {name: method.spectrum for name, method in METHODS.items() if not method.structured}
# Methods that remove whole heads and channels: nothing is ordered by energy, so they have no spectrum.
NO_SPECTRUM = [method.label for method in METHODS.values() if method.structured]


def spectrum_label(kind: str) -> str:
    return SPECTRUM_NAMES.get(kind, f"{kind} spectrum")


def budget_ranks(d_in: int, d_out: int, betas: Sequence[float] = BETA_GRID) -> list[tuple[float, int]]:
    """(beta, rank) of Eq. 3 for each beta of the search grid."""
    return [(beta, rank_for_budget(beta, int(d_in), int(d_out))) for beta in betas]


def energy_table(spectra: pd.DataFrame, d_in: int, d_out: int) -> pd.DataFrame:
    """Per beta of the grid: rank and the share of each spectrum's energy the top-rank components keep."""
    rows = []
    kinds = list(dict.fromkeys(spectra["kind"])) if not spectra.empty else []
    totals = {kind: _positive(spectra[spectra["kind"] == kind].sort_values("index")["value"]) for kind in kinds}
    for beta, rank in budget_ranks(d_in, d_out):
        row = {"beta": beta, "rank": rank}
        for kind, values in totals.items():
            total = values.sum()
            row[f"energy kept, {kind} (%)"] = 100 * values[:rank].sum() / total if total > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


PANELS = ("", "2")  # the axis suffixes of a spectrum figure's two panels (x, y and x2, y2)


def add_vertical_lines(fig: go.Figure, lines: list[tuple[float, str, dict]], notes: Sequence[dict] = ()) -> go.Figure:
    """Full-height vertical lines ((x, the panel's axis suffix: "" for x/y, "2" for x2/y2, ..., line style)) and
    annotations, added to the layout in one update: the shapes `add_vline(row=, col=)` draws on a panel with
    traces, without the tenths of a second that each of those calls costs on a figure with subplots (a spectrum
    figure has 20 lines)."""
    shapes = [dict(type="line", x0=x, x1=x, xref=f"x{axis}", y0=0, y1=1, yref=f"y{axis} domain", line=line)
              for x, axis, line in lines]
    return fig.update_layout(shapes=[*fig.layout.shapes, *shapes], annotations=[*fig.layout.annotations, *notes])


def _positive(values: pd.Series) -> np.ndarray:
    array = values.to_numpy(dtype="float64")
    return np.where(array > 0, array, 0.0)


def spectrum_figure(spectra: pd.DataFrame, d_in: int, d_out: int, chosen_rank: int | None = None,
                    method: str | None = None, title: str | None = None) -> go.Figure:
    """Left: each spectrum (method's and weight's) on a log scale; right: cumulative energy (%). Dotted
    lines at the rank of each beta 0.1..0.9 (Eq. 3), a solid one at the run's chosen rank."""
    if spectra.empty:
        return empty_figure("No spectrum stored for this layer")
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.14)  # room for the right panel's axis title
    kinds = sorted(dict.fromkeys(spectra["kind"]), key=lambda k: (k == "weight", k))
    top = 0.0
    for kind in kinds:
        part = spectra[spectra["kind"] == kind].sort_values("index")
        values = part["value"].to_numpy(dtype="float64")
        x = part["index"].to_numpy() + 1
        shown = energy_share(values)
        energy = np.cumsum(np.where(values > 0, values, 0.0))
        energy = 100 * energy / energy[-1] if len(energy) and energy[-1] > 0 else energy
        color = method_color(kind)
        fig.add_trace(go.Scatter(x=x, y=shown, mode="lines", name=spectrum_label(kind), line=dict(color=color),
                                 legendgroup=kind,
                                 hovertemplate="component %{x}<br>%{y:.3g}% of the energy<extra>" + kind
                                               + "</extra>"),
                      row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=energy, mode="lines", name=spectrum_label(kind), line=dict(color=color),
                                 legendgroup=kind, showlegend=False,
                                 hovertemplate="top %{x} components<br>%{y:.2f}% of energy<extra>" + kind + "</extra>"),
                      row=1, col=2)
        top = max(top, float(len(values)))
    ranks = budget_ranks(d_in, d_out)
    labelled = spaced_labels([rank for _, rank in ranks], top)
    lines = [(rank, axis, dict(color="#b0b0b0", width=1, dash="dot")) for _, rank in ranks for axis in PANELS]
    notes = [dict(x=rank, y=1.0, xref=f"x{axis}", yref="paper", text=f"β{beta:g}", showarrow=False,
                  font=dict(size=10, color="#707070"), yanchor="bottom", textangle=-90)
             for beta, rank in ranks if rank in labelled for axis in PANELS]
    if chosen_rank is not None and not pd.isna(chosen_rank):
        color = method_color(method)
        lines += [(int(chosen_rank), axis, dict(color=color, width=2.5)) for axis in PANELS]
        notes.append(dict(x=int(chosen_rank), y=0.02, xref="x2", yref="paper", text=f"chosen r={int(chosen_rank)}",
                          showarrow=False, font=dict(size=11, color=color), xanchor="left", bgcolor="white"))
    add_vertical_lines(fig, lines, notes)
    # powers of ten only: Plotly would label every minor tick of a decade with a bare digit
    fig.update_yaxes(type="log", title=SHARE_TITLE, row=1, col=1, exponentformat="power", dtick=1)
    fig.update_yaxes(title="cumulative energy (% of total)", range=[0, 101], row=1, col=2)
    fig.update_xaxes(title="component (rank)", row=1, col=1)
    fig.update_xaxes(title="rank r (components kept)", row=1, col=2)
    fig = _layout(fig, title, height=480, legend="bottom")
    # the beta labels stand above the plot, under the title: room for them (about 28 px, rotated)
    return fig.update_layout(margin=dict(t=fig.layout.margin.t + BETA_LABEL_HEIGHT))


# Eigenvalues of Cov(Wx) and squared singular values of W are in different units: each spectrum is drawn as the
# share of its own total (its energy), which both have.
SHARE_TITLE = "share of energy (%, log scale)"
BETA_LABEL_HEIGHT = 28  # px above the plot for the rotated beta labels
BETA_LABEL_GAP = 0.06  # share of a panel's width between two beta labels (14 px rotated text at ~240 px panels)


def energy_share(values: np.ndarray) -> np.ndarray:
    """Each value as a % of the spectrum's total energy (its positive values' sum); non-positive ones NaN (a log
    axis cannot draw them)."""
    positive = np.where(values > 0, values, 0.0)
    total = positive.sum()
    if total <= 0:
        return np.full(values.shape, np.nan)
    return np.where(values > 0, 100 * positive / total, np.nan)


def spaced_labels(positions: Sequence[float], axis_max: float, gap: float = BETA_LABEL_GAP) -> set[float]:
    """The positions that get a label: from the first, each at least `gap` of the axis (0..`axis_max`) after the
    last labelled one, so that labels do not overlap in a narrow panel."""
    kept: list[float] = []
    for position in sorted(positions):
        if not kept or position - kept[-1] >= gap * max(axis_max, 1.0):
            kept.append(position)
    return set(kept)


def spectra_grid(spectra: pd.DataFrame, ranks: Mapping[int, int | None] | None = None, method: str | None = None,
                 cumulative: bool = False, title: str | None = None, columns: int = 6) -> go.Figure:
    """Small multiples: one panel per block (one role), each spectrum on a log scale (or cumulative
    energy), a solid line at the run's chosen rank of that block's layer."""
    if spectra.empty:
        return empty_figure("No spectra stored for this role")
    blocks = sorted(int(b) for b in spectra["block"].unique())
    cols = max(1, min(columns, len(blocks)))
    rows = math.ceil(len(blocks) / cols)
    # One y axis for every panel, labelled on the first column only: blocks compare at a glance, and six
    # columns of tick labels no longer run into the neighbouring panels at 1000 px.
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[f"block {b}" for b in blocks],
                        horizontal_spacing=0.02, vertical_spacing=min(0.12, 0.5 / rows) if rows > 1 else 0.1,
                        shared_xaxes=True, shared_yaxes="all")
    decades = _decade_step(np.concatenate([energy_share(part["value"].to_numpy(dtype="float64")) for _, part in
                                           spectra.groupby(["block", "kind"])]))
    kinds = sorted(dict.fromkeys(spectra["kind"]), key=lambda k: (k == "weight", k))
    for i, block in enumerate(blocks):
        row, col = i // cols + 1, i % cols + 1
        for kind in kinds:
            part = spectra[(spectra["block"] == block) & (spectra["kind"] == kind)].sort_values("index")
            values = part["value"].to_numpy(dtype="float64")
            if cumulative:
                energy = np.cumsum(np.where(values > 0, values, 0.0))
                y = 100 * energy / energy[-1] if len(energy) and energy[-1] > 0 else energy
            else:
                y = energy_share(values)
            fig.add_trace(go.Scatter(x=part["index"].to_numpy() + 1, y=y, mode="lines", name=spectrum_label(kind),
                                     line=dict(color=method_color(kind), width=1.4), legendgroup=kind,
                                     showlegend=i == 0, hovertemplate=f"block {block}<br>component %{{x}}<br>"
                                     "%{y:.3g}%<extra>" + kind + "</extra>"), row=row, col=col)
        rank = (ranks or {}).get(block)
        if rank is not None and not pd.isna(rank):
            fig.add_vline(x=int(rank), line=dict(color=method_color(method), width=1.5), row=row, col=col)
        # round ticks, few enough not to collide in a small panel: decades on the log scale, quarters of energy
        if cumulative:
            fig.update_yaxes(range=[0, 102], tick0=0, dtick=25, row=row, col=col)
        else:
            fig.update_yaxes(type="log", exponentformat="power", dtick=decades, row=row, col=col)
        fig.update_xaxes(nticks=4, row=row, col=col)
        if col == 1:
            fig.update_yaxes(title="cumulative energy (%)" if cumulative else "share of energy (%, log)",
                             row=row, col=col)
        if row == rows:
            fig.update_xaxes(title="component", row=row, col=col)
    fig.update_annotations(font_size=11)
    fig = _layout(fig, title, height=max(340, 210 * rows + 110), legend="bottom")
    return fig.update_layout(legend=dict(y=-0.3 / rows))


def _decade_step(values: np.ndarray) -> int:
    """dtick of a log axis (in decades) that puts at most 4 round powers of ten on it."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return 1
    decades = math.log10(positive.max()) - math.log10(positive.min())
    return max(1, math.ceil(decades / 4))


# ---- metric versus parameters (Figures 1-2) ------------------------------------------------------------


@dataclass
class Curve:
    """One line of the accuracy-versus-parameters figure."""

    name: str
    method: str
    x: Sequence[float]
    y: Sequence[float]
    markers_only: bool = False
    text: Sequence[str] | None = None
    error_y: dict | None = None  # plotly error_y (e.g. `wilson_error_bars`) for accuracies
    symbol: str | None = None  # marker symbol; default: circles on lines, diamonds for single points


def metric_vs_params(curves: Sequence[Curve], y_title: str, x_title: str = "parameters remaining (millions)",
                     baselines: Sequence[tuple[str, float]] = (), title: str | None = None,
                     references: Mapping[str, float] | None = None,
                     x_range: tuple[float, float] | None = None) -> go.Figure:
    """Metric against remaining parameters, one line per run (colour = method, dash = run within a method),
    95% error bars where curves carry them, the base model as a horizontal line and `references`
    ({label: y}, e.g. the task's majority-class and chance rates) as dotted ones; `x_range` zooms the x axis."""
    if not curves:
        return empty_figure("Nothing to plot: no snapshots for these runs")
    fig = go.Figure()
    seen: dict[str, int] = {}
    for curve in curves:
        dash = DASHES[seen.get(curve.method, 0) % len(DASHES)]
        seen[curve.method] = seen.get(curve.method, 0) + 1
        fig.add_trace(go.Scatter(
            x=list(curve.x), y=list(curve.y), name=curve.name,
            mode="markers" if curve.markers_only else "lines+markers",
            line=dict(color=method_color(curve.method), dash=dash),
            marker=dict(color=method_color(curve.method), size=11 if curve.markers_only else 7,
                        symbol=curve.symbol or ("diamond" if curve.markers_only else "circle"),
                        line=dict(color="white", width=1)),
            text=list(curve.text) if curve.text is not None else None, error_y=curve.error_y,
            hovertemplate="%{x:,.3f}<br>%{y:.4g}" + ("<br>%{text}" if curve.text is not None else "")
                          + "<extra>" + curve.name + "</extra>",
        ))
    for i, (name, value) in enumerate(baselines):
        if value is None or pd.isna(value):
            continue
        fig.add_hline(y=float(value), line=dict(color=METHOD_COLORS[BASE], dash="dash", width=1.5),
                      annotation_text=name, annotation_position="top left" if i % 2 == 0 else "bottom left",
                      annotation_font=dict(color=METHOD_COLORS[BASE], size=11))
    _reference_lines(fig, references or {})
    fig.update_xaxes(title=x_title, range=list(x_range) if x_range else None)
    fig.update_yaxes(title=y_title)
    return _layout(fig, title, height=480)


def padded_range(values: Sequence[float], share: float = 0.04) -> tuple[float, float] | None:
    """[min, max] of `values` widened by `share` of their span on each side (None without values)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    low, high = min(finite), max(finite)
    pad = (high - low) * share or abs(high) * 0.01 or 1.0
    return low - pad, high + pad


def search_trace(trials: pd.DataFrame, metric_title: str, title: str | None = None) -> go.Figure:
    """Every trial of a search: metric value against trial number, passed ones filled, threshold as a step line."""
    if trials.empty:
        return empty_figure("No trials yet")
    frame = trials.reset_index(drop=True)
    number = np.arange(1, len(frame) + 1)
    passed = frame["passed"].fillna(False).astype(bool).to_numpy()
    hover = [f"{layer}<br>beta {beta} · rank {rank}" for layer, beta, rank in
             zip(frame["layer"], frame["beta"], frame["rank"], strict=True)]
    fig = go.Figure()
    for flag, name, symbol in ((True, "passed", "circle"), (False, "rejected", "x")):
        mask = passed == flag
        fig.add_trace(go.Scatter(x=number[mask], y=frame["value"].to_numpy()[mask], mode="markers", name=name,
                                 marker=dict(symbol=symbol, size=7, color="#2ca02c" if flag else "#d62728"),
                                 text=[hover[i] for i in np.flatnonzero(mask)],
                                 hovertemplate="trial %{x}<br>%{y:.4g}<br>%{text}<extra></extra>"))
    fig.add_trace(go.Scatter(x=number, y=frame["threshold"], mode="lines", name="threshold",
                             line=dict(color="#7f7f7f", dash="dash", shape="hv")))
    fig.update_xaxes(title="trial (in search order)")
    fig.update_yaxes(title=metric_title)
    return _layout(fig, title, height=360)


# ---- Table 1, disagreement, bias -----------------------------------------------------------------------


def accuracy_bars(table: pd.DataFrame, title: str | None = None,
                  references: Mapping[str, Mapping[str, float]] | None = None) -> go.Figure:
    """Grouped bars: accuracy (%) per task (and average), one bar per method (rows of `table`), 95% Wilson
    error bars from the rows' `n:<task>` counts, and per task the majority-class and chance rates
    (`references` {task: {"majority": p, "chance": p}}) as short dashes across the task's bars."""
    columns = [c for c in table.columns if c.startswith("acc:") and table[c].notna().any()]
    columns += ["avg"] if "avg" in table and len(columns) > 1 else []
    if table.empty or not columns:
        return empty_figure("No task accuracies in these runs")
    tasks = [c.removeprefix("acc:") for c in columns]
    fig = go.Figure()
    for row in table.to_dict("records"):
        values = [row.get(c) for c in columns]
        counts = [row.get("n:" + c.removeprefix("acc:")) if c != "avg" else None for c in columns]
        error_y = wilson_error_bars(values, counts)
        if error_y and columns[-1] == "avg" and not pd.isna(row.get("avg")):  # the mean's normal interval
            low, high = mean_interval([row[c] for c in columns[:-1]], counts[:-1])
            error_y["array"][-1] = None if pd.isna(high) else 100 * (high - row["avg"])
            error_y["arrayminus"][-1] = None if pd.isna(low) else 100 * (row["avg"] - low)
        fig.add_trace(go.Bar(x=tasks, y=[None if v is None or pd.isna(v) else 100 * float(v) for v in values],
                             error_y=error_y,
                             name=method_label(row.get("method")), marker_color=method_color(row.get("method")),
                             customdata=[("" if n is None or pd.isna(n) else f"n={int(n)}") for n in counts],
                             hovertemplate="%{x}: %{y:.1f}% %{customdata}<extra>" + str(row.get("method"))
                                           + "</extra>"))
    for kind, label in (("majority", "majority class (always the commonest answer)"),
                        ("chance", "chance (1 / choices)")):
        rates = [(references or {}).get(task, {}).get(kind, float("nan")) for task in tasks if task != "avg"]
        ys = [100 * r for r in rates] + ([100 * float(np.mean(rates))] if "avg" in tasks else [])
        if all(pd.isna(y) for y in ys):
            continue
        fig.add_trace(go.Scatter(x=tasks, y=[None if pd.isna(y) else y for y in ys], mode="markers", name=label,
                                 marker=dict(symbol="line-ew", size=max(40, min(400, 600 // len(tasks))),
                                             line=dict(width=2.5, color=REFERENCE_COLORS[kind])),
                                 hovertemplate="%{x}: " + kind + " %{y:.1f}%<extra></extra>"))
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="task (avg: unweighted mean of the tasks)")
    fig.update_yaxes(title="accuracy (%) with 95% interval", range=[0, 100])
    return _layout(fig, title, height=460)  # the top margin holds the title and the legend as it wraps


def perplexity_bars(table: pd.DataFrame, title: str | None = None) -> go.Figure:
    """Perplexity per method on a log scale, one group per window length (`ppl@<seq_len>` columns), with its
    95% bootstrap interval over windows as error bars where the rows have one (`low:`/`high:` columns)."""
    columns = [c for c in table.columns if c.startswith("ppl") and table[c].notna().any()]
    if table.empty or not columns:
        return empty_figure("No perplexity in these runs")
    fig = go.Figure()
    names = [c.replace("ppl@", "window ") + (" tokens" if "@" in c else "") for c in columns]
    for row in table.to_dict("records"):
        values = [row.get(c) for c in columns]
        error_y = interval_error_bars(values, [row.get(f"low:{c}") for c in columns],
                                      [row.get(f"high:{c}") for c in columns])
        fig.add_trace(go.Bar(x=names, y=[None if v is None or pd.isna(v) else float(v) for v in values],
                             name=method_label(row.get("method")), marker_color=method_color(row.get("method")),
                             text=[_ppl_text(v) for v in values], textposition="outside", error_y=error_y,
                             customdata=[format_ppl(v, row.get(f"low:{c}"), row.get(f"high:{c}"))
                                         for v, c in zip(values, columns, strict=True)],
                             hovertemplate="%{x}: perplexity %{customdata}<extra>" + str(row.get("method"))
                                           + "</extra>"))
    fig.update_layout(barmode="group")
    shown = [f"{part}{c}" for c in columns for part in ("", "low:", "high:") if f"{part}{c}" in table]
    values = table[shown].apply(pd.to_numeric, errors="coerce").to_numpy(dtype="float64").ravel()
    values = values[np.isfinite(values) & (values > 0)]
    # bars rise from a floor well under the smallest value, so that close perplexities stay visible
    span = [math.log10(values.min()) - 0.6, math.log10(values.max()) + 0.35] if len(values) else None
    fig.update_xaxes(title="perplexity window (wiki eval split)")
    # Plotly labels minor log ticks with a bare digit ("2", "5"): round values written out instead, 1-2-5 under
    # three decades, powers of ten above
    ticks = log_ticks(*span, mantissas=(1, 2, 5) if span[1] - span[0] < 3 else (1,)) if span else []
    fig.update_yaxes(title="perplexity (log scale, lower is better)", type="log", range=span,
                     tickvals=[v for v, _ in ticks] or None, ticktext=[t for _, t in ticks] or None)
    return _layout(fig, title, height=420)


def interval_error_bars(values: Sequence[float | None], lows: Sequence[float | None],
                        highs: Sequence[float | None]) -> dict | None:
    """Plotly `error_y` from stored interval bounds (a perplexity's bootstrap interval), asymmetric, in the
    values' unit (on a log axis too: Plotly draws data-space bars there). None if no value has both bounds."""
    plus, minus = [], []
    for value, low, high in zip(values, lows, highs, strict=True):
        if any(x is None or pd.isna(x) for x in (value, low, high)):
            plus.append(None)
            minus.append(None)
            continue
        plus.append(float(high) - float(value))
        minus.append(float(value) - float(low))
    if all(v is None for v in plus):
        return None
    return dict(type="data", symmetric=False, array=plus, arrayminus=minus, thickness=1.3, width=4)


def log_ticks(low: float, high: float, mantissas: Sequence[float] = (1, 2, 5)) -> list[tuple[float, str]]:
    """The values m * 10**k (m in `mantissas`) between 10**low and 10**high with short labels (20k, 50k, 1M);
    on a range too short for three of them (40 to 60), every integer mantissa, then every half one."""
    for choice in (mantissas, range(1, 10), [m / 2 for m in range(2, 20)]):
        ticks = []
        for exponent in range(math.floor(low), math.ceil(high) + 1):
            for mantissa in choice:
                value = mantissa * 10.0 ** exponent
                if 10 ** low * (1 - 1e-9) <= value <= 10 ** high * (1 + 1e-9):  # the ends count (log10 rounds)
                    ticks.append((value, _short_number(value)))
        if len(ticks) >= 3:
            break
    return ticks


def _short_number(value: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value:g}"


def _ppl_text(value) -> str | None:
    if value is None or pd.isna(value):
        return None
    return f"{float(value):,.0f}" if float(value) >= 100 else f"{float(value):.2f}"


def disagreement_bars(summary: pd.DataFrame, label_a: str, label_b: str, title: str | None = None) -> go.Figure:
    """Per task: the two models' accuracies (bars) and their disagreement (% of the shared documents) as a
    marker, each with its 95% Wilson interval."""
    if summary.empty:
        return empty_figure("No shared documents")
    n = list(summary["n_shared"])
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    # three bars side by side per task (offset groups), the disagreement one on its own axis
    fig.add_trace(go.Bar(x=summary["task"], y=100 * summary["acc_a"], name=f"accuracy A: {label_a}",
                         marker_color=METHOD_COLORS[BASE], offsetgroup="a",
                         error_y=wilson_error_bars(list(summary["acc_a"]), n)))
    fig.add_trace(go.Bar(x=summary["task"], y=100 * summary["acc_b"], name=f"accuracy B: {label_b}",
                         marker_color=METHOD_COLORS["feature"], offsetgroup="b",
                         error_y=wilson_error_bars(list(summary["acc_b"]), n)))
    fig.add_trace(go.Bar(x=summary["task"], y=summary["disagreement"], name="disagreement (right axis)",
                         marker=dict(color="rgba(214,39,40,0.25)", line=dict(color="#d62728", width=2)),
                         offsetgroup="d", error_y=wilson_error_bars(list(summary["disagreement"] / 100), n)),
                  secondary_y=True)
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="task (error bars: 95% interval)")
    fig.update_yaxes(title="accuracy (%)", range=[0, 100], secondary_y=False)
    fig.update_yaxes(title="disagreement (% of documents)", range=[0, 100], secondary_y=True, showgrid=False)
    return _layout(fig, title, height=400)


# y-axis titles: short enough to fit the chart's height (the page's caption says what each score is)
BIAS_METRICS = {"LMS": "LMS (%, higher is better)", "SS": "SS (%, 50 is unbiased)",
                "ICAT": "ICAT (0-100, higher is better)"}


def bias_bars(summary: pd.DataFrame, metric: str = "ICAT", colors: Mapping[str, str] | None = None,
              title: str | None = None) -> go.Figure:
    """Grouped bars: one StereoSet metric per bias type, one bar per model (`model` column), with the 95%
    interval (`<metric>_low`, `<metric>_high`) as error bars and n in the hover. Pass one sentence type's
    rows; a bias type without examples keeps its place on the axis with no bar."""
    if summary.empty:
        return empty_figure("No bias results yet")
    fig = go.Figure()
    for i, (model, part) in enumerate(summary.groupby("model", sort=False)):
        color = (colors or {}).get(model) or OTHER_COLORS[i % len(OTHER_COLORS)]
        value = part[metric].astype(float)
        error = None
        if f"{metric}_low" in part and f"{metric}_high" in part:
            error = dict(type="data", symmetric=False, array=(part[f"{metric}_high"] - value).tolist(),
                         arrayminus=(value - part[f"{metric}_low"]).tolist(), color="#444", thickness=1.2)
        n = part["n"] if "n" in part else pd.Series([None] * len(part))
        fig.add_trace(go.Bar(x=part["bias_type"], y=value, name=str(model), marker_color=color, error_y=error,
                             customdata=np.stack([part.get(f"{metric}_low", value), part.get(f"{metric}_high", value),
                                                  n], axis=-1),
                             hovertemplate="%{x}: %{y:.2f} [%{customdata[0]:.2f}, %{customdata[1]:.2f}], "
                                           "n=%{customdata[2]}<extra>" + str(model) + "</extra>"))
    if metric == "SS":
        fig.add_hline(y=50, line=dict(color="#7f7f7f", dash="dash"), annotation_text="unbiased (SS = 50)",
                      annotation_position="top left")
    fig.update_layout(barmode="group")
    fig.update_xaxes(title="bias type")
    fig.update_yaxes(title=BIAS_METRICS.get(metric, metric) + ", 95% interval")
    return _layout(fig, title, height=400)
