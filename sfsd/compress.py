"""The compression engine: calibrate, decompose, choose ranks, swap layers, save and describe."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sfsd import options
from sfsd.accounting import count_parameters, layer_table, measure_macs
from sfsd.adapters import LinearLayer, ModelAdapter, adapter_for
from sfsd.atomic import atomic_dir
from sfsd.cache import cache_key, model_fingerprint, tensors_sha256
from sfsd.calibration import (
    Statistics,
    capture_block_inputs,
    choose_sides,
    collect_statistics,
    run_block,
    statistics_entries,
)
from sfsd.calibration.cache import STATISTICS_FORMAT, StatisticsCache
from sfsd.closed_loop import ANCHORED, check_stream, fit_block, forward_streams, stream_key_fields
from sfsd.data.sequences import bos_id, key_fields, prepend_bos, starts_with_bos
from sfsd.decompose import (
    DECOMPOSITION_FORMAT,
    TWO_FACTOR,
    Decomposition,
    apply_ranks,
    check_beta,
    check_factors,
    check_layer_method,
    decompositions_verified,
    fit_decompositions,
    get_method,
    load_decompositions,
    overall_budget,
    save_decompositions,
    uniform_ranks,
    validate_ranks,
)
from sfsd.errors import SfsdError
from sfsd.hf_classes import factors_of, mark_compressed
from sfsd.offload import execution_device, is_dispatched
from sfsd.paths import cache_dir

log = logging.getLogger(__name__)


@dataclass(kw_only=True)
class CalibrationSpec:
    """Where calibration text comes from and how much of it (the paper: 512 x 128 tokens)."""

    source: str = options.CALIB_SOURCE.field()
    samples: int = options.CALIB_SAMPLES.field()
    seq_len: int = options.CALIB_SEQ_LEN.field()
    seed: int = options.SEED.field()

    def __post_init__(self):
        if self.samples < 1 or self.seq_len < 2:
            raise SfsdError("calibration needs at least 1 sample of 2 tokens: raise --calib-samples/--calib-seq-len")


def calibration_tokens(tokenizer, spec: CalibrationSpec, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the calibration set from the data pack (or random ids for tests); each sequence
    starts with BOS where the model's do (`sfsd.data.sequences`)."""
    if spec.source == "random":
        bos = starts_with_bos(tokenizer)
        gen = torch.Generator().manual_seed(spec.seed)
        ids = torch.randint(0, vocab_size, (spec.samples, spec.seq_len - bos), generator=gen)
        ids = prepend_bos(ids, bos_id(tokenizer)) if bos else ids
        return ids, torch.ones_like(ids)
    from sfsd.data import calibration_tokens as pack_tokens

    data = pack_tokens(tokenizer, spec.source, spec.samples, spec.seq_len, spec.seed)
    return data.input_ids, data.attention_mask


BlockCallback = Callable[[int, dict[str, Decomposition]], None]


def _block_folder(folder: Path, block: int) -> Path:
    return folder / f"block-{block:04d}"


