"""Budget arithmetic of the paper: rank from budget (Eq. 3) and overall budget (Appendix B)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from sfsd.adapters import LinearLayer
from sfsd.errors import SfsdError

BETA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))


def check_beta(beta: float) -> float:
    if not (isinstance(beta, (int, float)) and 0.0 < beta <= 1.0):
        raise SfsdError(f"beta must be in (0, 1], got {beta}: pass e.g. --beta 0.46")
    return float(beta)


def rank_for_budget(beta: float, d_in: int, d_out: int) -> int:
    """Eq. 3: r = floor(beta * d1 * d2 / (d1 + d2)), at least 1.

    With this rank the two thin layers (d1 -> r, r -> d2) hold beta times the parameters of W.
    """
    check_beta(beta)
    # The small epsilon keeps e.g. 0.3 * 100 * 100 / 200 = 14.999999 from losing a rank.
    return max(1, math.floor(beta * d_in * d_out / (d_in + d_out) + 1e-9))


def full_rank(d_in: int, d_out: int) -> int:
    return min(d_in, d_out)


def saves_parameters(rank: int, d_in: int, d_out: int) -> bool:
    """A factorisation only pays off when r (d1 + d2) < d1 d2."""
    return rank * (d_in + d_out) < d_in * d_out


def layer_beta(rank: int | None, d_in: int, d_out: int) -> float:
    """The share of W's parameters kept at `rank` (1.0 for an intact layer)."""
    if rank is None:
        return 1.0
    return rank * (d_in + d_out) / (d_in * d_out)


def overall_budget(layers: Iterable[LinearLayer], ranks: Mapping[str, int]) -> float:
    """Appendix B: sum(beta_i * p_i) / sum(p_i) over all decomposable layers (intact ones at beta 1)."""
    layers = list(layers)
    total = sum(layer.params for layer in layers)
    kept = sum(layer_beta(ranks.get(layer.name), layer.d_in, layer.d_out) * layer.params for layer in layers)
    return kept / total if total else 1.0


def validate_ranks(layers: Iterable[LinearLayer], ranks: Mapping[str, int]) -> dict[str, int]:
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
        if saves_parameters(rank, layer.d_in, layer.d_out):
            clean[name] = rank
    return clean


def uniform_ranks(layers: Iterable[LinearLayer], beta: float, last_blocks: int, num_blocks: int) -> dict[str, int]:
    """Table 1's uniform protocol: every layer of the last `last_blocks` blocks at a constant beta."""
    check_beta(beta)
    if not 0 <= last_blocks <= num_blocks:
        raise SfsdError(f"--last-blocks must be between 0 and {num_blocks} for this model, got {last_blocks}")
    first = num_blocks - last_blocks
    ranks = {}
    for layer in layers:
        rank = rank_for_budget(beta, layer.d_in, layer.d_out)
        if layer.block >= first and beta < 1.0 and saves_parameters(rank, layer.d_in, layer.d_out):
            ranks[layer.name] = rank
    return ranks
