"""Parameter and MAC accounting of (compressed) models."""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from sfsd.adapters import LinearLayer
from sfsd.decompose import TWO_FACTOR, factor_params, layer_beta, overall_budget
from sfsd.offload import execution_device


def count_parameters(model: nn.Module) -> int:
    """All parameters, embeddings included, tied weights counted once (the paper's #Params)."""
    return sum(p.numel() for p in model.parameters())


def layer_params(layer: LinearLayer, rank: int | None, has_bias: bool, factors: str = TWO_FACTOR) -> int:
    """Parameters of one layer at `rank` (None: intact) in the factor format `factors`, its bias included."""
    weights = layer.params if rank is None else factor_params(rank, layer.d_in, layer.d_out, factors)
    return weights + (layer.d_out if has_bias else 0)


def measure_macs(model: nn.Module, seq_len: int = 128, batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass over `batch` x `seq_len` tokens, by torch's flop counter."""
    device = execution_device(model)  # not meta, for a model whose first weights accelerate offloaded
    vocab = getattr(model.config, "vocab_size", 1000)
    ids = torch.randint(0, vocab, (batch, seq_len), device=device, generator=None)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(input_ids=ids, use_cache=False)
    return counter.get_total_flops() // 2


def layer_table(layers: list[LinearLayer], ranks: Mapping[str, int], biases: Mapping[str, bool],
                factors: str = TWO_FACTOR) -> pd.DataFrame:
    """Per-layer ranks and parameters (counted in the factor format `factors`): block, role, d_in, d_out, rank, beta,
    params, params_full, intact."""
    rows = []
    for layer in layers:
        rank = ranks.get(layer.name)
        rows.append({
            "name": layer.name,
            "block": layer.block,
            "role": layer.role,
            "d_in": layer.d_in,
            "d_out": layer.d_out,
            "rank": rank if rank is not None else min(layer.d_in, layer.d_out),
            "beta": layer_beta(rank, layer.d_in, layer.d_out, factors),
            "params": layer_params(layer, rank, biases.get(layer.name, False), factors),
            "params_full": layer.params,
            "intact": rank is None,
        })
    return pd.DataFrame(rows)


def budget_summary(layers: list[LinearLayer], ranks: Mapping[str, int]) -> dict[str, float]:
    return {"overall_budget": overall_budget(layers, ranks), "layers_decomposed": len(ranks),
            "layers_total": len(layers)}
