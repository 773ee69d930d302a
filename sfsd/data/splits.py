"""Deterministic, disjoint splits of a list of rows into calib / search / eval."""

from __future__ import annotations

import zlib
from collections.abc import Hashable, Sequence

import numpy as np

SPLITS = ("calib", "search", "eval")


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A numpy Generator that depends only on the pack seed and a name (stable across runs)."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode("utf-8"))])


def _round(x: float) -> int:
    return int(np.floor(x + 0.5))


def split_sizes(n: int, calib: float, search: float) -> tuple[int, int, int]:
    """Sizes for `n` items: `calib` of all, then `search` of the remainder, the rest eval."""
    n_calib = _round(n * calib)
    n_search = _round((n - n_calib) * search)
    return n_calib, n_search, n - n_calib - n_search


def assign_splits(keys: Sequence[Hashable], calib: float, search: float, rng: np.random.Generator) -> list[str]:
    """A split name per item. Items with equal keys (duplicate rows) are kept in the same split.

    Unique keys are shuffled by `rng`; the first `calib` fraction of them go to calib, then
    `search` of the rest to search, the remainder to eval (see `split_sizes`).
    """
    unique = list(dict.fromkeys(keys))
    n_calib, n_search, _ = split_sizes(len(unique), calib, search)
    order = rng.permutation(len(unique))
    where = {}
    for rank, k in enumerate(order):
        where[unique[k]] = "calib" if rank < n_calib else "search" if rank < n_calib + n_search else "eval"
    return [where[k] for k in keys]


def assign_stratified(
    keys: Sequence[Hashable], strata: Sequence[Hashable], calib: float, search: float, rng: np.random.Generator
) -> list[str]:
    """`assign_splits` within each stratum (strata in sorted order, so the result is deterministic)."""
    result: list[str | None] = [None] * len(keys)
    for stratum in sorted(set(strata), key=str):
        idx = [i for i, s in enumerate(strata) if s == stratum]
        for i, split in zip(idx, assign_splits([keys[i] for i in idx], calib, search, rng), strict=True):
            result[i] = split
    return [s for s in result if s is not None]
