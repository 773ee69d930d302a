"""One small adapter per architecture: which blocks hold which linear layers, by role."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

# Order of roles inside a block, first to last in the forward pass; the search walks it backward.
ROLE_ORDER = ("q", "k", "v", "qkv", "o", "gate", "up", "gate_up", "down")


@dataclass(frozen=True)
class LinearLayer:
    """A decomposable linear layer of a decoder block (y = W x + b, W is d_out x d_in)."""

    name: str  # full module name, e.g. model.layers.3.self_attn.q_proj
    block: int
    role: str
    d_in: int
    d_out: int
    input_group: str  # layers with the same group read the same input (q/k/v; gate/up)

    @property
    def params(self) -> int:
        """Weight parameters of the intact layer (biases excluded, as in Eq. 3)."""
        return self.d_in * self.d_out


@dataclass(frozen=True)
class RoleSpec:
    path: str  # module path relative to the block, matched exactly (never as a substring)
    input_group: str  # shared-input group name within the block


class ModelAdapter:
    """Names the decoder blocks of one architecture family and their linear layers by role."""

    model_types: ClassVar[tuple[str, ...]] = ()
    blocks_path: ClassVar[str] = "model.layers"
    roles: ClassVar[dict[str, RoleSpec]] = {}
    transposed: ClassVar[bool] = False  # GPT-2's Conv1D stores W as d_in x d_out

    def __init__(self, model: nn.Module):
        self.model = model

    @property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.blocks_path)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def role_names(self) -> list[str]:
        return [role for role in ROLE_ORDER if role in self.roles]

    def layers(self, blocks: list[int] | None = None, roles: list[str] | None = None) -> list[LinearLayer]:
        """Layers in forward order (block by block, roles in ROLE_ORDER)."""
        chosen_roles = self.role_names() if roles is None else [r for r in self.role_names() if r in roles]
        result = []
        for block in range(self.num_blocks) if blocks is None else sorted(blocks):
            for role in chosen_roles:
                spec = self.roles[role]
                name = f"{self.blocks_path}.{block}.{spec.path}"
                module = self.model.get_submodule(name)
                d_out, d_in = self.weight_shape(module)
                group = f"{self.blocks_path}.{block}:{spec.input_group}"
                result.append(LinearLayer(name, block, role, d_in, d_out, group))
        return result

    def weight_shape(self, module: nn.Module) -> tuple[int, int]:
        if hasattr(module, "sfsd_shape"):  # an already decomposed layer
            return module.sfsd_shape
        rows, cols = module.weight.shape
        return (cols, rows) if self.transposed else (rows, cols)

    def weight_and_bias(self, module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
        """W as d_out x d_in and the bias, whatever the module stores."""
        weight = module.weight.detach()
        return (weight.T if self.transposed else weight), (
            module.bias.detach() if getattr(module, "bias", None) is not None else None
        )
