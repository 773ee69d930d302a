"""The sentence at the top of a page: what its data say, every number computed from the frame the page draws
(with n and the 95% interval where the page shows one). Pure functions of frames: no store read, no Streamlit."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from sfsd.evaluate.intervals import wilson_interval


def _name(model: str) -> str:
    return Path(str(model)).name or str(model)


def _who(method: str, kind: str, count: int = 1) -> str:
    noun = ("search" if kind == "search" else "uniform run") + ("" if count == 1 else
                                                                 ("es" if kind == "search" else "s"))
    return f"{method} {noun}"


def block_shares(layers: pd.DataFrame) -> pd.Series:
    """Per block: the share of its decided layers' parameters kept (sum kept / sum full), blocks in order."""
    decided = layers[layers["decided"].astype(bool)]
    if decided.empty:
        return pd.Series(dtype="float64")
    kept = pd.to_numeric(decided["params_kept"], errors="coerce").astype("float64")
    full = pd.to_numeric(decided["params_full"], errors="coerce").astype("float64")
    frame = pd.DataFrame({"block": decided["block"].astype(int), "kept": kept, "full": full}).dropna()
    sums = frame.groupby("block").sum()
    return (sums["kept"] / sums["full"]).sort_index()


def _cut_most(shares: pd.Series, what: str = "kept") -> str:
    """'block 2 cut most (71% of its parameters kept)', or '' when every block is whole."""
    if shares.empty or shares.min() >= 1:
        return ""
    low = shares.min()
    blocks = [int(b) for b in shares.index[shares <= low + 1e-12]]
    named = f"block {blocks[0]}" if len(blocks) == 1 else "blocks " + ", ".join(map(str, blocks))
    return f"{named} cut most ({100 * low:.0f}% of {'its' if len(blocks) == 1 else 'their'} parameters {what})"


def heatmap_headline(runs: Sequence[tuple[str, str, str, pd.DataFrame, float | None]]) -> str:
    """runs: (method, kind, model, layers frame, overall budget or None) of one run, or of several runs of one
    method on one model (the page averages nothing else). One run: how many layers stayed at full rank, which
    block was cut most, the overall budget; several: the same on the mean of their per-block shares, with the
    range of their budgets."""
    if not runs:
        return ""
    method, kind, model = runs[0][0], runs[0][1], _name(runs[0][2])
    if len(runs) == 1:
        _, _, _, layers, budget = runs[0]
        decided = layers[layers["decided"].astype(bool)]
        parts = [f"{int(decided['intact'].astype(bool).sum())} of {len(layers)} layers kept at full rank"
                 + (f" ({len(decided)} decided)" if len(decided) < len(layers) else "")]
        cut = _cut_most(block_shares(layers))
        parts += [cut] if cut else ["no layer cut"]
        if budget is not None and not pd.isna(budget):
            parts.append(f"overall budget {100 * budget:.1f}%")
        return f"{_who(method, kind)} on {model}: " + ", ".join(parts) + "."
    shares = pd.concat([block_shares(layers) for *_, layers, _ in runs], axis=1).mean(axis=1)
    parts = [_cut_most(shares, "kept on average") or "no layer cut"]
    budgets = [100 * b for *_, b in runs if b is not None and not pd.isna(b)]
    if budgets:
        parts.append(f"overall budget {sum(budgets) / len(budgets):.1f}% on average"
                     + (f" (range {min(budgets):.1f}-{max(budgets):.1f}%, {len(budgets)} runs)"
                        if len(budgets) > 1 else ""))
    return f"Mean of {len(runs)} {_who(method, kind, len(runs))} on {model}: " + ", ".join(parts) + "."


def energy_kept(spectrum: pd.DataFrame, rank: int) -> dict[str, float]:
    """{kind: share of that spectrum's energy (sum of its positive values) in its top `rank` components}."""
    out = {}
    for kind in sorted(dict.fromkeys(spectrum["kind"]), key=lambda k: (k == "weight", k)):  # the figure's order
        values = pd.to_numeric(spectrum[spectrum["kind"] == kind].sort_values("index")["value"]).clip(lower=0)
        total = float(values.sum())
        out[kind] = float(values.iloc[:rank].sum()) / total if total > 0 else float("nan")
    return out


