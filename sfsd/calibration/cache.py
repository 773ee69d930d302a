"""The statistics cache: one calibration pass per (weights, calibration tokens), reused by every method
and run that needs the same statistics.

A folder per key (the caller's fingerprint of the weights, the calibration spec and tokens, the batch
size and `STATISTICS_FORMAT`); in it one safetensors file per entry (a group's input side or a layer's
output side), named by entry and side. Each file carries its own sha256 over the tensors in its
metadata, is written atomically, and is recomputed when it is missing, unreadable, of another format
or fails its checksum. safetensors only: nothing executable is ever loaded.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from sfsd.atomic import atomic_file
from sfsd.cache import tensors_sha256
from sfsd.calibration.statistics import Statistics, statistics_from_tensors

log = logging.getLogger(__name__)

# Bump when what the statistics hold or how they are computed changes: files of another format are
# recomputed (the folder key includes it, and each file records it).
STATISTICS_FORMAT = 1


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    return tensors_sha256((name, tensors[name]) for name in sorted(tensors))


def _metadata(data: bytes) -> dict:
    """The `__metadata__` of a safetensors file's header (8-byte length, then JSON)."""
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]).get("__metadata__") or {}


class StatisticsCache:
    """Statistics entries of one model and calibration, on disk under `folder`."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.hits = 0
        self.misses = 0

    def path(self, key: str, side: str) -> Path:
        return self.folder / f"{re.sub(r'[^A-Za-z0-9._-]', '@', key)}.{side}.safetensors"

    def load(self, key: str, side: str, device: torch.device | str = "cpu") -> Statistics | None:
        """The entry, or None when it is missing, unreadable, of another format or fails its checksum."""
        path = self.path(key, side)
        try:
            data = path.read_bytes()
            meta = _metadata(data)
            if (meta.get("format") != str(STATISTICS_FORMAT) or meta.get("side") != side
                    or meta.get("key") != key):
                raise ValueError("another format, side or entry")
            tensors = load_tensors(data)
            if _digest(tensors) != meta.get("sha256"):
                raise ValueError("checksum mismatch")
            stats = statistics_from_tensors(side, int(meta["count"]), tensors)
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001  any damage means: recompute this entry
            log.warning("statistics cache entry %s is unusable (%s): recomputing it", path.name, exc)
            return None
        return stats.to(device)

    def has(self, key: str, side: str) -> bool:
        return self.load(key, side) is not None

    def save(self, key: str, stats: Statistics) -> None:
        tensors = {name: value.detach().cpu().contiguous() for name, value in stats.tensors().items()}
        meta = {"format": str(STATISTICS_FORMAT), "side": stats.side, "key": key, "count": str(stats.count),
                "sha256": _digest(tensors)}
        with atomic_file(self.path(key, stats.side), binary=True) as handle:
            handle.write(save_tensors(tensors, metadata=meta))
