"""Refuse evaluations that read rows a compressed model was calibrated or searched on (`sfsd.data.leakage`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from torch import nn

from sfsd.data.leakage import Rows, check_no_leak, saved_record


def _calibrated(method: str | None) -> bool:
    if not method:
        return True
    from sfsd.decompose import get_method

    try:
        return get_method(method).needs_calibration
    except Exception:  # an unknown (newer) method: assume it read calibration data
        return True


def refuse_model_leaks(model: nn.Module, targets: Iterable[tuple[str, Rows]]) -> None:
    """Check an in-memory model by the record its config carries (`config.sfsd`, set when compressed)."""
    config = getattr(model, "config", None)
    check_no_leak(getattr(config, "sfsd", None), targets, _calibrated(getattr(config, "sfsd_method", None)))


def refuse_folder_leaks(model: str | Path, targets: Iterable[tuple[str, Rows]]) -> None:
    """The same check on a saved folder's config.json, before the model is loaded."""
    record, method = saved_record(model)
    check_no_leak(record, targets, _calibrated(method))


def task_targets(tasks: list[str] | str | None, split: str, suite: str) -> list[tuple[str, Rows]]:
    """(what is evaluated, rows) of an lm-eval request; `tasks=None`: the whole suite."""
    from sfsd.data import OFFLINE_TASKS
    from sfsd.data.leakage import task_eval_rows
    from sfsd.evaluate.tasks import PAPER_TASKS

    if isinstance(tasks, str):
        tasks = tasks.split(",")
    names = [t.strip() for t in tasks or [] if t.strip()] or list(PAPER_TASKS if suite == "paper" else OFFLINE_TASKS)
    where = "" if suite == "paper" else f" --split {split}"
    return [(f"--suite {suite} {t}{where}", task_eval_rows(suite, t, split)) for t in names]
