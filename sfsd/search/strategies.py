"""How the search walks the beta grid of one layer: linear scan (the paper) or bisection."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sfsd.registry import Registry

Trial = Callable[[int], bool]  # grid index -> passed


def linear(trial: Trial, grid: Sequence[float]) -> int | None:
    """Algorithm 1: the first beta, in ascending order, whose model meets the target."""
    for index in range(len(grid)):
        if trial(index):
            return index
    return None


def bisect(trial: Trial, grid: Sequence[float]) -> int | None:
    """Binary search for the first passing beta, assuming the metric is monotone in beta.

    "Intact" is treated as one more grid point after the last beta that always passes, so a layer
    costs at most ceil(log2(len(grid) + 1)) trials (4 for the nine betas).
    """
    low, high = 0, len(grid)  # the answer lies in [low, high]; high == len(grid) means intact
    while low < high:
        middle = (low + high) // 2
        if trial(middle):
            high = middle
        else:
            low = middle + 1
    return None if high == len(grid) else high


Strategy = Callable[[Trial, Sequence[float]], int | None]  # (trial, grid) -> index of the chosen beta, None: intact

STRATEGIES: Registry[Strategy] = Registry("strategy")
STRATEGIES.register("linear", linear)
STRATEGIES.register("bisect", bisect)
