"""Where sfsd keeps its cache (converted models, data pack, runs)."""

from __future__ import annotations

import os
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    """The cache root: $SFSD_CACHE_DIR, else `cache/` of a source checkout, else ./cache."""
    env = os.environ.get("SFSD_CACHE_DIR")
    if env:
        root = Path(env)
    elif (_REPO_ROOT / "pyproject.toml").exists():
        root = _REPO_ROOT / "cache"
    else:
        root = Path.cwd() / "cache"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    return cache_dir() / "models"


def data_dir() -> Path:
    return cache_dir() / "data"


def runs_dir() -> Path:
    return cache_dir() / "runs"
