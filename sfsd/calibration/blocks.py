"""Calibration one decoder block at a time: the states entering the first block, then each block in turn.

The model's own forward computes what the blocks receive besides the hidden states (the attention mask
of each block's attention type, rotary cos/sin, position ids). We capture those by running the model
once with every block replaced by a recorder that passes the states through untouched (as SliceGPT and
llm-compressor capture the first layer's inputs), so any architecture's per-block arguments are exact.
Afterwards each block runs alone on the captured states: peak memory is one block, its statistics and
the calibration states, whatever the depth.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from sfsd.adapters import LinearLayer, ModelAdapter
from sfsd.calibration.statistics import Statistics, StatisticsHooks


class _Recorder(nn.Module):
    """Stands in for a block during the capture: records its call's arguments, returns the states as given."""

    def __init__(self, block: nn.Module, calls: list):
        super().__init__()
        object.__setattr__(self, "_block", block)  # not registered: the block's weights are not touched
        object.__setattr__(self, "_calls", calls)

    def __getattr__(self, name: str):  # the model's loop may read block attributes (attention_type)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_block"), name)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        self._calls.append((hidden_states, args, kwargs))
        return hidden_states


def to_device(value, device: torch.device, memo: dict):
    """Move tensors inside nested args to `device`, once per tensor object (blocks share masks and rotary)."""
    if isinstance(value, torch.Tensor):
        if id(value) not in memo:
            memo[id(value)] = value.to(device)
        return memo[id(value)]
    if isinstance(value, tuple):
        return tuple(to_device(v, device, memo) for v in value)
    if isinstance(value, list):
        return [to_device(v, device, memo) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device, memo) for k, v in value.items()}
    return value


@dataclass
class BlockBatch:
    """One calibration batch at a block boundary: the states, the block arguments, the non-padding mask."""

    states: torch.Tensor
    block_args: list[tuple[tuple, dict]]  # per block: (positional args after the states, keyword args)
    tokens: torch.Tensor  # bool (batch, seq): True where the token is not padding


@contextmanager
def _recording(adapter: ModelAdapter, calls: list[list]):
    blocks = adapter.blocks
    originals = list(blocks)
    try:
        for i, block in enumerate(originals):
            blocks[i] = _Recorder(block, calls[i])
        yield
    finally:
        for i, block in enumerate(originals):
            blocks[i] = block


def capture_block_inputs(model: nn.Module, adapter: ModelAdapter, input_ids: torch.Tensor,
                         attention_mask: torch.Tensor, batch_size: int, device: torch.device,
                         host: torch.device | str = "cpu") -> list[BlockBatch]:
    """The states entering block 0 and every block's call arguments, per batch, kept on `host`.

    Only the modules outside the blocks (embeddings, rotary, norms) run, on `device`; the blocks stay
    where they are.
    """
    moved = _move_outside_blocks(model, adapter, device)
    backbone = getattr(model, "base_model", model)
    pin = torch.device(device).type == "cuda" and torch.cuda.is_available()
    result = []
    try:
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                ids = input_ids[start : start + batch_size].to(device)
                mask = attention_mask[start : start + batch_size].to(device)
                calls: list[list] = [[] for _ in range(adapter.num_blocks)]
                with _recording(adapter, calls):
                    backbone(input_ids=ids, attention_mask=mask, use_cache=False)
                memo: dict = {}
                states = calls[0][0][0].to(host)
                result.append(BlockBatch(
                    states.pin_memory() if pin else states,
                    [to_device((args, kwargs), torch.device(host), memo) for _, args, kwargs in (c[0] for c in calls)],
                    mask.bool().to(host),
                ))
    finally:
        for table, key, where in moved:
            table[key].data = table[key].data.to(where)
    return result


def _move_outside_blocks(model: nn.Module, adapter: ModelAdapter, device: torch.device) -> list:
    """Put every parameter and buffer outside the blocks on `device`; return (table, key, old device) of each."""
    blocks = adapter.blocks
    block_ids = {id(b) for b in blocks}
    target = torch.device(device)
    moved = []

    def visit(module: nn.Module):
        if module is blocks or id(module) in block_ids:
            return
        for table in (module._parameters, module._buffers):
            for key, tensor in table.items():
                if tensor is not None and tensor.device not in (target, torch.device("meta")):
                    moved.append((table, key, tensor.device))
                    tensor.data = tensor.data.to(target)
        for child in module.children():
            visit(child)

    visit(model)
    return moved


def block_outputs(out) -> torch.Tensor:
    """A block's output states (transformers 5 returns the tensor, older versions a tuple)."""
    return out[0] if isinstance(out, tuple) else out


def run_block(block: nn.Module, index: int, batches: list[BlockBatch], device: torch.device,
              layers: Iterable[LinearLayer] = (), model: nn.Module | None = None,
              sides: Mapping[str, str] | None = None) -> dict[str, Statistics]:
    """Run every batch through block `index` (on `device`) and replace each batch's states by its outputs.

    With `layers` (of this block), the same hooks as `collect_statistics` gather their statistics on
    `device` (padding excluded, each group on the side `sides` gives it), exactly as a full-model pass would.
    """
    with StatisticsHooks(model, layers, device, sides) as hooks, torch.no_grad():
        for batch in batches:
            memo: dict = {}
            args, kwargs = to_device(batch.block_args[index], device, memo)
            hooks.tokens = batch.tokens.to(device)
            out = block_outputs(block(batch.states.to(device), *args, **kwargs))
            batch.states = out.to(batch.states.device)
    return hooks.stats