def stream_decompositions(
    model: nn.Module, tokenizer: Any, layers: list[LinearLayer], method: str, calibration: CalibrationSpec,
    folder: str | Path | None = None, batch_size: int = 16, device: torch.device | str | None = None,
    progress: bool = True, on_block: BlockCallback | None = None, timings: dict | None = None,
    statistics_cache: bool = False, weights: str | None = None, stream: str = options.OPEN_LOOP,
    ranks: Mapping[str, int] | None = None,
) -> dict[str, Decomposition]:
    """Decompose `layers` one block at a time (the block-streaming engine behind compress, uniform, search).

    The calibration states entering block 0 are captured once, on the host. Then, block by block: the
    block moves to `device` (default: where it is), the states run through it with the statistics hooks,
    its layers are decomposed, the decompositions are written to `folder/block-NNNN` (atomically, with a
    checksum), the statistics are freed, the block's intact outputs become the next block's inputs, then
    `on_block(block, decompositions)` runs (compress swaps the layers there) and the block goes back.
    Blocks already in `folder` with a valid checksum are reused (resume). Without `on_block` the
    decompositions of all blocks are returned, on the host; with it, nothing is kept.

    Each group's statistics are kept on the side `choose_sides` picks for the method (the output side
    where cheaper, for the feature-space methods). With `statistics_cache`, they are also written to and
    read from the statistics cache (`statistics_folder`): blocks whose statistics are all there are
    decomposed from them, and no calibration pass runs when every block's are (`timings["forward_blocks"]`
    lists the blocks that ran a forward pass). `weights` is the model's `model_fingerprint` when the
    caller already has it (the statistics cache's key needs it; hashing again costs ~1 s per GB).

    `stream` closed-loop or anchored: the statistics come from the model compressed so far, at `ranks`
    (`sfsd.closed_loop`; the model's layers are swapped as it goes, and no statistics cache is used).
    """
    if stream != options.OPEN_LOOP:
        if ranks is None:
            raise SfsdError(f"--calibration-stream {stream} needs the ranks before decomposing: use sfsd compress "
                            "--beta/--ranks or sfsd uniform (a search decomposes once and slices ranks: open-loop)")
        folder = None if folder is None else Path(folder)
        return stream_closed_loop(model, tokenizer, layers, method, calibration, folder, batch_size, device, progress,
                                  on_block, {} if timings is None else timings, stream, ranks)
    from tqdm.auto import tqdm

    adapter = adapter_for(model)
    chosen = get_method(method)
    needs = chosen.needs_calibration
    sides = choose_sides(layers, chosen.output_statistics)
    by_block: dict[int, list[LinearLayer]] = {}
    for layer in layers:
        by_block.setdefault(layer.block, []).append(layer)
    folder = None if folder is None else Path(folder)
    done = {b for b in by_block if folder is not None and decompositions_verified(_block_folder(folder, b))}
    todo = sorted(set(by_block) - done)
    kept: dict[str, Decomposition] = {}
    timings = {} if timings is None else timings
    timings.setdefault("blocks", {})
    timings["forward_blocks"] = []

    def finish(block: int, decs: dict[str, Decomposition]) -> None:
        if on_block is not None:
            on_block(block, decs)
        else:
            kept.update({name: _to_host(dec) for name, dec in decs.items()})

    start = time.perf_counter()
    batches, cache, cached = None, None, set()
    if needs and todo:
        ids, mask = calibration_tokens(tokenizer, calibration, model.config.vocab_size)
        if statistics_cache:
            cache = StatisticsCache(statistics_folder(model, calibration, ids, mask, batch_size, weights))
            cached = {b for b in todo if all(cache.has(key, side)
                                             for key, (side, _) in statistics_entries(by_block[b], sides).items())}
            timings["statistics_cached_blocks"] = sorted(cached)
        if set(todo) - cached:
            compute = _compute_device(model, device)
            batches = capture_block_inputs(model, adapter, ids, mask, batch_size, compute)
            timings["capture_s"] = time.perf_counter() - start
    # the last block whose inputs are needed: the last one whose statistics must be computed
    last = max(set(todo) - cached) if batches is not None else -1

    def forward(module: nn.Module, dev: torch.device, block: int) -> None:
        timings["forward_blocks"].append(block)
        run_block(module, block, batches, dev)

    def statistics(module: nn.Module, dev: torch.device, block: int) -> dict[str, Statistics] | None:
        """The block's statistics: from the cache, else from its forward pass (then cached)."""
        if block in cached:
            stats = {key: cache.load(key, side, dev) for key, (side, _) in
                     statistics_entries(by_block[block], sides).items()}
            if any(value is None for value in stats.values()):
                raise SfsdError(f"the statistics cache {cache.folder} changed while in use: run the command again")
            if block < last:
                forward(module, dev, block)
            return stats
        if batches is None:
            return None
        timings["forward_blocks"].append(block)
        stats = run_block(module, block, batches, dev, by_block[block], model, sides)
        if cache is not None:
            for key, value in stats.items():
                cache.save(key, value)
        return stats

    for block in tqdm(range(adapter.num_blocks), desc=f"blocks ({method})", unit="block", disable=not progress):
        passes_on = block < last  # a later block needs this block's outputs
        if block in done:
            decs = load_decompositions(_block_folder(folder, block), _block_device(adapter, block, device))
            if passes_on:
                _with_block_on(adapter, block, device, lambda m, dev, b=block: forward(m, dev, b))
            finish(block, decs)
        elif block in by_block:
            began = time.perf_counter()
            _with_block_on(adapter, block, device,
                           lambda m, dev, b=block: _decompose_block(statistics(m, dev, b), adapter, by_block[b],
                                                                    method, folder, b, finish))
            timings["blocks"][block] = time.perf_counter() - began
            log.info("block %d decomposed in %.1f s", block, timings["blocks"][block])
        elif passes_on:
            _with_block_on(adapter, block, device, lambda m, dev, b=block: forward(m, dev, b))
    return {layer.name: kept[layer.name] for layer in layers if layer.name in kept}  # in forward order


