"""Datasets from the Hugging Face hub (the field's protocol), loaded through `datasets`.

Each dataset the field uses is named once here (`HUB_DATASETS`) with the hub path, config, split
and text column the published scripts read. `load_hub_split` calls `datasets.load_dataset` with
exactly those; offline it fails in one line that names the offline alternative.

$SFSD_DATASETS_DIR maps a hub dataset to a local copy, for tests and for machines without the
hub: `<dir>/<path with "/" as "__">/<config or "default">/<split>` is read with
`datasets.load_from_disk` (a `save_to_disk` folder), or `<split>.jsonl` next to it with the `json`
builder. A local copy must have the hub dataset's columns.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sfsd.errors import SfsdError

DATASETS_DIR_ENV = "SFSD_DATASETS_DIR"
HUB_HOST = "huggingface.co"


@dataclass(frozen=True)
class HubSplit:
    """One split of one hub dataset, as `load_dataset(path, name, split=..., data_files=...)` reads it."""

    path: str
    name: str | None
    split: str
    column: str = "text"  # the text column (ppl and calibration text)
    data_files: tuple[tuple[str, str], ...] = field(default=())  # (split, file in the repository)

    @property
    def label(self) -> str:
        return f"{self.path}" + (f"/{self.name}" if self.name else "") + f" [{self.split}]"

    def local_folder(self, root: Path) -> Path:
        return root / self.path.replace("/", "__") / (self.name or "default")


# The text datasets of the field (SVD-LLM utils/data_utils.py; SliceGPT/GPTQ use the same hub names).
# C4: the first shard of each split, as GPTQ, SparseGPT and SliceGPT load it; SVD-LLM reads a local
# JSON copy of the same shards (cache/c4-train.json, cache/c4-validation.json).
HUB_DATASETS: dict[tuple[str, str], HubSplit] = {
    ("wikitext2", "train"): HubSplit("wikitext", "wikitext-2-raw-v1", "train"),
    ("wikitext2", "test"): HubSplit("wikitext", "wikitext-2-raw-v1", "test"),
    ("ptb", "test"): HubSplit("ptb_text_only", "penn_treebank", "test", column="sentence"),
    ("c4", "train"): HubSplit("allenai/c4", None, "train",
                              data_files=(("train", "en/c4-train.00000-of-01024.json.gz"),)),
    ("c4", "validation"): HubSplit("allenai/c4", None, "validation",
                                   data_files=(("validation", "en/c4-validation.00000-of-00008.json.gz"),)),
}


def hub_dataset(name: str, split: str) -> HubSplit:
    try:
        return HUB_DATASETS[(name, split)]
    except KeyError:
        known = sorted({n for n, _ in HUB_DATASETS})
        raise SfsdError(f"no hub dataset {name!r} with split {split!r}: choose one of {', '.join(known)}") from None


def offline_env() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(name, "").lower() in truthy for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def can_connect(host: str, timeout: float) -> bool:
    """TCP connect to host:443 within `timeout` seconds (DNS included, which has no timeout itself)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used here (None when it can)."""
    if offline_env():
        return "offline mode is on: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE"
    if not can_connect(HUB_HOST, timeout):
        return f"cannot connect to {HUB_HOST}"
    return None


def local_copy(spec: HubSplit) -> Path | None:
    """The local copy of `spec` under $SFSD_DATASETS_DIR (a save_to_disk folder or a .jsonl file), if any."""
    root = os.environ.get(DATASETS_DIR_ENV)
    if not root:
        return None
    folder = spec.local_folder(Path(root))
    for candidate in (folder / spec.split, folder / f"{spec.split}.jsonl"):
        if candidate.exists():
            return candidate
    return None


def require_hub_split(spec: HubSplit, what: str, offline_hint: str) -> None:
    """Fail fast (before a model is loaded) when `spec` can be read neither locally nor from the hub."""
    if local_copy(spec) is not None:
        return
    reason = hub_unreachable_reason()
    if reason:
        raise SfsdError(f"{what} needs the Hugging Face hub ({reason}): {offline_hint}")


def load_hub_split(spec: HubSplit, what: str, offline_hint: str) -> Any:
    """The `datasets.Dataset` of `spec` (a local copy under $SFSD_DATASETS_DIR first, else the hub)."""
    import datasets

    local = local_copy(spec)
    if local is not None:
        if local.is_dir():
            return datasets.load_from_disk(str(local))
        return datasets.load_dataset("json", data_files={spec.split: str(local)}, split=spec.split)
    require_hub_split(spec, what, offline_hint)
    kwargs: dict[str, Any] = {"split": spec.split}
    if spec.data_files:
        kwargs["data_files"] = dict(spec.data_files)
    try:
        return datasets.load_dataset(spec.path, spec.name, **kwargs)
    except Exception as exc:  # datasets raises many types; the user needs one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise SfsdError(f"could not load {spec.label} from the hub ({first}): {offline_hint}") from exc


def hub_text_rows(spec: HubSplit, what: str, offline_hint: str, limit: int | None = None) -> list[str]:
    """The text column of a hub split, in file order (first `limit` rows)."""
    data = load_hub_split(spec, what, offline_hint)
    if spec.column not in data.column_names:
        raise SfsdError(f"{spec.label} has no column {spec.column!r} (columns: {', '.join(data.column_names)})")
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    return list(data[spec.column])


def joined_text(rows: list[str]) -> str:
    """The texts joined with "\\n\\n", as SVD-LLM, SliceGPT and GPTQ build the perplexity text."""
    return "\n\n".join(rows)
