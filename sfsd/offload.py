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




def input_device(model: nn.Module) -> torch.device:
    """Where a model's token ids belong: its input embeddings' execution device when accelerate dispatched
    it (the first parameter may sit on disk, as a meta tensor), else where its first parameter is."""
    if is_dispatched(model):
        return execution_device(model.get_input_embeddings())
    return next(model.parameters()).device


def own_tensors(module: nn.Module):
    """(name, tensor) of the module's own parameters and persistent buffers, in `state_dict` order."""
    for name, param in module._parameters.items():
        if param is not None:
            yield name, param
    for name, buffer in module._buffers.items():
        if buffer is not None and name not in module._non_persistent_buffers_set:
            yield name, buffer


def state_items(model: nn.Module):
    """(name, tensor) like `model.state_dict().items()`, with offloaded weights read through their hooks
    (one module at a time, so no more than one module's weights are brought in at once)."""
    if not is_dispatched(model):
        yield from model.state_dict().items()
        return
    for prefix, module in model.named_modules(remove_duplicate=False):
        with onloaded(module) if hasattr(module, "_hf_hook") else nullcontext():
            for name, tensor in own_tensors(module):
                yield f"{prefix}.{name}" if prefix else name, tensor
