"""Where evaluation rows come from: the offline pack (`sfsd.data`) or a folder with the same layout.

Every public evaluation function takes `pack_dir`: `None` means the real pack through `sfsd.data`,
a folder means `<pack_dir>/tasks/<task>.jsonl`, `<pack_dir>/stereoset.jsonl` and `<pack_dir>/wiki.jsonl`
(the layout of `<cache>/data/offline-v1/`), which is how the tests point at small fixtures.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import ModuleType

from sfsd.errors import SfsdError

SPLITS = ("calib", "search", "eval")


def data_module() -> ModuleType:
    """`sfsd.data`, or a clear error while it does not exist."""
    try:
        import sfsd.data as data
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("sfsd.data"):
            raise SfsdError("the offline data pack (sfsd.data) is not installed: pass pack_dir=...") from exc
        raise
    return data


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise SfsdError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def read_jsonl(path: Path) -> list[dict]:
    """All rows of a JSONL file; a missing or broken file is a user-facing error."""
    if not path.exists():
        raise SfsdError(f"{path} is missing: rebuild the data pack (sfsd data)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise SfsdError(f"{path}:{number} is not valid JSON: rebuild the data pack") from exc
    return rows


def _of_split(rows: list[dict], split: str, what: str) -> list[dict]:
    chosen = [row for row in rows if row.get("split") == split]
    if not chosen:
        raise SfsdError(f"{what} has no rows in split {split!r}")
    return chosen


def offline_tasks(pack_dir: Path | None = None) -> list[str]:
    """The task short names the offline suite offers."""
    if pack_dir is None:
        return list(data_module().OFFLINE_TASKS)
    return sorted(path.stem for path in (Path(pack_dir) / "tasks").glob("*.jsonl"))


def task_rows(task: str, split: str, pack_dir: Path | None = None) -> list[dict]:
    """The rows of one offline task in one split, in file order (the order lm-eval sees)."""
    check_split(split)
    known = offline_tasks(pack_dir)
    if task not in known:
        raise SfsdError(f"unknown offline task {task!r}: choose from {', '.join(known)}")
    if pack_dir is None:
        return _of_split(list(data_module().load_task(task, split=split)), split, f"task {task}")
    return _of_split(read_jsonl(Path(pack_dir) / "tasks" / f"{task}.jsonl"), split, f"task {task}")


STEREOSET_SPLITS = ("all", "search", "eval")  # the pack gives StereoSet no calib part


def stereoset_rows(split: str, pack_dir: Path | None = None) -> list[dict]:
    """StereoSet examples of one split; "all" is every row (search and eval), in file order."""
    if split not in STEREOSET_SPLITS:
        raise SfsdError(f"unknown StereoSet split {split!r}: use one of {', '.join(STEREOSET_SPLITS)}")
    if pack_dir is None:
        rows = list(data_module().load_stereoset(split=split))
    else:
        rows = read_jsonl(Path(pack_dir) / "stereoset.jsonl")
    if split == "all":
        if not rows:
            raise SfsdError("stereoset has no rows: rebuild the data pack (sfsd data)")
        return list(rows)
    return _of_split(list(rows), split, "stereoset")


def wiki_text(split: str, pack_dir: Path | None = None) -> str:
    """The concatenated wiki text of one split (articles joined by a blank line)."""
    check_split(split)
    if pack_dir is None:
        return str(data_module().wiki_text(split=split))
    rows = _of_split(read_jsonl(Path(pack_dir) / "wiki.jsonl"), split, "wiki")
    return "\n\n".join(row["text"] for row in rows)


def digest(obj: object) -> str:
    """A short content hash of JSON-able data (rows, text), used in cache keys and folder names."""
    payload = obj if isinstance(obj, str) else json.dumps(obj, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]
