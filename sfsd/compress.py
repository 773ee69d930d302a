"""The compression engine: calibrate, decompose, choose ranks, swap layers, save and describe."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from sfsd.accounting import count_parameters, layer_table, measure_macs
from sfsd.adapters import ModelAdapter, adapter_for
from sfsd.atomic import atomic_dir
from sfsd.calibration import InputStatistics, collect_statistics
from sfsd.decompose import (
    Decomposition,
    apply_ranks,
    check_beta,
    fit_decompositions,
    get_method,
    overall_budget,
    uniform_ranks,
    validate_ranks,
)
from sfsd.errors import SfsdError
from sfsd.hf_classes import mark_compressed


@dataclass
class CalibrationSpec:
    """Where calibration text comes from and how much of it (the paper: 512 x 128 tokens)."""

    source: str = "mix"
    samples: int = 512
    seq_len: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.samples < 1 or self.seq_len < 2:
            raise SfsdError("calibration needs at least 1 sample of 2 tokens: raise --calib-samples/--calib-seq-len")


def calibration_tokens(tokenizer, spec: CalibrationSpec, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and mask of the calibration set from the data pack (or random ids for tests)."""
    if spec.source == "random":
        gen = torch.Generator().manual_seed(spec.seed)
        ids = torch.randint(0, vocab_size, (spec.samples, spec.seq_len), generator=gen)
        return ids, torch.ones_like(ids)
    from sfsd.data import calibration_tokens as pack_tokens

    data = pack_tokens(tokenizer, spec.source, spec.samples, spec.seq_len, spec.seed)
    return data.input_ids, data.attention_mask


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

    def __post_init__(self):
        get_method(self.method)
        self.adapter: ModelAdapter = adapter_for(self.model)
        self.layers = self.adapter.layers(self.blocks, self.roles)
        if self.layer_names is not None:
            chosen = set(self.layer_names)
            self.layers = [layer for layer in self.layers if layer.name in chosen]
        self.all_layers = self.adapter.layers()
        self.stats: dict[str, InputStatistics] | None = None
        self.decompositions: dict[str, Decomposition] = {}
        self.timings: dict[str, float] = {}

    def collect(self) -> dict[str, InputStatistics]:
        if self.stats is None and get_method(self.method).needs_calibration:
            start = time.perf_counter()
            ids, mask = calibration_tokens(self.tokenizer, self.calibration, self.model.config.vocab_size)
            self.stats = collect_statistics(
                self.model, self.adapter, self.layers, ids, mask, self.batch_size, self.progress
            )
            self.timings["calibration_s"] = time.perf_counter() - start
        return self.stats or {}

    def decompose(self) -> dict[str, Decomposition]:
        todo = [layer for layer in self.layers if layer.name not in self.decompositions]
        if todo:
            stats = self.collect()
            start = time.perf_counter()
            self.decompositions.update(fit_decompositions(self.adapter, todo, self.method, stats, self.progress))
            self.timings["decompose_s"] = time.perf_counter() - start
        return self.decompositions

    def uniform_ranks(self, beta: float, last_blocks: int) -> dict[str, int]:
        return uniform_ranks(self.layers, beta, last_blocks, self.adapter.num_blocks)

    def apply(self, ranks: Mapping[str, int], description: dict | None = None) -> nn.Module:
        """Swap the ranked layers in place and turn the model into its saveable sfsd class."""
        ranks = validate_ranks(self.all_layers, dict(ranks))
        decs = self.decompose()
        apply_ranks(self.model, decs, ranks)
        layers = low_rank_specs(self.model, ranks)
        extra = {"overall_budget": overall_budget(self.all_layers, ranks),
                 "calibration": asdict(self.calibration), **(description or {})}
        return mark_compressed(self.model, self.method, layers, extra)


def check_compress_request(method: str, beta: float | None, calibration: CalibrationSpec) -> None:
    """Fail fast, before any model is loaded, on a bad method, budget or calibration source."""
    get_method(method)
    if beta is not None:
        check_beta(beta)
    if calibration.source != "random" and get_method(method).needs_calibration:
        from sfsd.data import CALIBRATION_SOURCES

        if calibration.source not in CALIBRATION_SOURCES:
            raise SfsdError(f"unknown calibration source {calibration.source!r}: choose one of "
                            f"{', '.join(CALIBRATION_SOURCES)}")
        from sfsd.data.calibration import require_source_data

        require_source_data(calibration.source)


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
) -> nn.Module:
    """Compress `model` in place: the uniform protocol (beta, last_blocks) or explicit per-layer ranks.

    The base model's parameters and MACs at `seq_len` are measured first and recorded in the config.
    """
    if (beta is None) == (ranks is None):
        raise SfsdError("give either a budget (--beta with --last-blocks) or explicit --ranks, not both")
    adapter = adapter_for(model)
    base = {"params": count_parameters(model), "macs": {str(seq_len): measure_macs(model, seq_len)}}
    if ranks is None:
        last_blocks = adapter.num_blocks if last_blocks is None else last_blocks
        ranks = uniform_ranks(adapter.layers(), beta, last_blocks, adapter.num_blocks)
        description = {"protocol": "uniform", "beta": beta, "last_blocks": last_blocks}
    else:
        ranks = validate_ranks(adapter.layers(), dict(ranks))
        description = {"protocol": "ranks"}
    layers = [layer.name for layer in adapter.layers() if layer.name in ranks]
    compressor = Compressor(model, tokenizer, method, calibration or CalibrationSpec(), layer_names=layers,
                            batch_size=batch_size, progress=progress)
    return compressor.apply(ranks, {**description, "base": base})


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
    table = layer_table(layers, ranks, biases)
    params = count_parameters(model)
    info = {
        "model_type": model.config.model_type,
        "method": getattr(model.config, "sfsd_method", None),
        "blocks": adapter.num_blocks,
        "roles": adapter.role_names(),
        "params": params,
        "params_linear": int(table["params"].sum()),
        "params_linear_full": int(table["params_full"].sum()),
        "overall_budget": overall_budget(layers, ranks),
        "layers_decomposed": len(ranks),
        "layers_total": len(layers),
        "seq_len": seq_len,
        "table": table,
    }
    if macs:
        info["macs"] = measure_macs(model, seq_len)
    return info


def info_as_json(info: dict[str, Any]) -> str:
    plain = {k: v for k, v in info.items() if not isinstance(v, pd.DataFrame)}
    return json.dumps(plain, indent=2)
