"""Evaluation cache keys of models that exist only as a run's decisions (never saved to disk).

Here, below both the search (which evaluates such models) and the run store (whose export ships their
cached evaluations), so that neither has to import the other.
"""

from __future__ import annotations

from sfsd.cache import cache_key
from sfsd.data.sequences import key_fields
from sfsd.decompose import DECOMPOSITION_FORMAT, TWO_FACTOR
from sfsd.options import OPEN_LOOP


def compressed_model_key(config: dict, ranks: dict[str, int]) -> str:
    """Evaluation cache key of a searched model: base model, method, calibration (and whether its sequences start
    with BOS, recorded in the run's config) and ranks define its weights."""
    identity = {k: config.get(k) for k in ("model", "method", "calibration")}
    if config.get("factors") not in (None, TWO_FACTOR):  # compact factors: their own weights, their own key
        identity["factors"] = config["factors"]
    if config.get("calibration_stream") not in (None, OPEN_LOOP):  # closed-loop or anchored: other weights
        identity["calibration_stream"] = config["calibration_stream"]
    return "searched-" + cache_key("searched model", DECOMPOSITION_FORMAT, **identity, ranks=ranks,
                                   **key_fields(bool(config.get("bos"))))
