"""Compact factors: a rank-r layer S F stored without its r x r redundancy (issue 25, lever 3).

For any invertible r x r matrix G, (S G)(G^{-1} F) is the same layer: a product of a d2 x r and an r x d1 factor
holds r^2 numbers that choose G and nothing else. Taking G = F_p, the r columns of F that column-pivoted QR picks
first (so that F_p is as well conditioned as r of F's columns can be), fixes those columns of the first factor to
the identity, an interpolative decomposition (PivGa, arXiv 2512.03062):

    S F = (S F_p) [I | T] P^T,   T = F_p^{-1} F[:, rest]                                   (Eq. ID)

where P orders the input channels pivots first. The layer becomes y = S' (x[pivots] + T x[rest]) + b, with
S' = S F_p (d2 x r) and T (r x (d1 - r)): r (d1 + d2 - r) weights and as many multiply-accumulates per token,
instead of r (d1 + d2). The decomposition (which directions are kept) is unchanged; this is a re-parametrisation
of its rank-r factors, applied when a model is built at a rank.

The identity block is put on the input side (columns of F) for every layer: the weights and MACs are the same
on either side, and one gather of the input channels is cheaper and simpler than scattering the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

# Relative size of the smallest pivot below which F_p counts as singular (F's rank is below r): T is then the
# least-squares solution, which still reproduces F exactly, since pivoted QR's first columns span F's columns.
SINGULAR = 1e-12


@dataclass
class CompactFactors:
    """Eq. ID's stored parts of a rank-r layer (float64, on the host)."""

    second: torch.Tensor  # S' = S F_p, d2 x r
    coupling: torch.Tensor  # T = F_p^{-1} F[:, rest], r x (d1 - r)
    order: torch.Tensor  # int64 permutation of the d1 input channels: the r pivots, then the rest

    @property
    def rank(self) -> int:
        return self.second.shape[1]


def interpolative(first: torch.Tensor, second: torch.Tensor) -> CompactFactors:
    """Eq. ID of the product second @ first (first r x d1, second d2 x r), by column-pivoted QR in float64.

    With F[:, P] = Q [R11 | R12] (R11 upper triangular, r x r), F_p = Q R11 and F[:, rest] = Q R12, so
    T = F_p^{-1} F[:, rest] = R11^{-1} R12: a triangular solve, Q is never formed.
    """
    f64 = first.detach().to("cpu", torch.float64).numpy()
    rank = f64.shape[0]
    upper, order = scipy.linalg.qr(f64, mode="r", pivoting=True)
    r11, r12 = upper[:, :rank], upper[:, rank:]
    pivots = np.abs(np.diag(r11))
    if pivots.min() > SINGULAR * pivots.max():
        coupling = scipy.linalg.solve_triangular(r11, r12)
    else:
        coupling = scipy.linalg.lstsq(r11, r12, cond=SINGULAR)[0]
    order = torch.from_numpy(order.astype(np.int64))
    chosen = torch.from_numpy(f64[:, order[:rank].numpy()])
    return CompactFactors(second.detach().to("cpu", torch.float64) @ chosen, torch.from_numpy(coupling), order)

