"""Per-example comparison of two models' multiple-choice records (e.g. base vs compressed)."""

from __future__ import annotations

import pandas as pd

from sfsd.errors import SfsdError

DISAGREEMENT_COLUMNS = ["task", "n_shared", "acc_a", "acc_b", "delta", "disagreement"]
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
    """Per task, over the doc ids both record sets share: accuracies, delta (b - a) and
    disagreement (percent of shared documents whose predicted choice differs)."""
    pred = _pred_column(metric)
    tasks = [t for t in dict.fromkeys(records_a["task"]) if t in set(records_b["task"])]
    rows = []
    for task in tasks:
        both = _shared(records_a, records_b, task, pred)
        n = len(both)
        if n == 0:
            continue
        acc_a = float((both["pred_a"] == both["gold"]).mean())
        acc_b = float((both["pred_b"] == both["gold"]).mean())
        differ = float((both["pred_a"] != both["pred_b"]).mean())
        rows.append(
            {
                "task": task,
                "n_shared": n,
                "acc_a": acc_a,
                "acc_b": acc_b,
                "delta": acc_b - acc_a,
                "disagreement": 100.0 * differ,
            }
        )
    return pd.DataFrame(rows, columns=DISAGREEMENT_COLUMNS)


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
