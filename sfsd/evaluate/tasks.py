"""lm-eval task definitions: generated YAMLs over the offline pack, and the hub-based paper suite.

Offline suite: for each (task, split) the rows are written to a JSONL file in a content-addressed
folder under `<cache>/evals/lm_eval_tasks/`, next to a YAML `sfsd_<task>.yaml` that reads it with
datasets' local `json` builder (works with HF_DATASETS_OFFLINE=1). The task name is `sfsd_<task>`;
the split is chosen by the folder (its `data_files`), so a TaskManager gets one folder per task.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sfsd.atomic import atomic_dir
from sfsd.cache import cache_key, file_sha256
from sfsd.data.hub import hub_unreachable_reason
from sfsd.errors import SfsdError
from sfsd.evaluate import _pack
from sfsd.paths import cache_dir

SUITES = ("offline", "paper")
TASK_PREFIX = "sfsd_"
# Bump when the YAML this module writes (`task_config`, the paper tasks' overrides) changes: task folders
# are keyed by it, and so, through `TaskSpec.data_digest`, are the evaluation entries of their tasks.
TASK_FORMAT = 1
# Our short name -> lm-eval's own task (the paper's commonsense suite; needs the hub).
PAPER_TASKS = {
    "boolq": "boolq",
    "piqa": "piqa",
    "hellaswag": "hellaswag",
    "winogrande": "winogrande",
    "arc_easy": "arc_easy",
    "arc_challenge": "arc_challenge",
}
# lm-eval's own YAML of each paper task, under lm_eval/tasks/ (lm-eval 0.4, pinned in constraints.txt).
PAPER_TASK_YAML = {
    "boolq": "super_glue/boolq/default.yaml",
    "piqa": "piqa/piqa.yaml",
    "hellaswag": "hellaswag/hellaswag.yaml",
    "winogrande": "winogrande/default.yaml",
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
}


@dataclass(frozen=True)
class TaskSpec:
    """One task of one suite and split, ready for lm-eval."""

    task: str  # our short name, e.g. "piqa"
    split: str
    suite: str
    lm_name: str  # lm-eval's name, e.g. "sfsd_piqa" or "piqa"
    folder: Path | None  # include_path of a generated task, None for lm-eval's own tasks
    data_digest: str  # the task's key: its rows (or local files) and TASK_FORMAT ("hub" for lm-eval's data)


def check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise SfsdError(f"unknown suite {suite!r}: use 'offline' (local pack) or 'paper' (needs the hub)")
    return suite


def task_config(task: str, data_file: Path, datasets_cache: Path | None = None) -> dict[str, Any]:
    """The lm-eval YAML config of one offline task reading one JSONL file.

    `datasets_cache` keeps datasets' Arrow cache of the file next to it (default: datasets' own).
    """
    metric = {"aggregation": "mean", "higher_is_better": True}
    dataset_kwargs: dict[str, Any] = {"data_files": {"test": str(data_file)}}
    if datasets_cache is not None:
        dataset_kwargs["cache_dir"] = str(datasets_cache)
    return {
        "task": f"{TASK_PREFIX}{task}",
        "dataset_path": "json",
        "dataset_kwargs": dataset_kwargs,
        "test_split": "test",
        "output_type": "multiple_choice",
        # Field names: lm-eval reads doc[field] directly; same result as "{{query}}" / "{{choices}}" /
        # "{{label}}" without a Jinja render and literal_eval round trip of the choice list.
        "doc_to_text": "query",
        "doc_to_choice": "choices",
        "doc_to_target": "label",
        "target_delimiter": " ",
        "num_fewshot": 0,
        "metric_list": [{"metric": "acc", **metric}, {"metric": "acc_norm", **metric}],
        "metadata": {"version": 1.0},
    }


def tasks_root() -> Path:
    return cache_dir() / "evals" / "lm_eval_tasks"


def materialise_task(task: str, split: str, rows: list[dict], root: Path | None = None) -> Path:
    """Write the rows and the YAML of one (task, split) once; return the folder (an include_path)."""
    root = root if root is not None else tasks_root()
    folder = root / f"{task}-{split}-{task_key(task, split, rows)}"
    if (folder / f"{TASK_PREFIX}{task}.yaml").exists():
        return folder
    try:
        with atomic_dir(folder) as tmp:
            lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
            (tmp / "data.jsonl").write_text(lines, encoding="utf-8")
            config = task_config(task, folder / "data.jsonl", folder / "hf_datasets")
            (tmp / f"{TASK_PREFIX}{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    except FileExistsError:  # another process wrote the same content first
        pass
    return folder


def rows_spec(task: str, split: str, rows: list[dict]) -> TaskSpec:
    """A generated task over any rows {id, query, choices, label} (the pack's, or hub rows in that form)."""
    folder = materialise_task(task, split, rows)
    return TaskSpec(task, split, "offline", f"{TASK_PREFIX}{task}", folder, task_key(task, split, rows))


def task_key(task: str, split: str, rows: list[dict]) -> str:
    """The key of a generated task: its rows' content and the format of the YAML written for them."""
    return cache_key("lm-eval task", TASK_FORMAT, task=task, split=split, rows=_pack.digest(rows))


def offline_spec(task: str, split: str, pack_dir: Path | None = None) -> TaskSpec:
    return rows_spec(task, split, _pack.task_rows(task, split, pack_dir))


def paper_spec(task: str, split: str) -> TaskSpec:
    """lm-eval's own task; over a local copy of its evaluation split when $SFSD_DATASETS_DIR has one."""
    from sfsd.data.hub import local_copy
    from sfsd.data.paper_tasks import PAPER_EVAL

    if task not in PAPER_TASKS:
        raise SfsdError(f"unknown paper-suite task {task!r}: choose from {', '.join(PAPER_TASKS)}")
    if split != "eval":
        raise SfsdError("the paper suite has only lm-eval's own evaluation split: use --split eval")
    local = local_copy(PAPER_EVAL[task])
    if local is None:
        return TaskSpec(task, split, "paper", PAPER_TASKS[task], None, "hub")
    folder, digest = materialise_local_paper_task(task, PAPER_EVAL[task].split, local)
    return TaskSpec(task, split, "paper", f"{TASK_PREFIX}paper_{task}", folder, digest)


def _lm_eval_yaml(task: str) -> Path:
    import lm_eval

    path = Path(lm_eval.__file__).parent / "tasks" / PAPER_TASK_YAML[task]
    if not path.is_file():
        raise SfsdError(f"lm-eval {lm_eval.__version__} has no {PAPER_TASK_YAML[task]}: install the pinned lm-eval "
                        "(constraints.txt)")
    return path


def materialise_local_paper_task(task: str, eval_split: str, local: Path) -> tuple[Path, str]:
    """A YAML that includes lm-eval's own task and points its evaluation split at a local copy.

    Everything else (prompt, choices, target, processing functions, metrics) is lm-eval's own YAML;
    only the dataset location changes, so the paper suite can be exercised without the hub.
    """
    files = sorted(local.glob("*.arrow")) if local.is_dir() else [local]
    split_key = "test_split" if eval_split == "test" else "validation_split"
    config = {
        "include": str(_lm_eval_yaml(task)),
        "task": f"{TASK_PREFIX}paper_{task}",
        "tag": [],
        "dataset_path": "arrow" if local.is_dir() else "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": {eval_split: [str(f) for f in files]}},
        "training_split": None,
        "validation_split": None,
        "test_split": None,
        split_key: eval_split,
    }
    digest = cache_key("lm-eval paper task", TASK_FORMAT, config=config, files=[file_sha256(f) for f in files])
    folder = tasks_root() / f"paper-{task}-{digest}"
    if not (folder / f"{TASK_PREFIX}paper_{task}.yaml").exists():
        try:
            with atomic_dir(folder) as tmp:
                (tmp / f"{TASK_PREFIX}paper_{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        except FileExistsError:  # another process wrote the same content first
            pass
    return folder, "local:" + digest


def require_paper_data(tasks: list[str] | str | None = None) -> None:
    """Fail fast unless every requested paper task has a local copy or the hub is reachable."""
    from sfsd.data.hub import local_copy
    from sfsd.data.paper_tasks import PAPER_EVAL

    if isinstance(tasks, str):
        tasks = tasks.split(",")
    names = [t.strip() for t in tasks or [] if t.strip()] or list(PAPER_TASKS)
    if any(name not in PAPER_EVAL or local_copy(PAPER_EVAL[name]) is None for name in names):
        require_hub()


def resolve_specs(
    tasks: list[str] | str | None, split: str, suite: str, pack_dir: Path | None = None
) -> list[TaskSpec]:
    """Task specs for a suite; `tasks=None` means all tasks of the suite."""
    check_suite(suite)
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    tasks = list(dict.fromkeys(name.strip() for name in tasks or [] if name.strip()))
    if suite == "paper":
        require_paper_data(tasks)
        return [paper_spec(task, split) for task in (tasks or list(PAPER_TASKS))]
    _pack.check_split(split)
    names = tasks or _pack.offline_tasks(pack_dir)
    return [offline_spec(task, split, pack_dir) for task in names]


def task_manager(specs: list[TaskSpec]) -> Any:
    """A TaskManager that knows exactly these tasks (lm-eval's own index only for the paper suite)."""
    from lm_eval.tasks import TaskManager

    folders = [str(spec.folder) for spec in specs if spec.folder is not None]
    with_defaults = any(spec.folder is None for spec in specs)
    return TaskManager(include_path=folders or None, include_defaults=with_defaults)


def load_tasks(specs: list[TaskSpec]) -> tuple[Any, dict[str, Any]]:
    """(task manager, {lm-eval name: Task}); dataset download errors become one-line SfsdErrors."""
    manager = task_manager(specs)
    try:
        loaded = manager.load([spec.lm_name for spec in specs])["tasks"]
    except Exception as exc:
        if any(spec.suite == "paper" for spec in specs) and _looks_offline(exc):
            raise hub_error(str(exc)) from exc
        raise
    return manager, loaded


def _looks_offline(exc: Exception) -> bool:
    if isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("offline", "connect", "resolve", "hub", "timed out", "network"))


def hub_error(reason: str) -> SfsdError:
    first = reason.strip().splitlines()[0][:120] if reason.strip() else "unreachable"
    return SfsdError(
        f"the paper suite needs the Hugging Face hub, which is not reachable here ({first}): "
        "use --suite offline (the local benchmark pack)"
    )


def require_hub(timeout: float = 3.0) -> None:
    """Fail fast, with a hint, when lm-eval's own tasks cannot download their datasets."""
    reason = hub_unreachable_reason(timeout)
    if reason:
        raise hub_error(reason)
