"""One run as a single self-contained HTML file: its figures (Plotly, JavaScript inlined once) and tables."""

from __future__ import annotations

import html
import json

import numpy as np
import pandas as pd

from sfsd.dashboard import data, headlines, plots
from sfsd.dashboard.data import RunView, uniform_row
from sfsd.evaluate import disagreement
from sfsd.evaluate.stereoset import BOOTSTRAP_RESAMPLES, display_table, thin_cells

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1200px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
pre { background: #f7f7f7; padding: 0.8rem; overflow-x: auto; font-size: 0.8rem; }
.facts td { text-align: left; } .note { color: #666; font-size: 0.85rem; }
.wide { overflow-x: auto; }
"""
MAX_SPECTRUM_POINTS = 256


def thin_spectra(spectra: pd.DataFrame, points: int = MAX_SPECTRUM_POINTS) -> pd.DataFrame:
    """At most `points` components per (layer, kind), log-spaced, so that the report stays small."""
    if spectra.empty:
        return spectra
    keep = []
    for _, part in spectra.groupby(["layer", "kind"], sort=False):
        n = len(part)
        if n <= points:
            keep.append(part)
            continue
        index = np.unique(np.geomspace(1, n, points).astype(int) - 1)
        keep.append(part.sort_values("index").iloc[index])
    return pd.concat(keep, ignore_index=True)


class _Builder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.plotly_included = False

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, cls: str = "") -> None:
        self.parts.append(f'<p class="{cls}">{html.escape(text)}</p>')

    def figure(self, fig) -> None:
        include = "inline" if not self.plotly_included else False
        self.plotly_included = True
        self.parts.append(fig.to_html(full_html=False, include_plotlyjs=include, config={"displaylogo": False}))

    def table(self, frame: pd.DataFrame, float_format: str = "{:.4g}") -> None:
        if frame.empty:
            self.text("(empty)", "note")
            return
        shown = frame.copy()
        for column in shown.columns:
            if pd.api.types.is_datetime64_any_dtype(shown[column]):
                shown[column] = shown[column].astype(str)
        # a table wider than the page (the dashboard's preview at 1000 px) scrolls on its own, the page does not
        table = shown.to_html(index=False, na_rep="—", float_format=float_format.format, border=0)
        self.parts.append(f'<div class="wide">{table}</div>')

    def facts(self, rows: list[tuple[str, object]]) -> None:
        body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
        self.parts.append(f'<table class="facts">{body}</table>')

    def pre(self, text: str) -> None:
        self.parts.append(f"<pre>{html.escape(text)}</pre>")

    def document(self, title: str) -> str:
        return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
                + "\n".join(self.parts) + "</body></html>\n")


def build_report(view: RunView, spectra: pd.DataFrame, uniform_rows: pd.DataFrame | None = None) -> str:
    """The HTML report of one run (`spectra`: its stored spectra, any size; they are thinned)."""
    out = _Builder()
    out.heading(f"sfsd run {view.run_id}", 1)
    status, result = view.status, view.result or {}
    facts: list[tuple[str, object]] = [
        ("run", view.label), ("kind", view.kind), ("model", view.model), ("method", plots.method_label(view.method)),
        ("state", view.state), ("created", view.config.get("created")), ("finished", status.get("finished")),
    ]
    if view.origin:
        facts.append(("origin", view.origin))
    if view.kind == "search":
        facts += [("metric", view.metric_label), ("tolerance", view.tolerance),
                  ("layers decided", f"{status.get('layers_done') or 0} of {status.get('layers_total') or '?'}"),
                  ("trials", status.get("trials_done"))]
    for key in ("overall_budget", "params", "base_params", "macs", "base_metric", "final_metric"):
        if result.get(key) is not None:
            value = result[key]
            facts.append((key, f"{100 * value:.2f}%" if key == "overall_budget" else
                          f"{value:,}" if isinstance(value, int) else f"{value:.6g}"))
    if view.heldout:
        facts.append(("held-out check (search vs eval split)", view.heldout))
    out.facts(facts)

    if view.kind == "search":
        _search_sections(out, view, spectra)
        _frontier_section(out, view)
    else:
        _uniform_sections(out, view, uniform_rows)

    out.heading("Config")
    out.pre(json.dumps({k: v for k, v in view.config.items() if k != "layers"}, indent=2, default=str))
    out.text("Generated by the sfsd dashboard (plots: Plotly; hover for values, the toolbar saves PNG).", "note")
    return out.document(f"sfsd run {view.run_id}")


def _search_sections(out: _Builder, view: RunView, spectra: pd.DataFrame) -> None:
    out.heading("Budget per layer (Figure 3)")
    out.figure(plots.budget_heatmap(plots.heatmap_cells(view.layers), view.label))
    if not view.snapshots.empty:
        out.heading("Metric versus parameters (Figures 1-2)")
        snaps = view.snapshots.dropna(subset=["metric"]).sort_values("step")
        curves = [plots.Curve(view.label, view.method, list(snaps["params"] / 1e6), list(snaps["metric"]))]
        task_columns = [c for c in snaps.columns if c.startswith("acc:")]
        base = snaps[snaps["step"] == 0]["metric"]
        out.figure(plots.metric_vs_params(curves, view.metric_label,
                                          baselines=[("base model", float(base.iloc[0]))] if not base.empty else []))
        for column in task_columns:
            part = snaps.dropna(subset=[column])
            rates = data.reference_rates(column.split(":", 1)[1], data.snapshot_documents([part], column))
            out.figure(plots.metric_vs_params(
                [plots.Curve(view.label, view.method, list(part["params"] / 1e6), list(100 * part[column]),
                             error_y=plots.wilson_error_bars(list(part[column]), list(data.counts(part, column))))],
                f"{column.replace(':', ' ')} (%, 95% interval), eval split",
                references={f"majority class ({rates['majority_label']})": 100 * rates["majority"],
                            "chance": 100 * rates["chance"]}))
    if not view.trials.empty:
        out.heading("Search trace")
        out.figure(plots.search_trace(view.trials, view.metric_label))
    if not spectra.empty:
        out.heading("Spectra per role")
        out.text("Each panel: one block; the method's spectrum and the squared singular values of W (log scale), "
                 f"at most {MAX_SPECTRUM_POINTS} log-spaced components per curve; solid line: the chosen rank.",
                 "note")
        thin = thin_spectra(spectra)
        for role in plots.ordered_roles(thin["role"].unique()):
            ranks = {int(r.block): (None if pd.isna(r.rank) else int(r.rank))
                     for r in view.layers[view.layers["role"] == role].itertuples()}
            out.figure(plots.spectra_grid(thin[thin["role"] == role], ranks, view.method, title=f"role {role}"))
    out.heading("Layers")
    out.table(view.layers)
    if not view.snapshots.empty:
        out.heading("Snapshots")
        out.text("Accuracies in % with their 95% Wilson interval; n:<task> is the number of documents.", "note")
        out.table(data.snapshot_table([view.snapshots]))  # the Accuracy page's units: M parameters, budget in %


def _frontier_section(out: _Builder, view: RunView) -> None:
    """For a target-budget run (or an evaluated Algorithm 1 search): the frontier of its model, this run
    among the points, as on the Frontier page."""
    from sfsd.dashboard import frontier

    points = frontier.points(view.model)
    if points.empty or view.run_id not in set(points["run_id"]):
        return
    out.heading("Budget-quality frontier")
    out.text(f"Every frontier point of model {view.model} in this store (this run: {view.run_id}); eval split.", "note")
    for column in frontier.ppl_columns(points):
        out.figure(frontier.frontier_figure(points, column))
    for task in frontier.task_columns(points):
        out.figure(frontier.accuracy_figure(points, task))
    out.text(data.PPL_NOTE, "note")
    out.table(frontier.display_table(points))


def _uniform_sections(out: _Builder, view: RunView, uniform_rows: pd.DataFrame | None) -> None:
    row = pd.DataFrame([uniform_row(view)])
    rows = uniform_rows if uniform_rows is not None and not uniform_rows.empty else row
    out.heading("Results (Table 1)")
    for note in data.table1_warnings(rows):
        out.text(f"Warning: {note}", "note")
    out.table(data.table1_text(rows))
    out.text(f"{data.PPL_NOTE} Accuracy in % with its 95% Wilson interval (average: normal interval of the mean); "
             "n = documents per task. SVD-LLM and feature-uncentred (uncentred, no bias) give identical outputs by "
             "theory.", "note")
    out.figure(plots.perplexity_bars(rows, "Perplexity (log scale)"))
    out.figure(plots.accuracy_bars(rows, "Accuracy per task with 95% intervals; dashes: majority class and chance",
                                   references=data.task_references(rows)))
    out.heading("Evaluations")
    out.text(data.PPL_NOTE, "note")
    out.table(data.evaluations_text(view.evaluations))


# A disagreement comparison: (label of A, label of B, `sfsd.evaluate.disagreement`'s table); a bias comparison:
# (examples per domain and sentence type, StereoSet summary rows with a `model` column).
Disagreement = tuple[str, str, pd.DataFrame]
Bias = tuple[int, pd.DataFrame]


def model_comparisons(model: str, disagreements: dict, bias: dict,
                      metric: str = "acc") -> tuple[list[Disagreement], list[Bias]]:
    """The comparisons made on the Disagreement and Bias pages (their session results: {(model A, model B,
    tasks, limit): (records A, records B)} and {(models, per cell): summary}) that involve `model` or a model
    compressed from it."""
    pairs = [(data.model_display(a), data.model_display(b), disagreement(records_a, records_b, metric))
             for (a, b, *_), (records_a, records_b) in disagreements.items()
             if data.of_model(a, model) or data.of_model(b, model)]
    scored = [(int(per_cell), summary) for (models, per_cell), summary in bias.items()
              if any(data.of_model(m, model) for m in models)]
    return pairs, scored


def build_model_report(model: str, disagreements: list[Disagreement] = (), bias: list[Bias] = ()) -> str:
    """The HTML report of one model: every Table 1 protocol run on it, its budget-quality frontier and the
    disagreement and bias comparisons given (`model_comparisons`), each with its headline, intervals and
    protocol (what the Weight vs feature, Frontier, Disagreement and Bias pages show)."""
    from sfsd.dashboard import frontier

    out = _Builder()
    name = data.model_display(model)
    out.heading(f"sfsd model report: {name}", 1)
    uniform = data.uniform_frame()
    protocols = [p for p in data.table1_protocols(uniform) if p["model"] == model]
    points = frontier.points(model)
    out.facts([("model", model), ("Table 1 protocols", len(protocols)),
               ("frontier points", int((points["strategy"] != "base").sum()) if not points.empty else 0)])
    for protocol in protocols:
        rows = data.table1_rows(uniform, **protocol)
        out.heading(f"Table 1: {data.protocol_label(protocol)}")
        headline = data.table1_headline(rows)
        if headline:
            out.text(headline)
        for note in data.table1_warnings(rows):
            out.text(f"Warning: {note}", "note")
        out.table(data.table1_text(rows))
        out.text(f"{data.PPL_NOTE} Accuracy in % with its 95% Wilson interval; n = documents per task.", "note")
        out.figure(plots.perplexity_bars(rows, "Perplexity (log scale)"))
        out.figure(plots.accuracy_bars(rows, "Accuracy per task with 95% intervals; dashes: majority class and chance",
                                       references=data.task_references(rows)))
    if not points.empty and (points["strategy"] != "base").any():
        out.heading("Budget-quality frontier")
        for column in frontier.ppl_columns(points):
            headline = frontier.frontier_headline(points, column)
            if headline:
                out.text(headline)
            out.figure(frontier.frontier_figure(points, column))
            _, left_out = frontier.one_protocol(points, column)
            if left_out:
                out.text(left_out, "note")
            broken = frontier.broken_note(points, column)
            if broken:
                out.text(f"Warning: {broken}", "note")
        for task in frontier.task_columns(points):
            out.figure(frontier.accuracy_figure(points, task))
        out.text(data.PPL_NOTE, "note")
        out.table(frontier.display_table(points))
    if not protocols and (points.empty or not (points["strategy"] != "base").any()):
        out.text("No Table 1 protocol and no frontier point of this model in this store yet.", "note")
    _disagreement_sections(out, disagreements)
    _bias_sections(out, bias)
    out.text("Generated by the sfsd dashboard (plots: Plotly).", "note")
    return out.document(f"sfsd model report: {name}")


def _disagreement_sections(out: _Builder, comparisons: list[Disagreement]) -> None:
    out.heading("Prediction disagreement (Table 3)")
    if not comparisons:
        out.text("No disagreement comparison of this model yet: make one on the Disagreement page (it joins this "
                 "report in the same browser session).", "note")
        return
    for label_a, label_b, summary in comparisons:
        out.heading(f"{label_b} against {label_a}", 3)
        out.text(headlines.disagreement_headline(summary, label_a=label_a, label_b=label_b))
        out.table(data.disagreement_text(summary))
        out.figure(plots.disagreement_bars(summary, label_a, label_b))
    out.text("Eval split, zero-shot through lm-eval, prediction = highest log-likelihood (acc). Intervals: Wilson "
             "95% for the accuracies and the disagreement; the delta's is the paired 95% interval.", "note")


def _bias_sections(out: _Builder, comparisons: list[Bias]) -> None:
    out.heading("Bias: StereoSet (Table 2), intrasentence")
    if not comparisons:
        out.text("No bias comparison of this model yet: score it on the Bias page (it joins this report in the same "
                 "browser session).", "note")
        return
    for per_cell, summary in comparisons:
        part = summary[summary["type"] == "intrasentence"]
        out.heading(f"Up to {per_cell} examples per domain and sentence type (seeded stratified sample)", 3)
        out.text(headlines.bias_headline(part, "intrasentence"))
        notes = thin_cells(part)
        if notes:
            out.text("Read with care: " + "; ".join(notes) + ".", "note")
        out.table(display_table(part, digits=2))
        out.figure(plots.bias_bars(part, "ICAT"))
    out.text(f"[low, high]: 95% percentile bootstrap over examples ({BOOTSTRAP_RESAMPLES} resamples, seeded); n: "
             "examples in the cell. Intrasentence only: the type comparable with published numbers.", "note")
