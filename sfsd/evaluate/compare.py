"""Per-example comparison of two models' multiple-choice records (e.g. base vs compressed)."""

from __future__ import annotations

import math

import pandas as pd

from sfsd.errors import SfsdError
from sfsd.evaluate.intervals import Z95, format_proportion

DISAGREEMENT_COLUMNS = ["task", "n_shared", "acc_a", "acc_b", "delta", "disagreement", "n_differ", "n_gained",
                        "n_lost"]
# disagreement_report: acc in %, delta in percentage points, disagreement in % of n, each "value [low, high]"
DISAGREEMENT_REPORT_COLUMNS = ["task", "n", "acc_a", "acc_b", "delta", "disagreement"]
FLIP_COLUMNS = ["doc_id", "gold", "pred_a", "pred_b", "direction"]
PRED = {"acc": "pred", "acc_norm": "pred_norm"}


def _pred_column(metric: str) -> str:
    if metric not in PRED:
        raise SfsdError(f"unknown metric {metric!r}: use acc or acc_norm")
    return PRED[metric]


def _shared(records_a: pd.DataFrame, records_b: pd.DataFrame, task: str, pred: str) -> pd.DataFrame:
    cols = ["doc_id", "gold", pred]
    a = records_a.loc[records_a["task"] == task, cols]
    b = records_b.loc[records_b["task"] == task, cols]
    both = a.merge(b, on="doc_id", suffixes=("_a", "_b"))
    if (both["gold_a"] != both["gold_b"]).any():
        raise SfsdError(f"task {task}: the two record sets disagree on gold labels (different data?)")
    return both.rename(columns={"gold_a": "gold", f"{pred}_a": "pred_a", f"{pred}_b": "pred_b"})


def disagreement(records_a: pd.DataFrame, records_b: pd.DataFrame, metric: str = "acc") -> pd.DataFrame:
    """Per task, over the doc ids both record sets share: accuracies, delta (b - a, a fraction) and
    disagreement (percent of shared documents whose predicted choice differs), with the counts behind
    them: n_differ (documents whose choice differs), n_gained (wrong in a, right in b), n_lost (right in a,
    wrong in b), from which `paired_delta_interval` gives the interval of the delta."""
    pred = _pred_column(metric)
    tasks = [t for t in dict.fromkeys(records_a["task"]) if t in set(records_b["task"])]
    rows = []
    for task in tasks:
        both = _shared(records_a, records_b, task, pred)
        n = len(both)
        if n == 0:
            continue
        right_a, right_b = both["pred_a"] == both["gold"], both["pred_b"] == both["gold"]
        acc_a, acc_b = float(right_a.mean()), float(right_b.mean())
        n_differ = int((both["pred_a"] != both["pred_b"]).sum())
        rows.append(
            {
                "task": task,
                "n_shared": n,
                "acc_a": acc_a,
                "acc_b": acc_b,
                "delta": acc_b - acc_a,
                "disagreement": 100.0 * n_differ / n,
                "n_differ": n_differ,
                "n_gained": int((~right_a & right_b).sum()),
                "n_lost": int((right_a & ~right_b).sum()),
            }
        )
    return pd.DataFrame(rows, columns=DISAGREEMENT_COLUMNS)


def paired_delta_interval(n_gained: int, n_lost: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% interval of acc_b - acc_a when both models answered the same n documents (paired: only the
    documents one model got right and the other wrong carry information: the Wald interval of a difference
    of paired proportions, as behind McNemar's test, clipped to [-1, 1]). n = 0 gives (nan, nan)."""
    if n <= 0:
        return float("nan"), float("nan")
    delta = (n_gained - n_lost) / n
    half = z * math.sqrt(max(0.0, (n_gained + n_lost) / n - delta * delta) / n)
    return max(-1.0, delta - half), min(1.0, delta + half)


def _direction(gold: int, pred_a: int, pred_b: int) -> str:
    if pred_a == gold:
        return "correct->wrong"
    return "wrong->correct" if pred_b == gold else "wrong->wrong"


def flips(records_a: pd.DataFrame, records_b: pd.DataFrame, task: str, metric: str = "acc") -> pd.DataFrame:
    """Documents of one task whose prediction changed from a to b, with the direction of the change.

    `doc_id` is the pack row id, so the result joins with the task rows (`sfsd.data.load_task`) to
    show the question and choices.
    """
    both = _shared(records_a, records_b, task, _pred_column(metric))
    changed = both[both["pred_a"] != both["pred_b"]].copy()
    changed["direction"] = [_direction(*row) for row in changed[["gold", "pred_a", "pred_b"]].itertuples(index=False)]
    return changed[FLIP_COLUMNS].reset_index(drop=True)


def disagreement_report(table: pd.DataFrame) -> pd.DataFrame:
    """`disagreement`'s table as text for people: n, each accuracy and the disagreement in % of n with its
    95% Wilson interval, the delta b - a in percentage points with its paired 95% interval."""
    rows = []
    for row in table.itertuples():
        n = int(row.n_shared)
        low, high = paired_delta_interval(int(row.n_gained), int(row.n_lost), n)
        rows.append({
            "task": row.task, "n": n,
            "acc_a": format_proportion(row.acc_a, n, scale=100, digits=1, show_n=False),
            "acc_b": format_proportion(row.acc_b, n, scale=100, digits=1, show_n=False),
            "delta": f"{100 * row.delta:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}]",
            "disagreement": format_proportion(row.n_differ / n, n, scale=100, digits=1, show_n=False),
        })
    return pd.DataFrame(rows, columns=DISAGREEMENT_REPORT_COLUMNS)