def _decompose_block(stats: dict[str, Statistics] | None, adapter: ModelAdapter, layers: list[LinearLayer],
                     method: str, folder: Path | None, block: int, finish: BlockCallback) -> None:
    """One block's decompositions from its statistics (its outputs already passed on), saved, then passed on."""
    decs = fit_decompositions(adapter, layers, method, stats, progress=False)
    del stats  # the statistics of one block are all that is ever held
    if folder is not None:
        save_decompositions(decs, _block_folder(folder, block))
    finish(block, decs)


def _to_host(dec: Decomposition) -> Decomposition:
    for name in ("basis", "coeffs", "spectrum", "bias", "mean_shift"):
        value = getattr(dec, name)
        if value is not None:
            setattr(dec, name, value.cpu())
    return dec


def _compute_device(model: nn.Module, device: torch.device | str | None) -> torch.device:
    if device is not None and not is_dispatched(model):
        return torch.device(device)
    return execution_device(model)


def _block_device(adapter: ModelAdapter, block: int, device: torch.device | str | None) -> torch.device:
    module = adapter.blocks[block]
    return torch.device(device) if device is not None and not is_dispatched(module) else execution_device(module)


def _with_block_on(adapter: ModelAdapter, block: int, device, work: Callable[[nn.Module, torch.device], Any]):
    """Run `work(block module, device)` with the block on the compute device, then put it back.

    A block that accelerate dispatched (device map, offload) stays where it is: its hooks bring its
    weights in for each forward pass and `fit_decompositions` onloads them itself.
    """
    module = adapter.blocks[block]
    if is_dispatched(module):
        return work(module, execution_device(module))
    home = next(module.parameters()).device
    compute = torch.device(device) if device is not None else home
    module.to(compute)
    try:
        return work(module, compute)
    finally:
        module.to(home)
        if compute.type == "cuda":
            torch.cuda.empty_cache()


def decomposition_folder(model: nn.Module, method: str, calibration: CalibrationSpec, names: list[str],
                         weights: str | None = None, bos: bool = False, stream: Mapping | None = None) -> Path:
    """Where the streamed decompositions of these layers of this model are kept (and resumed from), the
    same folder for `compress` (so `sfsd compress`, `sfsd uniform`, Table 1) and the search.

    The key covers the weights' content (`weights`: their `model_fingerprint`, hashed here unless the
    caller already has it), where the model was loaded from, dtype, method, calibration, layers and
    `DECOMPOSITION_FORMAT`: weights edited in place (same size and time) or factors from older maths
    are never reused. `bos`: the calibration sequences start with BOS (`sfsd.data.sequences`; only then is it
    in the key, so the folders of models without BOS keep theirs). `stream`: `closed_loop.stream_key_fields`
    of a closed-loop run (empty open loop: the folders of open-loop runs keep theirs).
    """
    key = cache_key("decompositions", DECOMPOSITION_FORMAT, weights=weights or model_fingerprint(model),
                    model=str(getattr(model.config, "name_or_path", "") or ""),
                    dtype=str(next(model.parameters()).dtype), method=method, calibration=asdict(calibration),
                    layers=list(names), **key_fields(bos), **(stream or {}))
    return cache_dir() / "decompositions" / f"{method}-{key}"


def statistics_folder(model: nn.Module, calibration: CalibrationSpec, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, batch_size: int, weights: str | None = None) -> Path:
    """Where the calibration statistics of this model on these tokens are cached (see `StatisticsCache`).

    Shared by every method and layer choice: the entries inside are named by layer or group and side.
    The key covers the weights' content (`weights`: their `model_fingerprint`, hashed here unless given;
    a layer already swapped for a low-rank one changes it), dtype, the calibration spec and a hash of
    the very token ids and mask (so a changed tokenizer or data pack is a miss), the batch size (it
    sets how the float32 batch Grams are summed) and `STATISTICS_FORMAT`.
    """
    tokens = tensors_sha256([("input_ids", input_ids.to(torch.int64)),
                             ("attention_mask", attention_mask.to(torch.int64))])
    key = cache_key("statistics", STATISTICS_FORMAT, weights=weights or model_fingerprint(model),
                    dtype=str(next(model.parameters()).dtype), calibration=asdict(calibration), tokens=tokens,
                    batch_size=batch_size)
    return cache_dir() / "statistics" / key


