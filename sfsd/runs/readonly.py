"""Read-only presenting mode: `SFSD_READONLY=1` (`make app READONLY=1`).

The dashboard then hides every control that starts, cancels, deletes or saves, and the functions behind those
controls refuse on the server side too (`require_writable`), so a crafted request cannot do what a hidden
button would have done.
"""

from __future__ import annotations

import os

from sfsd.errors import SfsdError

READONLY_ENV = "SFSD_READONLY"
_TRUE = {"1", "true", "yes", "on"}


def readonly() -> bool:
    """Whether this process runs in read-only mode ($SFSD_READONLY set to 1, true, yes or on)."""
    return os.environ.get(READONLY_ENV, "").strip().lower() in _TRUE


def require_writable(action: str) -> None:
    """Refuse `action` (e.g. "start a run") in read-only mode with a one-line SfsdError."""
    if readonly():
        raise SfsdError(f"cannot {action}: this sfsd is in read-only mode ({READONLY_ENV}=1); "
                        f"do it on a full dashboard or from the command line without {READONLY_ENV}")
