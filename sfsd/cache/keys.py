"""The one way to build a cache key: what an artefact is, the format version of its contents, and the
fields that determine it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

KEY_DIGITS = 16  # 64 bits of sha256: no collision among the entries of one cache


def cache_key(kind: str, format_version: int, /, **fields: Any) -> str:
    """The first `KEY_DIGITS` hex digits of sha256 over the canonical JSON of kind, format and fields.

    `format_version` is the version of the artefact's contents (bump it when its maths or stored fields
    change): keys of another format never match, so an old entry is recomputed, never served. Fields
    must be plain JSON (str, numbers, bools, None, lists, dicts with str keys); anything else is an
    error rather than a `str()` that could hide what the key depends on. `kind` and `format_version` are
    positional-only, so a field may itself be called `kind`.
    """
    payload = json.dumps({"kind": kind, "format": format_version, "fields": fields}, sort_keys=True,
                         allow_nan=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:KEY_DIGITS]
