"""Modules of a model dispatched by accelerate (device map, CPU or disk offload): read and replace them.

An offloaded module keeps its weights on the meta device and an accelerate hook that brings them in for
each forward pass. Reading its weight therefore needs the hook's help, and a module put in its place must
be created where the hook would have run it (its execution device).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn


def is_dispatched(module: nn.Module) -> bool:
    """True if accelerate manages this module or any module inside it."""
    return any(hasattr(m, "_hf_hook") for m in module.modules())


def onloaded(module: nn.Module):
    """A context in which an offloaded module's (and its children's) weights are real tensors."""
    if not is_dispatched(module):
        return nullcontext()
    from accelerate.utils import align_module_device

    return align_module_device(module)


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its accelerate execution device, else where its weights are."""
    hook = getattr(module, "_hf_hook", None)
    device = getattr(hook, "execution_device", None)
    if device is not None:
        return torch.device(device if not isinstance(device, int) else f"cuda:{device}")
    for tensor in (*module.parameters(), *module.buffers()):
        if tensor.device.type != "meta":
            return tensor.device
    return torch.device("cpu")


def like_tensor(module: nn.Module) -> torch.Tensor:
    """A tensor with the dtype of `module`'s weights on the device where a replacement should live."""
    weight = next(module.parameters())
    if weight.device.type != "meta":
        return weight
    return torch.empty(0, dtype=weight.dtype, device=execution_device(module))


