"""The module that replaces a decomposed linear layer: two thin linears and a bias."""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """y = second(first(x)): d_in -> rank (no bias) -> d_out (bias carries the compensation)."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.first = nn.Linear(d_in, rank, bias=False, device=device, dtype=dtype)
        self.second = nn.Linear(rank, d_out, bias=bias, device=device, dtype=dtype)
        self.sfsd_shape = (d_out, d_in)

    @property
    def rank(self) -> int:
        return self.first.out_features

    @property
    def in_features(self) -> int:
        return self.first.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    @classmethod
    def from_factors(
        cls, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor
    ) -> LowRankLinear:
        """Build from first (r x d_in), second (d_out x r), bias (d_out), on `like`'s device and dtype."""
        module = cls(first.shape[1], second.shape[0], first.shape[0], bias is not None,
                     device=like.device, dtype=like.dtype)
        with torch.no_grad():
            module.first.weight.copy_(first)
            module.second.weight.copy_(second)
            if bias is not None:
                module.second.bias.copy_(bias)
        return module

    def extra_repr(self) -> str:
        return f"in={self.in_features}, rank={self.rank}, out={self.out_features}"