def low_rank_specs(model: nn.Module, names) -> dict[str, dict[str, Any]]:
    """What config.json records of each swapped layer, read from the modules themselves."""
    specs = {}
    for name in names:
        module = model.get_submodule(name)
        d_out, d_in = module.sfsd_shape
        specs[name] = {"rank": module.rank, "d_in": d_in, "d_out": d_out, "bias": module.second.bias is not None}
    return specs


@dataclass
class Compressor:
    """Holds a model, its statistics and full decompositions, so that any rank choice is cheap."""

    model: nn.Module
    tokenizer: Any
    method: str = "feature"
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    blocks: list[int] | None = None
    roles: list[str] | None = None
    layer_names: list[str] | None = None  # restrict to these layers (after blocks and roles)
    batch_size: int = 16
    progress: bool = True
    folder: Path | None = None  # streamed decompositions are written (and resumed from) here
    device: torch.device | str | None = None  # where each block runs (default: where the model is)
    statistics_cache: bool = True  # reuse (and write) the cached statistics of this model and calibration
    weights: str | None = None  # the model's model_fingerprint, when the caller already hashed it
    factors: str = TWO_FACTOR  # how the thin layers are stored and counted (sfsd.options.FACTORS)

    def __post_init__(self):
        check_layer_method(self.method)
        check_factors(self.factors)
        self.adapter: ModelAdapter = adapter_for(self.model)
        self.layers = self.adapter.layers(self.blocks, self.roles)
        if self.layer_names is not None:
            chosen = set(self.layer_names)
            self.layers = [layer for layer in self.layers if layer.name in chosen]
        self.all_layers = self.adapter.layers()
        self.stats: dict[str, Statistics] | None = None
        self.decompositions: dict[str, Decomposition] = {}
        self.timings: dict[str, float] = {}

    def collect(self) -> dict[str, Statistics]:
        """All chosen layers' statistics in one full-model pass (in memory), each group on the side
        `choose_sides` picks for the method."""
        if self.stats is None and get_method(self.method).needs_calibration:
            start = time.perf_counter()
            ids, mask = calibration_tokens(self.tokenizer, self.calibration, self.model.config.vocab_size)
            sides = choose_sides(self.layers, get_method(self.method).output_statistics)
            self.stats = collect_statistics(
                self.model, self.adapter, self.layers, ids, mask, self.batch_size, self.progress, sides
            )
            self.timings["calibration_s"] = time.perf_counter() - start
        return self.stats or {}

    def decompose(self) -> dict[str, Decomposition]:
        """Every chosen layer's full decomposition: streamed block by block, or from `collect()`'s statistics."""
        todo = [layer for layer in self.layers if layer.name not in self.decompositions]
        if todo and self.stats is None:
            start = time.perf_counter()
            self.decompositions.update(stream_decompositions(
                self.model, self.tokenizer, todo, self.method, self.calibration, self.folder, self.batch_size,
                self.device, self.progress, timings=self.timings, statistics_cache=self.statistics_cache,
                weights=self.weights))
            self.timings["decompose_s"] = time.perf_counter() - start
        elif todo:
            start = time.perf_counter()
            self.decompositions.update(fit_decompositions(self.adapter, todo, self.method, self.stats, self.progress))
            self.timings["decompose_s"] = time.perf_counter() - start
        return self.decompositions

    def uniform_ranks(self, beta: float, last_blocks: int) -> dict[str, int]:
        return uniform_ranks(self.layers, beta, last_blocks, self.adapter.num_blocks, self.factors)

    def apply(self, ranks: Mapping[str, int], description: dict | None = None) -> nn.Module:
        """Swap the ranked layers in place and turn the model into its saveable sfsd class."""
        ranks = validate_ranks(self.all_layers, dict(ranks), self.factors)
        decs = self.decompose()
        apply_ranks(self.model, decs, ranks, self.factors)
        layers = low_rank_specs(self.model, ranks)
        extra = {"overall_budget": overall_budget(self.all_layers, ranks, self.factors),
                 "calibration": asdict(self.calibration), **(description or {})}
        return mark_compressed(self.model, self.method, layers, extra, self.factors)


