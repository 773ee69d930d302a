"""The evaluation cache: one folder per result under `<cache>/evals/<kind>/<key>/`.

An entry is `meta.json` (the key fields, the summary, and the size and sha256 of the records file)
plus an optional `records.parquet`. The Parquet file is written first (temporary file, then
`os.replace`), `meta.json` last through `sfsd.atomic.write_json`, so `meta.json` marks a complete
entry. Reading re-checks everything; a bad or half-written entry is reported as a miss and gets
recomputed, never served. Only JSON and Parquet are written (no executable serialisation).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from sfsd.atomic import write_json
from sfsd.cache import cache_key, file_sha256
from sfsd.paths import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1
META = "meta.json"
Check = Callable[[dict, "pd.DataFrame | None"], None]
RECORDS = "records.parquet"


def require(meta: dict, records: pd.DataFrame | None, meta_keys: tuple = (), columns: tuple = ()) -> None:
    """Raise unless meta has `meta_keys` (dotted paths allowed) and records has `columns`."""
    for path in meta_keys:
        node: Any = meta
        for part in path.split("."):
            node = node[part]
    if columns:
        if records is None:
            raise ValueError("records are missing")
        missing = set(columns) - set(records.columns)
        if missing:
            raise ValueError(f"records lack columns {sorted(missing)}")


def entry_key(fields: dict[str, Any]) -> str:
    """The key of the result that `fields` determine (model key, data digest, split, limit, ...)."""
    return cache_key("evaluation", FORMAT, **fields)


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class EvalCache:
    """Stored evaluation results keyed by `entry_key(fields)`."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else cache_dir() / "evals"

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def load(self, kind: str, key: str, check: Check | None = None) -> tuple[dict, pd.DataFrame | None] | None:
        """The stored (meta, records) for a key, or None when absent or not intact.

        `check(meta, records)` may raise to reject an entry whose content is not what the caller needs.
        """
        folder = self.entry(kind, key)
        if not (folder / META).exists():
            return None
        try:
            meta, records = self._read(folder, key)
            if check is not None:
                check(meta, records)
            return meta, records
        except Exception as exc:  # any damage means: recompute
            log.warning("evaluation cache entry %s is damaged (%s); recomputing", folder, exc)
            return None

    def _read(self, folder: Path, key: str) -> tuple[dict, pd.DataFrame | None]:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        if not isinstance(meta, dict) or meta.get("key") != key or meta.get("format") != FORMAT:
            raise ValueError("meta.json does not belong to this key")
        if meta.get("records") is None:
            return meta, None
        path = folder / RECORDS
        info = meta["records"]
        if path.stat().st_size != info["bytes"] or file_sha256(path) != info["sha256"]:
            raise ValueError("records file does not match its checksum")
        records = pd.read_parquet(path)
        if len(records) != info["rows"]:
            raise ValueError("records file has the wrong number of rows")
        return meta, records

    def store(self, kind: str, key: str, meta: dict, records: pd.DataFrame | None = None) -> None:
        """Write an entry; readers never see it half-written."""
        folder = self.entry(kind, key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / META).unlink(missing_ok=True)  # the old entry stops counting before it is rewritten
        info = None
        if records is not None:
            path = folder / RECORDS
            _write_parquet(records, path)
            info = {"rows": len(records), "bytes": path.stat().st_size, "sha256": file_sha256(path)}
        write_json(folder / META, {**meta, "key": key, "format": FORMAT, "records": info})
