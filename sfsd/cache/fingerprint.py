"""The content fingerprint of a model's weights: how every cache key identifies them."""

from __future__ import annotations

from torch import nn

from sfsd.cache.hashing import tensors_sha256
from sfsd.offload import state_items


def model_fingerprint(model: nn.Module) -> str:
    """sha256 over the model class and every state-dict entry's name, shape, dtype and bytes.

    Two models with the same weights get the same fingerprint wherever they were loaded from; any
    changed weight (a compressed layer, another rank, a byte edited in place in the checkpoint) changes
    it. Hashing reads every byte, about a second per GB: ~1 s for the default SmolLM2-135M in float32,
    ~10-25 s for a 7B model in bfloat16 (13.5 GB; sha256 runs at 0.6-1.5 GB/s on one core), small
    next to a 7B compression (minutes per block on a CPU). Callers that already know what a model is
    can pass their own `model_key` to the evaluation functions instead, e.g.
    "smollm2-135m|svd-llm|ranks=<hash>"; the key must then change whenever the weights or the
    tokenizer do. A model dispatched by accelerate (device map, disk offload) gets the fingerprint of
    the same weights loaded in memory.
    """
    return tensors_sha256(state_items(model), prefix=type(model).__name__)
