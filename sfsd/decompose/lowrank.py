"""The modules that replace decomposed linear layers.

`LowRankLinear`: y = second(first(x)), two thin linears, the bias on the second (the compensation).

`CompactLowRankLinear`: the same layer with r columns of its first factor fixed to the identity (Eq. ID,
`sfsd.decompose.compact`): y = second(x[pivots] + T x[rest]), r (d1 + d2 - r) weights instead of r (d1 + d2).

Layers that read the same input (q/k/v; gate/up) can share their first factors: `SharedInputFirst` holds
them stacked as one weight (sum of ranks x d_in) on the layers' parent module, and each layer becomes a
`SharedInputLowRank` that keeps only its second factor. The first of the group to run computes the one
GEMM for the whole group and the others take their slice of it, so the forward code of the architecture
(which calls q_proj(x), k_proj(x), v_proj(x) one by one) needs no change.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sfsd.decompose.compact import interpolative
from sfsd.options import FACTOR_FORMATS


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

    @property
    def first_weight(self) -> torch.Tensor:
        """The first factor (rank x d_in)."""
        return self.first.weight

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


class CompactLowRankLinear(nn.Module):
    """y = second(x[pivots] + coupling x[rest]) (Eq. ID): d_in -> rank -> d_out, the first factor's pivot columns
    the identity. `order` (a buffer, saved with the weights) lists the input channels pivots first."""

    def __init__(self, d_in: int, d_out: int, rank: int, bias: bool, device=None, dtype=None):
        super().__init__()
        # A direct parameter, not a submodule: forward reads it in one addmm, and offloading hooks on this module
        # bring it in.
        self.coupling = nn.Parameter(torch.empty(rank, d_in - rank, device=device, dtype=dtype))
        self.second = nn.Linear(rank, d_out, bias=bias, device=device, dtype=dtype)
        self.register_buffer("order", torch.arange(d_in, device=device))
        self.sfsd_shape = (d_out, d_in)

    @property
    def rank(self) -> int:
        return self.second.in_features

    @property
    def in_features(self) -> int:
        return self.order.shape[0]

    @property
    def out_features(self) -> int:
        return self.second.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).index_select(1, self.order)  # one gather: pivots first, then the rest
        thin = torch.addmm(flat[:, :self.rank], flat[:, self.rank:], self.coupling.t())
        out = self.second(thin)
        return out.view(*x.shape[:-1], out.shape[-1])

    @classmethod
    def from_factors(
        cls, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None, like: torch.Tensor
    ) -> CompactLowRankLinear:
        """Eq. ID of second @ first (first r x d_in, second d_out x r) plus bias, on `like`'s device and dtype."""
        parts = interpolative(first, second)
        module = cls(first.shape[1], second.shape[0], first.shape[0], bias is not None,
                     device=like.device, dtype=like.dtype)
        with torch.no_grad():
            module.coupling.copy_(parts.coupling)
            module.second.weight.copy_(parts.second)
            module.order.copy_(parts.order)
            if bias is not None:
                module.second.bias.copy_(bias)
        return module

    def extra_repr(self) -> str:
        return f"in={self.in_features}, rank={self.rank}, out={self.out_features}, compact"


# The module of a rank-r layer by factor format (`sfsd.options.FACTORS`).
LOW_RANK_CLASSES = dict(zip(FACTOR_FORMATS, (LowRankLinear, CompactLowRankLinear), strict=True))


def _version(tensor: torch.Tensor) -> int | None:
    """The tensor's in-place version counter; None for an inference tensor (made under torch.inference_mode()),
    which has none. Such a tensor is then known by identity alone: inside one forward the members of a group
    read the same hidden states one after another, and nothing writes to them in between."""
    return None if tensor.is_inference() else tensor._version


class SharedInputFirst(nn.Module):
    """The first factors of a group of layers that read the same input, stacked: one GEMM for the group.

    `forward(x, index)` returns member `index`'s thin activations. The product x @ W^T of the whole group
    is computed when a member asks for an input the group has not seen (same tensor object, unmodified,
    same weights, same grad mode) and kept until every member has taken its slice, then dropped.
    """

    def __init__(self, d_in: int, ranks: list[int], device=None, dtype=None):
        super().__init__()
        self.ranks = list(ranks)
        self.offsets = [sum(self.ranks[:i]) for i in range(len(self.ranks))]
        self.weight = nn.Parameter(torch.empty(sum(self.ranks), d_in, device=device, dtype=dtype))
        self._cache: tuple | None = None

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    def _key(self, x: torch.Tensor) -> tuple:
        return (_version(x), _version(self.weight), self.weight.data_ptr(), torch.is_grad_enabled())

    def forward(self, x: torch.Tensor, index: int) -> torch.Tensor:
        cache = self._cache
        if cache is None or cache[0] is not x or cache[1] != self._key(x) or index in cache[3]:
            cache = (x, self._key(x), F.linear(x, self.weight), set())
        cache[3].add(index)
        # Once every member has its slice, drop the references (the input and the group's activations).
        self._cache = None if len(cache[3]) == len(self.ranks) else cache
        start = self.offsets[index]
        return cache[2][..., start:start + self.ranks[index]]

    def extra_repr(self) -> str:
        return f"in={self.in_features}, ranks={self.ranks}"


class SharedInputLowRank(nn.Module):
    """One layer of a shared-input group: its slice of the group's first GEMM, then its own second factor."""

    def __init__(self, shared: SharedInputFirst, index: int, d_out: int, bias: bool, device=None, dtype=None):
        super().__init__()
        object.__setattr__(self, "shared", shared)  # not a submodule: its parent owns (and saves) it once
        self.index = index
        self.second = nn.Linear(shared.ranks[index], d_out, bias=bias, device=device, dtype=dtype)
        self.sfsd_shape = (d_out, shared.in_features)

    @property
    def rank(self) -> int:
        return self.second.in_features

    @property
    def in_features(self) -> int:
        return self.shared.in_features

    @property
    def out_features(self) -> int:
        return self.second.out_features

    @property
    def first_weight(self) -> torch.Tensor:
        """This layer's rows of the group's stacked first factor (rank x d_in, a view)."""
        start = self.shared.offsets[self.index]
        return self.shared.weight[start:start + self.rank]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        thin = self.shared(x, self.index)
        # The slice is strided (a view of the group's product). As a 2-D view it goes to one addmm (the bias
        # in the same call), as a separate layer's contiguous input does; a 3-D strided input would take
        # matmul and then a separate bias pass, rounding differently from the layers saved before.
        out = self.second(thin.reshape(-1, thin.shape[-1]))  # through the module: offloading hooks see it
        return out.view(*thin.shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        return f"in={self.in_features}, rank={self.rank}, out={self.out_features}, shared first #{self.index}"
