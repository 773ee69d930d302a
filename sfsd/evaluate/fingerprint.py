"""Identify a model by its weights, for cache keys."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from sfsd.offload import state_items


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model class and every state-dict entry's name, shape, dtype and bytes.

    Two models with the same weights get the same fingerprint wherever they were loaded from;
    any changed weight (a compressed layer, another rank) changes it. Hashing reads every byte
    (about a second per GB). Callers that already know what a model is can pass their own
    `model_key` to the evaluation functions instead, e.g. "smollm2-135m|svd-llm|ranks=<hash>";
    the key must then change whenever the weights or the tokenizer do. A model dispatched by accelerate
    (device map, disk offload) gets the fingerprint of the same weights loaded in memory.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in state_items(model):
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        if flat.numel():
            digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()
