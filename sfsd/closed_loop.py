"""Closed-loop calibration (issue 25, levers 1 and 2): each layer is fit on the inputs it will actually see.

Open loop (`sfsd.compress.stream_decompositions`), every block's statistics come from the original model's
activations. Closed loop, block by block and, inside a block, stage by stage (a stage is a shared-input group
in forward order: q/k/v, o, gate/up, down), the statistics come from the model whose earlier blocks and earlier
stages are already compressed at their final ranks (as SliceGPT's sequential PCA and SVD-LLM's sequential
update do): q/k/v on the compressed stream, o_proj with compressed q/k/v, gate/up with the compressed
attention, down with compressed gate/up. The states passed on to the next block are the compressed block's.

`anchored` goes further: the same compressed inputs x', but each layer is fit to the ORIGINAL model's outputs
W x + b0 (`sfsd.decompose.anchored`), so a layer corrects the error of what precedes it. Its paired statistics
come from running the original block on the original stream and the compressed block on the compressed stream
in lockstep (same batches, one hook on the stage's first layer for both).

Cost, per decomposed block of S stages: S statistics passes (each stops at the stage's last layer) plus one pass
of the compressed block (vs one pass open loop); anchored runs each stage twice (original and compressed, both
stopping at the stage's first layer) and passes both streams on, so about twice that, and the original
stream's states are held too (one more copy of the calibration states). The statistics cache is not used (the
statistics depend on the ranks upstream); decompositions are cached and resumed as open loop, under a key that
holds the stream and a hash of the ranks.

This module holds the per-block pieces; the loop over blocks (`sfsd.compress.stream_closed_loop`) sits beside the
open-loop one, so that the compressor imports this module and not the other way round.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from sfsd.adapters import LinearLayer, ModelAdapter
from sfsd.calibration import StatisticsHooks
from sfsd.calibration.blocks import BlockBatch, block_outputs, to_device
from sfsd.calibration.paired import PairedStatistics
from sfsd.decompose import (
    Decomposition,
    apply_ranks,
    fit_decompositions,
    get_method,
    set_module,
)
from sfsd.decompose import anchored as anchored_fit
from sfsd.errors import SfsdError
from sfsd.offload import onloaded
from sfsd.options import CALIBRATION_STREAMS, OPEN_LOOP

STREAMS = CALIBRATION_STREAMS  # declared with their option (sfsd.options)
CLOSED_LOOP, ANCHORED = STREAMS[1:]


def check_stream(stream: str, method: str) -> None:
    """Refuse, in one line, a stream the method cannot use."""
    if stream not in STREAMS:
        raise SfsdError(f"unknown calibration stream {stream!r}: choose one of {', '.join(STREAMS)}")
    if stream == OPEN_LOOP:
        return
    chosen = get_method(method) if method != "none" else None
    if chosen is None or chosen.structured or not chosen.needs_calibration:
        raise SfsdError(f"--calibration-stream {stream} changes the statistics a layer method is fit on; {method} "
                        "has none to change: leave it at open-loop")
    if stream == ANCHORED and method != "feature":
        raise SfsdError("--calibration-stream anchored is a feature-space fit (reduced-rank regression onto the "
                        "original outputs): use it with --method feature, or choose closed-loop")


def stream_key_fields(stream: str, ranks: Mapping[str, int] | None) -> dict:
    """What a decomposition key adds for a closed-loop stream (nothing open loop, so existing keys stay valid):
    the stream, a hash of every rank (closed-loop decompositions depend on the ranks upstream) and, anchored,
    the ridge."""
    if stream == OPEN_LOOP:
        return {}
    text = json.dumps(dict(sorted((ranks or {}).items())), sort_keys=True)
    fields = {"stream": stream, "ranks": hashlib.sha256(text.encode()).hexdigest()[:16]}
    if stream == ANCHORED:
        fields["anchor_ridge"] = anchored_fit.ANCHOR_RIDGE
    return fields


def stages(layers: list[LinearLayer]) -> list[list[LinearLayer]]:
    """A block's layers cut into shared-input groups, in forward order."""
    result: list[list[LinearLayer]] = []
    for layer in layers:
        if result and result[-1][0].input_group == layer.input_group:
            result[-1].append(layer)
        else:
            result.append([layer])
    return result


class _Stop(Exception):
    """Raised by a hook once a pass has what it needs: the rest of the block does not run."""