def spectra_headline(layer: str, spectrum: pd.DataFrame, rank: int | None, d_in: int, d_out: int,
                     intact: bool) -> str:
    """At the run's chosen rank (a layer without one: the rank of beta 0.5, Eq. 3), the share of each stored
    spectrum's energy that the top components hold, from the spectrum frame the page draws."""
    from sfsd.decompose import rank_for_budget

    if spectrum.empty:
        return f"{layer}: no spectrum stored."
    if rank is not None:
        why = f"the chosen rank r={rank}"
    else:
        rank = rank_for_budget(0.5, int(d_in), int(d_out))
        why = f"r={rank} (beta 0.5; the search " + ("kept this layer intact)" if intact else "has not decided it)")
    kept = [f"{100 * share:.1f}% of the {kind} spectrum's energy" for kind, share in energy_kept(spectrum, rank).items()
            if not pd.isna(share)]
    return f"{layer}: at {why}, the top components hold " + (" and ".join(kept) or "no energy") + "."


def _proportion(value: float, n: float | None) -> str:
    """'62.5% [30.6, 86.3] (n=8)', or '62.5%' without a count."""
    if n is None or pd.isna(n) or n <= 0:
        return f"{100 * value:.1f}%"
    low, high = wilson_interval(value * int(n), int(n))
    return f"{100 * value:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={int(n)})"


def accuracy_headline(curves: Sequence[tuple[str, pd.DataFrame]], column: str,
                      metric_label: str = "the search metric") -> str:
    """curves: (run label, its frame as drawn: `step`, `params`, `column` and, for an accuracy, `n:<task>`; step 0
    is the base model). Per run, at its last point: the share of the base model's parameters left and the value
    there (with its 95% interval and n), against the base model's on the same documents."""
    accuracy = column != "metric"
    what = f"{column.split(':', 1)[1]} {column.split(':', 1)[0]}" if accuracy else metric_label
    n_col = "n:" + column.split(":", 1)[1] if accuracy else ""

    def value(row: pd.Series) -> str:
        if not accuracy:
            return f"{float(row[column]):.4g}"
        return _proportion(float(row[column]), row[n_col] if n_col in row else None)

    sentences = []
    for label, frame in curves:
        if frame.empty:
            continue
        last, base = frame.iloc[-1], frame[frame["step"] == 0]
        if base.empty:
            where = f"at {float(last['params']) / 1e6:,.2f}M parameters (step {int(last['step'])})"
        else:
            where = f"at {100 * float(last['params']) / float(base['params'].iloc[0]):.0f}% of the parameters"
        text = f"{where}, {label} {'keeps' if accuracy else 'has'} {what} at {value(last)}"
        if not base.empty and int(last["step"]) != 0:
            text += f" (base model {value(base.iloc[0])})"
        sentences.append(text)
    if not sentences:
        return ""
    text = "; ".join(sentences)
    return text[0].upper() + text[1:] + "."


def disagreement_headline(summary: pd.DataFrame, label_a: str, label_b: str) -> str:
    """Per task of `sfsd.evaluate.disagreement`'s table: the share of A's answers B changes, with its 95% Wilson
    interval and n, and both accuracies."""
    sentences = []
    for row in summary.itertuples():
        n = int(row.n_shared)
        changed = _proportion(row.n_differ / n, n).replace(f" (n={n})", "")
        sentences.append(f"{label_b} changes {changed} of {label_a}'s answers on {row.task} (n={n}; accuracy "
                         f"{100 * row.acc_a:.1f}% → {100 * row.acc_b:.1f}%)")
    return "; ".join(sentences) + "." if sentences else ""


def bias_headline(part: pd.DataFrame, kind: str, metric: str = "ICAT") -> str:
    """The overall `metric` of each model for one sentence type, with its 95% bootstrap interval and n, from the
    StereoSet summary rows the page shows (a `model` column)."""
    overall = part[(part["type"] == kind) & (part["bias_type"] == "overall")]
    if overall.empty:
        return ""
    shown = []
    for row in overall.to_dict("records"):
        if pd.isna(row[metric]):
            shown.append(f"{row['model']} — (n=0)")
            continue
        interval = "" if pd.isna(row.get(f"{metric}_low")) else \
            f" [{row[f'{metric}_low']:.1f}, {row[f'{metric}_high']:.1f}]"
        shown.append(f"{row['model']} {row[metric]:.1f}{interval} (n={int(row['n'])})")
    return f"{kind} {metric}, all domains: " + " vs ".join(shown) + "."


def broken_line(name: str, facts: Mapping) -> str:
    """A warning line for a model whose perplexity is far above its base model's (`data.perplexity_vs_base`)."""
    return (f"{name} looks broken: perplexity {facts['ppl']:,.1f} ({facts['where']}) is {facts['ratio']:,.0f}x the "
            f"base model's {facts['base']:,.2f}; its answers say little about its method.")
