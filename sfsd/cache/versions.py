"""The library versions recorded with everything sfsd stores (runs, run archives, benchmark results)."""

from __future__ import annotations

import platform
from importlib import metadata

# What can change a result: the interpreter, sfsd's maths, torch's kernels, the transformers model
# code and lm-eval's task definitions.
PACKAGES = ("torch", "transformers", "lm_eval")


def versions() -> dict[str, str]:
    """python, sfsd and each of `PACKAGES` -> version ("not installed" when absent), without importing them.

    sfsd's own version is the running code's `__version__` (an editable or PYTHONPATH checkout may have
    no installed metadata, or stale metadata).
    """
    import sfsd

    found = {"python": platform.python_version(), "sfsd": sfsd.__version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found