@contextmanager
def _hooked(module: nn.Module, pre: bool, hook) -> Iterator[None]:
    handle = module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def swapped(model: nn.Module, modules: Mapping[str, nn.Module]) -> Iterator[None]:
    """The named submodules replaced by `modules` (the original layers) for the block, then put back."""
    replaced = {name: set_module(model, name, module) for name, module in modules.items()}
    try:
        yield
    finally:
        for name, module in replaced.items():
            set_module(model, name, module)


def _call(block: nn.Module, states: torch.Tensor, batch: BlockBatch, index: int, device: torch.device):
    args, kwargs = to_device(batch.block_args[index], device, {})
    try:
        return block_outputs(block(states.to(device), *args, **kwargs))
    except _Stop:
        return None


def stage_statistics(model: nn.Module, block: nn.Module, index: int, batches: list[BlockBatch],
                     device: torch.device, stage: list[LinearLayer], sides: Mapping[str, str]) -> dict:
    """The stage's statistics on the (compressed) states of `batches`, through the block as it is now (its
    earlier stages already swapped); the pass stops after the stage's last layer."""
    def stop(*_):
        raise _Stop

    last = model.get_submodule(stage[-1].name)
    with StatisticsHooks(model, stage, device, sides) as hooks, _hooked(last, False, stop), torch.no_grad():
        for batch in batches:
            hooks.tokens = batch.tokens.to(device)
            _call(block, batch.states, batch, index, device)
    return hooks.stats


def paired_statistics(model: nn.Module, block: nn.Module, index: int, batches: list[BlockBatch],
                      original: list[torch.Tensor], device: torch.device, stage: list[LinearLayer],
                      originals: Mapping[str, nn.Module]) -> PairedStatistics:
    """The stage's paired statistics: per batch, x from the original block (earlier stages' original layers put
    back) on the original stream, then x' from the compressed block on the compressed stream."""
    first = model.get_submodule(stage[0].name)
    seen: list[torch.Tensor] = []
    rows: list[torch.Tensor | None] = [None]

    def capture(_module, args):
        x = args[0]
        seen.append(x if rows[0] is None else x[rows[0]])
        raise _Stop

    paired = PairedStatistics.empty(stage[0].d_in, device)
    with _hooked(first, True, capture), torch.no_grad():
        for batch, states in zip(batches, original, strict=True):
            mask = batch.tokens.to(device)
            rows[0] = None if bool(mask.all()) else mask
            seen.clear()
            with swapped(model, originals):
                _call(block, states, batch, index, device)
            _call(block, batch.states, batch, index, device)
            paired.add(seen[0], seen[1])
    return paired


def fit_block(model: nn.Module, adapter: ModelAdapter, block: nn.Module, index: int, layers: list[LinearLayer],
              method: str, ranks: Mapping[str, int], batches: list[BlockBatch], original: list[torch.Tensor] | None,
              device: torch.device, sides: Mapping[str, str], stream: str
              ) -> tuple[dict[str, Decomposition], dict[str, nn.Module]]:
    """Decompose and swap a block's layers stage by stage; return the decompositions and the original layers."""
    decs: dict[str, Decomposition] = {}
    originals: dict[str, nn.Module] = {}
    for stage in stages(layers):
        if stream == ANCHORED:
            paired = paired_statistics(model, block, index, batches, original, device, stage, originals)
            found = {}
            for layer in stage:
                module = model.get_submodule(layer.name)
                with onloaded(module):
                    weight, bias = adapter.weight_and_bias(module)
                    found[layer.name] = anchored_fit.anchored_feature(
                        weight.to(paired.device), None if bias is None else bias.to(paired.device), paired)
        else:
            stats = stage_statistics(model, block, index, batches, device, stage, sides)
            found = fit_decompositions(adapter, stage, method, stats, progress=False)
            del stats
        originals.update(apply_ranks(model, found, {layer.name: ranks[layer.name] for layer in stage}))
        decs.update(found)
    return decs, originals


def forward_streams(model: nn.Module, block: nn.Module, index: int, batches: list[BlockBatch],
                    original: list[torch.Tensor] | None, device: torch.device,
                    originals: Mapping[str, nn.Module]) -> None:
    """Pass both streams on: the compressed block's outputs replace the batches' states; the original stream
    (anchored only) goes through the block with its original layers put back."""
    with torch.no_grad():
        if original is not None:
            with swapped(model, originals):
                for i, batch in enumerate(batches):
                    original[i] = _call(block, original[i], batch, index, device).to(original[i].device)
        for batch in batches:
            batch.states = _call(block, batch.states, batch, index, device).to(batch.states.device)
