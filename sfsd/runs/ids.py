"""Run ids: a readable slug plus a hash of the config's identity, so the same request finds the same run."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from sfsd.runs._files import json_default

FORMAT_VERSION = 1
KINDS = ("search", "uniform")

# Config fields that do not make a run different: when/with what it was written, the layer list
# (derived from model, roles and first block) and the folder format (checked on its own).
NON_IDENTITY_FIELDS = frozenset({"created", "versions", "format_version", "layers"})

_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


def identity(config: dict) -> dict:
    """The part of a config that decides the run id."""
    return {key: value for key, value in config.items() if key not in NON_IDENTITY_FIELDS}


def run_id_for(config: dict) -> str:
    """`<kind>-<model>-<method>-<metric>-<first 12 hex of sha256(canonical identity JSON)>`."""
    canonical = json.dumps(identity(config), sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                           default=json_default)
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]
    return f"{_slug(config)}-{digest}"


def metric_name(config: dict) -> str | None:
    """The metric's name: config["metric"]["name"] (or the metric itself when it is a string)."""
    metric = config.get("metric")
    if isinstance(metric, dict):
        return metric.get("name")
    return metric if isinstance(metric, str) else None


def metric_tolerance(config: dict) -> Any:
    metric = config.get("metric")
    tolerance = metric.get("tolerance") if isinstance(metric, dict) else None
    return config.get("tolerance") if tolerance is None else tolerance


def is_run_id(text: str) -> bool:
    """Whether `text` could be a run id (and is safe as a folder name)."""
    return bool(_ID_PATTERN.match(text)) and ".." not in text


def _slug(config: dict) -> str:
    model = str(config.get("model") or "").rstrip("/").rsplit("/", 1)[-1]
    parts = [config.get("kind"), model, config.get("method"), metric_name(config)]
    text = "-".join(str(part) for part in parts if part not in (None, ""))
    text = re.sub(r"[^a-z0-9.]+", "-", text.lower()).replace("..", ".")
    return text[:60].strip("-.") or "run"
