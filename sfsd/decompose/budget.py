"""Budget arithmetic of the paper: rank from budget (Eq. 3) and overall budget (Appendix B).

Every count follows the format the thin layers are saved in (`factors`, `sfsd.options.FACTORS`): the paper's
two factors hold r (d1 + d2) weights; compact factors (Eq. ID, `sfsd.decompose.compact`) r (d1 + d2 - r).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from sfsd.adapters import LinearLayer
from sfsd.errors import SfsdError
from sfsd.options import FACTOR_FORMATS

TWO_FACTOR = FACTOR_FORMATS[0]  # the paper's format, the default everywhere

BETA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))


def check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and 0.0 < beta <= 1.0):
        raise SfsdError(f"beta must be in (0, 1], got {beta}: pass e.g. --beta 0.46")
    return float(beta)


def check_factors(factors: str) -> str:
    if factors not in FACTOR_FORMATS:
        raise SfsdError(f"unknown factor format {factors!r}: choose one of {', '.join(FACTOR_FORMATS)}")
    return factors


def factor_params(rank: int, d_in: int, d_out: int, factors: str = TWO_FACTOR) -> int:
    """Weights of a rank-r layer as saved: r (d1 + d2) in two factors, r (d1 + d2 - r) compact (Eq. ID)."""
    return rank * (d_in + d_out - (rank if check_factors(factors) == "compact" else 0))


def rank_for_budget(beta: float, d_in: int, d_out: int, factors: str = TWO_FACTOR) -> int:
    """Eq. 3: the largest r whose thin layers hold at most beta d1 d2 weights, at least 1.

    Two factors: r = floor(beta * d1 * d2 / (d1 + d2)). Compact: r (d1 + d2 - r) <= beta d1 d2, the smaller root
    of that quadratic, r = floor(((d1 + d2) - sqrt((d1 + d2)^2 - 4 beta d1 d2)) / 2), at most min(d1, d2).
    """
    check_beta(beta)
    if check_factors(factors) == TWO_FACTOR:
        # The small epsilon keeps e.g. 0.3 * 100 * 100 / 200 = 14.999999 from losing a rank.
        return max(1, math.floor(beta * d_in * d_out / (d_in + d_out) + 1e-9))
    return max(1, _compact_rank(beta, d_in, d_out))


def _compact_rank(beta: float, d_in: int, d_out: int) -> int:
    """The largest r <= min(d1, d2) with r (d1 + d2 - r) <= beta d1 d2 (Eq. 3 for compact factors)."""
    width, limit = d_in + d_out, beta * d_in * d_out * (1 + 1e-12)
    rank = min(full_rank(d_in, d_out), math.floor((width - math.sqrt(max(0.0, width * width - 4 * limit))) / 2))
    # The float root can be one off: settle it on the exact integer count.
    while rank > 1 and factor_params(rank, d_in, d_out, "compact") > limit:
        rank -= 1
    while rank < full_rank(d_in, d_out) and factor_params(rank + 1, d_in, d_out, "compact") <= limit:
        rank += 1
    return rank


def full_rank(d_in: int, d_out: int) -> int:
    return min(d_in, d_out)


def saves_parameters(rank: int, d_in: int, d_out: int, factors: str = TWO_FACTOR) -> bool:
    """A factorisation only pays off when it holds fewer weights than W: r (d1 + d2) < d1 d2 in two factors;
    compact, r (d1 + d2 - r) < d1 d2, i.e. any r < min(d1, d2)."""
    return factor_params(rank, d_in, d_out, factors) < d_in * d_out


def layer_beta(rank: int | None, d_in: int, d_out: int, factors: str = TWO_FACTOR) -> float:
    """The share of W's parameters kept at `rank` (1.0 for an intact layer)."""
    if rank is None:
        return 1.0
    return factor_params(rank, d_in, d_out, factors) / (d_in * d_out)


def overall_budget(layers: Iterable[LinearLayer], ranks: Mapping[str, int], factors: str = TWO_FACTOR) -> float:
    """Appendix B: sum(beta_i * p_i) / sum(p_i) over all decomposable layers (intact ones at beta 1)."""
    layers = list(layers)
    total = sum(layer.params for layer in layers)
    kept = sum(layer_beta(ranks.get(layer.name), layer.d_in, layer.d_out, factors) * layer.params for layer in layers)
    return kept / total if total else 1.0


def validate_ranks(layers: Iterable[LinearLayer], ranks: Mapping[str, int],
                   factors: str = TWO_FACTOR) -> dict[str, int]:
    """Check a module-name -> rank mapping against the model's layers; drop ranks that save nothing."""
    by_name = {layer.name: layer for layer in layers}
    unknown = sorted(set(ranks) - set(by_name))
    if unknown:
        example = next(iter(by_name), "model.layers.0.self_attn.q_proj")
        raise SfsdError(
            f"ranks name {len(unknown)} module(s) that are not decomposable layers of this model, "
            f"e.g. {unknown[0]!r}: use full module names such as {example!r}"
        )
    clean = {}
    for name, rank in ranks.items():
        layer = by_name[name]
        limit = full_rank(layer.d_in, layer.d_out)
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or rank > limit:
            raise SfsdError(f"rank {rank!r} for {name} is outside 1..{limit} (full rank of a "
                            f"{layer.d_out}x{layer.d_in} layer): choose a smaller rank")
        if saves_parameters(rank, layer.d_in, layer.d_out, factors):
            clean[name] = rank
    return clean


def uniform_ranks(layers: Iterable[LinearLayer], beta: float, last_blocks: int, num_blocks: int,
                  factors: str = TWO_FACTOR) -> dict[str, int]:
    """Table 1's uniform protocol: every layer of the last `last_blocks` blocks at a constant beta."""
    check_beta(beta)
    if not 0 <= last_blocks <= num_blocks:
        raise SfsdError(f"--last-blocks must be between 0 and {num_blocks} for this model, got {last_blocks}")
    first = num_blocks - last_blocks
    ranks = {}
    for layer in layers:
        rank = rank_for_budget(beta, layer.d_in, layer.d_out, factors)
        if layer.block >= first and beta < 1.0 and saves_parameters(rank, layer.d_in, layer.d_out, factors):
            ranks[layer.name] = rank
    return ranks