def check_compress_request(method: str, beta: float | None, calibration: CalibrationSpec,
                           slicing: float | None = None, factors: str = TWO_FACTOR) -> None:
    """Fail fast, before any model is loaded, on a bad method, budget, factor format or calibration source."""
    get_method(method)
    if beta is not None:
        check_beta(beta)
    check_factors_request(method, factors)
    if slicing is not None:
        check_slicing_request(method, slicing)
    if calibration.source != "random" and get_method(method).needs_calibration:
        from sfsd.data import CALIBRATION_SOURCES

        if calibration.source not in CALIBRATION_SOURCES:
            raise SfsdError(f"unknown calibration source {calibration.source!r}: choose one of "
                            f"{', '.join(CALIBRATION_SOURCES)}")
        from sfsd.data.calibration import require_source_data

        require_source_data(calibration.source)


def check_factors_request(method: str, factors: str) -> None:
    if check_factors(factors) != TWO_FACTOR and get_method(method).structured:
        raise SfsdError(f"{method} narrows whole layers and has no thin factors: --factors {factors} goes with a "
                        "decomposition method")


def check_slicing_request(method: str, slicing: float) -> None:
    from sfsd.decompose.slicing import check_slicing

    if method != "slicegpt":
        raise SfsdError(f"--slicing is SliceGPT's knob: use it with --method slicegpt, or give {method} a --beta")
    check_slicing(slicing)


