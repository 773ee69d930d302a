"""Paired statistics of one shared-input group: the original model's inputs x and the compressed model's x'.

The anchored fit (`sfsd.decompose.anchored`) maps the inputs a layer sees in the compressed model, x', to the
outputs the original layer gives on the original model's inputs, W x + b0. It needs, over the same tokens (the
same calibration batches run through the original block on the original stream and through the compressed
block on the compressed stream, in lockstep): sum x, sum x', sum x' x'^T and the cross moment sum x x'^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sfsd.calibration.statistics import InputStatistics, _gram_dtype, add_gram


@dataclass
class PairedStatistics:
    """Token count, sum x, sum x', sum x' x'^T and sum x x'^T (float64), padding excluded."""

    count: int
    sum_x: torch.Tensor
    sum_xp: torch.Tensor
    sum_xpxpT: torch.Tensor
    sum_xxpT: torch.Tensor

    @classmethod
    def empty(cls, dim: int, device: torch.device) -> PairedStatistics:
        vector = torch.zeros(dim, dtype=torch.float64, device=device)
        matrix = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        return cls(0, vector.clone(), vector.clone(), matrix.clone(), matrix.clone())

    def add(self, x: torch.Tensor, xp: torch.Tensor) -> None:
        """One batch: x (original inputs) and xp (compressed inputs) of the same tokens, row for row."""
        x, xp = x.reshape(-1, x.shape[-1]), xp.reshape(-1, xp.shape[-1])
        if x.shape != xp.shape:
            raise ValueError(f"paired inputs differ in shape: {tuple(x.shape)} vs {tuple(xp.shape)}")
        dtype = torch.promote_types(_gram_dtype(x), _gram_dtype(xp))
        x, xp = x.to(dtype), xp.to(dtype)
        self.count += x.shape[0]
        self.sum_x += x.sum(0, dtype=torch.float64)
        self.sum_xp += xp.sum(0, dtype=torch.float64)
        add_gram(self.sum_xpxpT, xp)
        self.sum_xxpT += (x.T @ xp).to(torch.float64)

    def to(self, device: torch.device | str) -> PairedStatistics:
        return PairedStatistics(self.count, *(t.to(device) for t in
                                              (self.sum_x, self.sum_xp, self.sum_xpxpT, self.sum_xxpT)))

    @property
    def device(self) -> torch.device:
        return self.sum_xpxpT.device

    @property
    def mean_x(self) -> torch.Tensor:
        return self.sum_x / self.count

    @property
    def mean_xp(self) -> torch.Tensor:
        return self.sum_xp / self.count

    @property
    def covariance_xp(self) -> torch.Tensor:
        """Cov(x') (centred)."""
        return self.sum_xpxpT / self.count - torch.outer(self.mean_xp, self.mean_xp)

    @property
    def cross_covariance(self) -> torch.Tensor:
        """Cov(x, x') = E[x x'^T] - E[x] E[x']^T (d_in x d_in, rows: x)."""
        return self.sum_xxpT / self.count - torch.outer(self.mean_x, self.mean_xp)

    def compressed_side(self) -> InputStatistics:
        """The statistics of x' alone (sum |x'| is not kept: zeros)."""
        return InputStatistics(self.count, self.sum_xp, torch.zeros_like(self.sum_xp), self.sum_xpxpT)
