"""Confidence intervals for the proportions sfsd reports (accuracy, flip rate, stereotype score).

Every accuracy shown carries its n and a 95% interval: with 100 documents a Wilson interval is about
+/- 9 points, which is wider than most differences between compression methods on a small model.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion successes / n (Wilson 1927), as (low, high) in [0, 1].

    Preferred over the normal (Wald) interval because it stays inside [0, 1] and keeps its coverage
    for proportions near 0 or 1 and for small n. n = 0 gives (nan, nan).
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_proportion(p: float, n: int, scale: float = 1.0, digits: int = 3, show_n: bool = True) -> str:
    """'0.650 [0.553, 0.736] (n=100)': the value, its 95% Wilson interval and n (scale 100 for percent;
    show_n=False leaves n out, for a table that shows it in its own column or header)."""
    if n is None or n != n or n <= 0 or p is None or p != p:
        return "—"
    n = int(n)
    low, high = wilson_interval(p * n, n)
    text = f"{p * scale:.{digits}f} [{low * scale:.{digits}f}, {high * scale:.{digits}f}]"
    return f"{text} (n={n})" if show_n else text


def mean_interval(values: list[float], ns: list[float], z: float = Z95) -> tuple[float, float]:
    """95% normal interval of the unweighted mean of independent proportions (Table 1's average):
    variance sum(p (1 - p) / n) / k^2. Any missing n gives (nan, nan)."""
    if not values or any(n is None or n != n or n <= 0 for n in ns):
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    half = z * math.sqrt(sum(p * (1 - p) / n for p, n in zip(values, ns, strict=True))) / len(values)
    return max(0.0, mean - half), min(1.0, mean + half)
