"""How the search walks the beta grid of one layer: linear scan (the paper) or bisection."""

from __future__ import annotations

from collections.abc import Callable, Sequence

Trial = Callable[[int], bool]  # grid index -> passed


def linear(trial: Trial, grid: Sequence[float]) -> int | None:
    """Algorithm 1: the first beta, in ascending order, whose model meets the target."""
    for index in range(len(grid)):
        if trial(index):
            return index
    return None


def bisect(trial: Trial, grid: Sequence[float]) -> int | None:
    """Binary search for the first passing beta, assuming the metric is monotone in beta.

    The largest beta is tried first: if it fails, the layer stays intact after one trial.
    """
    if not trial(len(grid) - 1):
        return None
    low, high = 0, len(grid) - 1  # grid[high] passes
    while low < high:
        middle = (low + high) // 2
        if trial(middle):
            high = middle
        else:
            low = middle + 1
    return high


STRATEGIES: dict[str, Callable[[Trial, Sequence[float]], int | None]] = {"linear": linear, "bisect": bisect}
