"""The budget-quality frontier as a table: one row per finished target-budget run (and per base model run).

Base models are the `uniform` runs of method "none" (what `sfsd frontier` stores), with strategy "base".
A target-budget run in compact factors is a point of its own line, "<strategy> compact"; one whose final
model is built with another calibration stream too ("<strategy> anchored", "<strategy> compact anchored").
Algorithm 1 searches (a tolerance, no target) whose final model was evaluated on the eval split are points
with strategy "Algorithm 1" and their tolerance; a search's own held-out check (its final and base model on the
eval split, `result.heldout`) counts as such an evaluation, and gives a base point too. The uniform runs of a
whole-model method (SliceGPT) are points of a line of their own, the method's name as strategy, at their
parameter-equivalent overall budget.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from sfsd.errors import SfsdError
from sfsd.options import OPEN_LOOP
from sfsd.runs.frames import _frame, ppl_cells
from sfsd.runs.store import RunStore

FRONTIER_COLUMNS = ["model", "strategy", "method", "target", "tolerance", "overall_budget", "params", "macs",
                    "ppl@128", "ppl@2048", "run_id"]
_DTYPES = {"target": "float64", "tolerance": "float64", "overall_budget": "float64", "params": "Int64",
           "macs": "Int64", "ppl@128": "float64", "ppl@2048": "float64"}
ALG1 = "Algorithm 1"
_FROM_HELDOUT = "_from_heldout"  # a point made from its search's own held-out check (removed before the frame)


def frontier_frame(root: Path | None = None, model: str | None = None) -> pd.DataFrame:
    """Points (FRONTIER_COLUMNS, then `ppl@<n>` of other lengths, each perplexity's `low:`, `high:` and `tokens:`
    (`sfsd.runs.frames.ppl_cells`), and `acc:<task>`, `n:<task>` columns),
    sorted by model, strategy, method and budget. Runs that are not done, or cannot be read, are left out."""
    store = RunStore(root)
    rows = []
    for run_id in store.ids():
        try:
            run = store.run(run_id)
            found = _points(run)
        except SfsdError:
            continue
        rows.extend(row for row in found if model is None or row["model"] == model)
    frame = _frame(rows, FRONTIER_COLUMNS, _DTYPES)
    return frame.sort_values(["model", "strategy", "method", "overall_budget"], kind="stable").reset_index(drop=True)


def _tolerance(config: dict, result: dict, strategy: str) -> float | None:
    """A plain Algorithm 1 search's tolerance, or the tolerance whose run a target-budget alg1 stopped at B."""
    if strategy == ALG1:
        return (config.get("metric") or {}).get("tolerance")
    if strategy == "alg1":
        return (result.get("allocation") or {}).get("tolerance")
    return None


def _whole_model(method: str | None) -> bool:
    from sfsd.decompose import METHODS

    return method in METHODS.names() and METHODS.get(method).whole_model


def _target(config: dict, result: dict, strategy: str) -> float | None:
    """The target budget of a point: a search's, 1 for the base model, a whole-model baseline's beta when its
    parameters were matched on every block (`sfsd frontier --baselines`), else none."""
    if strategy == "base":
        return 1.0
    if config.get("kind") == "uniform":
        return config.get("beta") if config.get("last_blocks") == result.get("blocks") else None
    return config.get("target_budget")


def _points(run) -> list[dict]:
    """A run's point, and for an Algorithm 1 search whose perplexity is its own held-out check's, that check's base
    model as a base point of the same protocol."""
    row = _point(run)
    if row is None:
        return []
    base = _heldout_base(run, row) if row.pop(_FROM_HELDOUT, False) else None
    return [row] if base is None else [row, base]


def _heldout(run) -> dict:
    heldout = (run.result() or {}).get("heldout") or {}
    return heldout if heldout.get("metric") == "ppl" else {}


def _ppl_cells(entry: dict | None) -> dict:
    """The `ppl_cells` of one eval-split perplexity of a held-out check (value, interval, tokens)."""
    if not isinstance(entry, dict) or entry.get("split") != "eval" or entry.get("value") is None:
        return {}
    return ppl_cells({"ppl": entry["value"], "seq_len": entry.get("seq_len"), "ppl_low": entry.get("low"),
                      "ppl_high": entry.get("high"), "n_tokens": entry.get("n")})


def _heldout_base(run, row: dict) -> dict | None:
    cells = _ppl_cells(_heldout(run).get("base"))
    if not cells:
        return None
    return {"model": row["model"], "strategy": "base", "method": "none", "target": 1.0, "overall_budget": 1.0,
            "run_id": run.id, **cells}


def _point(run) -> dict | None:
    config = run.config
    is_search = config.get("kind") == "search"
    is_target = is_search and config.get("target_budget") is not None
    is_uniform = config.get("kind") == "uniform"
    is_base = is_uniform and config.get("method") == "none"
    is_baseline = is_uniform and _whole_model(config.get("method"))
    if not (is_search or is_base or is_baseline) or run.status()["state"] != "done":
        return None
    result = run.result() or {}
    strategy = config["strategy"] if is_target else ALG1 if is_search else config["method"] if is_baseline else "base"
    if is_target and config.get("factors") not in (None, "two-factor"):  # compact factors: a line of their own
        strategy = f"{strategy} {config['factors']}"
    if is_target and config.get("calibration_stream") not in (None, OPEN_LOOP):  # closed-loop/anchored: too
        strategy = f"{strategy} {config['calibration_stream']}"
    row = {"model": config["model"], "strategy": strategy, "method": config["method"],
           "target": _target(config, result, strategy),
           "tolerance": _tolerance(config, result, strategy),
           "overall_budget": result.get("overall_budget", 1.0), "params": result.get("params"),
           "macs": result.get("macs"), "run_id": run.id}
    evaluated = False
    for record in run.read_evaluations():
        if record.get("split") != "eval":
            continue
        evaluated = True
        metrics = record.get("metrics") or {}
        row["macs"] = row["macs"] if row["macs"] is not None else record.get("macs")
        if record.get("kind") == "ppl":
            row.update(ppl_cells(metrics))
        elif record.get("kind") == "task":
            row[f"acc:{record['task']}"] = metrics.get("acc")
            row[f"n:{record['task']}"] = metrics.get("n")
    if strategy == ALG1 and not any(column.startswith("ppl") for column in row):  # no perplexity evaluated: its
        cells = _ppl_cells(_heldout(run).get("final"))  # own held-out check's, else no point here (unless evaluated)
        if not cells and not evaluated:
            return None
        row.update(cells)
        row[_FROM_HELDOUT] = bool(cells)
    return row
