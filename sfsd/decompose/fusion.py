"""Shared first factors: the thin layers of one input group (q/k/v; gate/up) run their first GEMM as one.

The outputs are those of the separate layers up to float rounding (the same products, computed as one
wider GEMM). `fuse_shared_inputs` does it in place and returns what a saved config records of it
(`sfsd_fused`: group module name -> member layer names, in the order of the stacked rows);
`install_fused_layers` rebuilds that structure, uninitialised, before `from_pretrained` loads the weights.

Compact layers (`CompactLowRankLinear`, Eq. ID) are left separate: each has its own pivot columns of the input, so
their first factors have no common form to stack without giving back the weights the compaction saved.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sfsd.adapters import adapter_for
from sfsd.decompose.lowrank import CompactLowRankLinear, LowRankLinear, SharedInputFirst, SharedInputLowRank

LOW_RANK_TYPES = (LowRankLinear, SharedInputLowRank, CompactLowRankLinear)


def _set(model: nn.Module, name: str, module: nn.Module | None) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if module is None:
        delattr(parent, child)
    else:
        setattr(parent, child, module)


def unfuse_shared_inputs(model: nn.Module) -> None:
    """Turn every shared-input member back into a LowRankLinear and drop the group modules (in place)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, SharedInputLowRank):
            second = module.second
            _set(model, name, LowRankLinear.from_factors(module.first_weight.detach(), second.weight.detach(),
                                                         None if second.bias is None else second.bias.detach(),
                                                         second.weight))
    for name, module in list(model.named_modules()):
        if isinstance(module, SharedInputFirst):
            _set(model, name, None)


def _group_name(parent: str, input_group: str) -> str:
    return f"{parent}.sfsd_{input_group.rpartition(':')[2]}"


def fuse_shared_inputs(model: nn.Module) -> dict[str, list[str]]:
    """Stack the first factors of every input group with two or more LowRankLinear layers (in place).

    Already fused groups are first undone, so that the result depends only on which layers are low rank
    now (a layer swapped since the last fusion is handled like any other). Returns the `sfsd_fused` record.
    """
    unfuse_shared_inputs(model)
    groups: dict[str, list[str]] = {}
    for layer in adapter_for(model).layers():
        groups.setdefault(layer.input_group, []).append(layer.name)
    fused = {}
    for input_group, names in groups.items():
        members = [name for name in names if type(model.get_submodule(name)) is LowRankLinear]
        parents = {name.rpartition(".")[0] for name in members}
        if len(members) < 2 or len(parents) != 1:
            continue
        modules = [model.get_submodule(name) for name in members]
        like = modules[0].first.weight
        if any(m.first.weight.device != like.device or m.first.weight.dtype != like.dtype for m in modules):
            continue  # layers split across devices (a device map) stay separate
        group_name = _group_name(parents.pop(), input_group)
        group = SharedInputFirst(modules[0].in_features, [m.rank for m in modules], like.device, like.dtype)
        with torch.no_grad():
            group.weight.copy_(torch.cat([m.first.weight for m in modules]))
        _set(model, group_name, group)
        for index, (name, old) in enumerate(zip(members, modules, strict=True)):
            member = SharedInputLowRank(group, index, old.out_features, old.second.bias is not None, like.device,
                                        like.dtype)
            member.second = old.second  # the same parameters, moved over as they are
            _set(model, name, member)
        fused[group_name] = members
    return fused


def install_fused_layers(model: nn.Module, layers: dict[str, dict[str, Any]], fused: dict[str, list[str]]) -> set[str]:
    """Put uninitialised shared-input groups of the recorded shapes in place; return the member names."""
    done = set()
    for group_name, members in fused.items():
        specs = [layers[name] for name in members]
        like = next(model.get_submodule(members[0]).parameters())
        group = SharedInputFirst(specs[0]["d_in"], [s["rank"] for s in specs], like.device, like.dtype)
        _set(model, group_name, group)
        for index, (name, spec) in enumerate(zip(members, specs, strict=True)):
            _set(model, name, SharedInputLowRank(group, index, spec["d_out"], spec["bias"], like.device, like.dtype))
            done.add(name)
    return done
