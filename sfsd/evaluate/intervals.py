"""Confidence intervals for the numbers sfsd reports: proportions (accuracy, flip rate, stereotype score) and
perplexity.

Every accuracy shown carries its n and a 95% interval: with 100 documents a Wilson interval is about
+/- 9 points, which is wider than most differences between compression methods on a small model. Every
perplexity shown carries its windows' length, its token count and a 95% bootstrap interval over windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

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


PPL_BOOTSTRAP_RESAMPLES = 2000
PPL_BOOTSTRAP_SEED = 0


def ppl_bootstrap_interval(window_nll: Sequence[float], scored_per_window: int,
                           resamples: int = PPL_BOOTSTRAP_RESAMPLES, seed: int = PPL_BOOTSTRAP_SEED
                           ) -> tuple[float, float]:
    """95% percentile bootstrap interval of a perplexity over its windows (Efron & Tibshirani 1993, ch. 13).

    `window_nll` holds each window's summed next-token loss over its `scored_per_window` scored tokens. Each
    resample draws len(window_nll) windows with replacement (numpy Generator seeded with `seed`, one draw of
    n indices per resample, in order); its perplexity is exp(sum NLL / scored tokens); the interval is the
    2.5th and 97.5th percentiles of those perplexities.

    Windows, not tokens, are the unit: the tokens of a window share its context and its topic, so their
    losses are strongly correlated and a bootstrap over tokens would be far too narrow. Windows cut from one
    text are still not independent documents (neighbours share an article), so the interval covers which
    windows of this text were scored, not another text or corpus. Fewer than two windows give (nan, nan).
    """
    nll = np.asarray(window_nll, dtype=np.float64)
    if nll.ndim != 1 or len(nll) < 2 or scored_per_window <= 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    tokens = len(nll) * scored_per_window
    ppls = np.array([math.exp(nll[rng.integers(0, len(nll), size=len(nll))].sum() / tokens)
                     for _ in range(resamples)])
    low, high = np.percentile(ppls, [2.5, 97.5])
    return float(low), float(high)


def format_ppl(ppl: float | None, low: float | None = None, high: float | None = None, digits: int = 2) -> str:
    """'57.93 [55.12, 61.04]': a perplexity and its 95% bootstrap interval over windows (whole numbers with
    thousands separators from 1,000 up), or the value alone when no interval was stored (a result computed
    before intervals were kept). None or NaN reads "—"."""
    if ppl is None or ppl != ppl:
        return "—"
    if low is None or high is None or low != low or high != high:
        return _ppl_number(ppl, digits)
    return f"{_ppl_number(ppl, digits)} [{_ppl_number(low, digits)}, {_ppl_number(high, digits)}]"


def _ppl_number(value: float, digits: int) -> str:
    return f"{value:,.{digits if abs(value) < 1000 else 0}f}"