def compress(
    model: nn.Module,
    tokenizer: Any,
    method: str = "feature",
    beta: float | None = None,
    last_blocks: int | None = None,
    ranks: Mapping[str, int] | None = None,
    calibration: CalibrationSpec | None = None,
    batch_size: int = 16,
    seq_len: int = 128,
    progress: bool = True,
    device: torch.device | str | None = None,
    timings: dict | None = None,
    slicing: float | None = None,
    factors: str = TWO_FACTOR,
    calibration_stream: str = options.OPEN_LOOP,
) -> nn.Module:
    """Compress `model` in place: the uniform protocol (beta, last_blocks) or explicit per-layer ranks
    (or, for slicegpt only, SliceGPT's own `slicing` fraction). `factors`: the format the thin layers are stored
    in, which Eq. 3 and the overall budget count (the decompositions, and their cache, are the same for both).

    The base model's parameters and MACs at `seq_len` are measured first and recorded in the config.
    Blocks stream through `device` one at a time (see `stream_decompositions`); each block's layers are
    swapped as soon as its decompositions exist, so no full set of decompositions is ever held, and a
    rerun after an interruption resumes from the decompositions already in the cache. `calibration_stream`:
    open-loop, closed-loop or anchored (`sfsd.closed_loop`).
    """
    if calibration_stream != options.OPEN_LOOP:
        check_stream(calibration_stream, method)
    if slicing is not None:
        check_slicing_request(method, slicing)
    if sum(x is not None for x in (beta, ranks, slicing)) != 1:
        raise SfsdError("give one budget: --beta (with --last-blocks), or --ranks FILE, or --slicing (slicegpt)")
    check_factors_request(method, factors)
    if get_method(method).structured:
        if ranks is not None:
            raise SfsdError(f"{method} has no per-layer ranks: give a budget (--beta, with --last-blocks)")
        if method == "slicegpt":
            return slice_uniform(model, tokenizer, beta, last_blocks, calibration or CalibrationSpec(), batch_size,
                                 seq_len, progress, slicing, device)
        return prune_uniform(model, tokenizer, method, beta, last_blocks, calibration or CalibrationSpec(),
                             batch_size, seq_len, progress)
    adapter = adapter_for(model)
    base = {"params": count_parameters(model), "macs": {str(seq_len): measure_macs(model, seq_len)}}
    if ranks is None:
        last_blocks = adapter.num_blocks if last_blocks is None else last_blocks
        ranks = uniform_ranks(adapter.layers(), beta, last_blocks, adapter.num_blocks, factors)
        description = {"protocol": "uniform", "beta": beta, "last_blocks": last_blocks}
    else:
        ranks = validate_ranks(adapter.layers(), dict(ranks), factors)
        description = {"protocol": "ranks"}
    chosen = [layer for layer in adapter.layers() if layer.name in ranks]
    calibration = calibration or CalibrationSpec()
    # One content hash per call, before any layer is swapped, shared by the decomposition and statistics
    # keys: ~1 s for the default model, ~10-25 s for a 7B model in bfloat16 (vs minutes per block).
    weights = model_fingerprint(model)
    folder = decomposition_folder(model, method, calibration, [layer.name for layer in chosen], weights,
                                  starts_with_bos(tokenizer), stream_key_fields(calibration_stream, ranks))

    def swap(_block: int, decs: dict[str, Decomposition]) -> None:  # the block's outputs are already passed on
        apply_ranks(model, decs, {name: ranks[name] for name in decs}, factors)

    stream_decompositions(model, tokenizer, chosen, method, calibration, folder, batch_size, device, progress,
                          on_block=swap, timings=timings, statistics_cache=True, weights=weights,
                          stream=calibration_stream, ranks=ranks)
    extra = {"overall_budget": overall_budget(adapter.layers(), ranks, factors), "calibration": asdict(calibration),
             "bos": starts_with_bos(tokenizer),
             **({"calibration_stream": calibration_stream} if calibration_stream != options.OPEN_LOOP else {}),
             **description, "base": base, "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    return mark_compressed(model, method, low_rank_specs(model, ranks), extra, factors)


def prune_uniform(model: nn.Module, tokenizer: Any, method: str, beta: float, last_blocks: int | None,
                  calibration: CalibrationSpec, batch_size: int = 16, seq_len: int = 128,
                  progress: bool = True) -> nn.Module:
    """Structured pruning at the parameters of the uniform protocol (in place): the pruned blocks' q/k/v/o/
    gate/up/down keep the share of their parameters that the thin layers of Eq. 3 keep at `beta` on the same
    blocks, so a pruned row of Table 1 has the same parameter count as its feature- and weight-space rows.

    Blocks: the last `last_blocks` (Table 1's protocol); None: LLM-Pruner's own range, its LLaMA-7B
    defaults (blocks 4..30 of 32) scaled to the model's depth. The Taylor importance is computed on the
    run's calibration text (the same tokens as the other rows)."""
    from sfsd.decompose.pruning import llm_pruner_blocks, prune

    check_beta(beta)
    adapter = adapter_for(model)
    n = adapter.num_blocks
    if last_blocks is not None and not 1 <= last_blocks <= n:
        raise SfsdError(f"--last-blocks must be in 1..{n} for this model, got {last_blocks}")
    blocks = llm_pruner_blocks(n) if last_blocks is None else list(range(n - last_blocks, n))
    chosen = [layer for layer in adapter.layers() if layer.block in set(blocks)]
    # Eq. 3's share of these layers' weights (uniform_ranks leaves out a layer a factorisation would not shrink)
    keep = overall_budget(chosen, uniform_ranks(chosen, beta, n - min(blocks), n))
    base = {"params": count_parameters(model), "macs": {str(seq_len): measure_macs(model, seq_len)}}
    ids, mask = calibration_tokens(tokenizer, calibration, model.config.vocab_size)
    start = time.perf_counter()
    try:
        record = prune(model, ids, blocks, keep, batch_size=batch_size, attention_mask=mask)
    except SfsdError as exc:
        if "keeps no" not in str(exc):
            raise
        raise SfsdError(f"--beta {beta} leaves llm-pruner too little ({exc}): choose a larger --beta") from exc
    extra = {"calibration": asdict(calibration), "bos": starts_with_bos(tokenizer), "protocol": "uniform",
             "beta": beta, "last_blocks": last_blocks,
             "blocks": blocks, "keep_fraction": record["keep_fraction"], "importance": record["kind"],
             "gqa": record["gqa"], "base": base, "prune_seconds": time.perf_counter() - start,
             "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    model.config.sfsd = extra
    model.config.sfsd["overall_budget"] = describe(model, macs=False)["overall_budget"]
    return model


def eq3_parameters(model: nn.Module, beta: float, last_blocks: int | None) -> int:
    """The parameters of `model` once Eq. 3's thin layers (weights only: the weight-space row of Table 1) replace
    the layers of the last `last_blocks` blocks (all blocks if None) at `beta`."""
    check_beta(beta)
    adapter = adapter_for(model)
    n = adapter.num_blocks
    last_blocks = n if last_blocks is None else last_blocks
    if not 1 <= last_blocks <= n:
        raise SfsdError(f"--last-blocks must be in 1..{n} for this model, got {last_blocks}")
    layers = {layer.name: layer for layer in adapter.layers()}
    ranks = uniform_ranks(list(layers.values()), beta, last_blocks, n)
    removed = sum(layers[name].params - rank * (layers[name].d_in + layers[name].d_out) for name, rank in ranks.items())
    return count_parameters(model) - removed


def slice_uniform(model: nn.Module, tokenizer: Any, beta: float | None, last_blocks: int | None,
                  calibration: CalibrationSpec, batch_size: int = 16, seq_len: int = 128, progress: bool = True,
                  slicing: float | None = None, device: torch.device | str | None = None) -> nn.Module:
    """SliceGPT on the whole model (in place), at SliceGPT's own `slicing` fraction (residual width rounded down
    to a multiple of 8, as their script) or at the total parameters of Table 1's weight-space row at (`beta`,
    `last_blocks`): the constant width whose sliced model (untied head and shortcuts included) comes closest.
    SliceGPT slices the residual stream that every block shares, so it cannot be confined to the last blocks:
    only the parameter count is matched."""
    from sfsd.decompose.slicing import (
        ROUND_INTERVAL,
        SliceWidths,
        check_sliceable,
        slice_model,
        width_for_params,
        width_for_slicing,
    )

    check_sliceable(model)
    if is_dispatched(model):
        raise SfsdError("slicegpt runs on a model held in one place: drop --device-map (use --device cuda or cpu)")
    if device is not None:  # the whole model on the compute device: every block is rotated and run there
        model.to(device)
    hidden, n = model.config.hidden_size, adapter_for(model).num_blocks
    target = None if slicing is not None else eq3_parameters(model, beta, last_blocks)
    width = width_for_slicing(hidden, slicing) if slicing is not None else width_for_params(model, target)
    base = {"params": count_parameters(model), "macs": {str(seq_len): measure_macs(model, seq_len)}}
    ids, mask = calibration_tokens(tokenizer, calibration, model.config.vocab_size)
    start = time.perf_counter()
    slice_model(model, ids, mask, SliceWidths.constant(hidden, n, width), batch_size, progress,
                slicing=1 - width / hidden, target_params=target,
                round_interval=ROUND_INTERVAL if slicing is not None else 1)
    model.config.sfsd = {"calibration": asdict(calibration), "bos": starts_with_bos(tokenizer),
                         "protocol": "uniform" if slicing is None else "slicing",
                         "beta": beta, "last_blocks": last_blocks, "slicing": slicing, "width": width,
                         "target_params": target, "base": base, "slice_seconds": time.perf_counter() - start,
                         "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    model.config.sfsd["overall_budget"] = describe(model, macs=False)["overall_budget"]
    return model


def save_compressed(model: nn.Module, tokenizer: Any, out: str | Path, overwrite: bool = False) -> Path:
    """Save as a Hugging Face folder (safetensors, config with ranks, tokenizer) atomically."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise SfsdError(f"{out} already exists: choose another --out or pass --overwrite")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out


def describe(model: nn.Module, seq_len: int = 128, macs: bool = True) -> dict[str, Any]:
    """Ranks, parameters, Appendix B budget and measured MACs of a (compressed) model."""
    adapter = adapter_for(model)
    layers = adapter.layers()
    specs = getattr(model.config, "sfsd_layers", None) or {}
    ranks = {name: spec["rank"] for name, spec in specs.items()}
    biases = {
        layer.name: specs[layer.name]["bias"] if layer.name in specs
        else getattr(model.get_submodule(layer.name), "bias", None) is not None
        for layer in layers
    }
    factors = factors_of(model.config)
    table = layer_table(layers, ranks, biases, factors)
    pruned = _pruned_widths(model, table)
    params = count_parameters(model)
    info = {
        "model_type": model.config.model_type,
        "method": getattr(model.config, "sfsd_method", None),
        "blocks": adapter.num_blocks,
        "roles": adapter.role_names(),
        "params": params,
        "params_linear": int(table["params"].sum()),
        "params_linear_full": int(table["params_full"].sum()),
        "overall_budget": _overall_budget(model, layers, ranks, table, pruned, params),
        "factors": factors,
        "layers_decomposed": len(ranks) + pruned,
        "layers_total": len(layers),
        "seq_len": seq_len,
        "table": table,
    }
    if macs:
        info["macs"] = measure_macs(model, seq_len)
    return info


def _overall_budget(model: nn.Module, layers: list[LinearLayer], ranks: Mapping[str, int], table: pd.DataFrame,
                    pruned: int, params: int) -> float:
    """Appendix B's budget; a pruned model's kept share of the pruned layers' weights; a sliced model's
    parameter-equivalent budget (`sfsd.decompose.slicing.equivalent_budget`: its shortcuts, narrower
    embedding and untied head are parameters too)."""
    sliced = getattr(model.config, "sfsd_sliced", None)
    if sliced:
        from sfsd.decompose.slicing import equivalent_budget

        return equivalent_budget(params, int(sliced["params_base"]), int(table["params_full"].sum()))
    if pruned:
        return float(table["params_weights"].sum() / table["params_full"].sum())
    return overall_budget(layers, ranks, factors_of(model.config))


def _pruned_widths(model: nn.Module, table: pd.DataFrame) -> int:
    """For a structurally pruned or sliced model: each narrowed layer's full parameters and kept share in
    `table` (in place; `params_weights` is the weights alone); the number of narrowed layers."""
    from sfsd.decompose.pruning import unpruned_weight_params
    from sfsd.decompose.slicing import unsliced_weight_params

    full = unpruned_weight_params(model) or unsliced_weight_params(model)
    if not full:
        return 0
    table["params_weights"] = table["d_in"] * table["d_out"]
    table["params_full"] = table["name"].map(full).fillna(table["params_full"]).astype(int)
    table["beta"] = table["params_weights"] / table["params_full"]
    table["intact"] = ~table["name"].isin(full)
    return len(full)


def info_as_json(info: dict[str, Any]) -> str:
    plain = {k: v for k, v in info.items() if not isinstance(v, pd.DataFrame)}
    return json.dumps(plain, indent=2)


def stream_closed_loop(
    model: nn.Module, tokenizer: Any, layers: list[LinearLayer], method: str, calibration, folder: Path | None,
    batch_size: int, device, progress: bool, on_block, timings: dict, stream: str, ranks: Mapping[str, int],
) -> dict[str, Decomposition]:
    """`stream_decompositions` closed loop (see `sfsd.closed_loop`): the model is compressed as it goes (each
    block's layers swapped at `ranks`), `on_block(block, decompositions)` runs after each decomposed block and,
    without it, the decompositions are returned (on the host)."""
    from tqdm.auto import tqdm

    check_stream(stream, method)
    missing = sorted(layer.name for layer in layers if layer.name not in ranks)
    if missing:
        raise SfsdError(f"closed-loop calibration needs every layer's rank before decomposing; {missing[0]} has none: "
                        "give --beta (with --last-blocks) or --ranks")
    adapter = adapter_for(model)
    sides = choose_sides(layers, get_method(method).output_statistics)
    by_block: dict[int, list[LinearLayer]] = {}
    for layer in layers:
        by_block.setdefault(layer.block, []).append(layer)
    done = {b for b in by_block if folder is not None and decompositions_verified(_block_folder(folder, b))}
    todo = sorted(set(by_block) - done)
    timings.setdefault("blocks", {})
    timings["forward_blocks"] = []
    kept: dict[str, Decomposition] = {}
    batches, original = None, None
    if todo:
        start = time.perf_counter()
        ids, mask = calibration_tokens(tokenizer, calibration, model.config.vocab_size)
        batches = capture_block_inputs(model, adapter, ids, mask, batch_size, _compute_device(model, device))
        timings["capture_s"] = time.perf_counter() - start
    last = max(todo) if todo else -1

    def work(module: nn.Module, dev: torch.device, block: int) -> None:
        nonlocal original
        if stream == ANCHORED and original is None and batches is not None:  # the streams part here
            original = [batch.states.clone() for batch in batches]
        began = time.perf_counter()
        if block in done:
            decs = load_decompositions(_block_folder(folder, block), dev)
            originals = apply_ranks(model, decs, {layer.name: ranks[layer.name] for layer in by_block[block]})
        else:
            decs, originals = fit_block(model, adapter, module, block, by_block[block], method, ranks, batches,
                                        original, dev, sides, stream)
            if folder is not None:
                save_decompositions(decs, _block_folder(folder, block))
            timings["blocks"][block] = time.perf_counter() - began
        if block < last:
            timings["forward_blocks"].append(block)
            forward_streams(model, module, block, batches, original, dev, originals)
        if on_block is not None:
            on_block(block, decs)
        else:
            kept.update({name: _to_host(dec) for name, dec in decs.items()})

    def forward(module: nn.Module, dev: torch.device, block: int) -> None:
        timings["forward_blocks"].append(block)
        forward_streams(model, module, block, batches, original, dev, {})

    for block in tqdm(range(adapter.num_blocks), desc=f"blocks ({method}, {stream})", unit="block",
                      disable=not progress):
        if block in by_block:
            _with_block_on(adapter, block, device, lambda m, dev, b=block: work(m, dev, b))
        elif block < last:
            _with_block_on(adapter, block, device, lambda m, dev, b=block: forward(m, dev, b))
    return {layer.name: kept[layer.name] for layer in layers if layer.name in kept}
