"""Decomposition of linear layers (all the maths in one place) and swapping them into a model."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from sfsd.adapters import LinearLayer, ModelAdapter
from sfsd.atomic import atomic_dir, write_json
from sfsd.cache import file_sha256
from sfsd.calibration import Statistics
from sfsd.decompose.budget import (
    BETA_GRID,
    TWO_FACTOR,
    check_beta,
    check_factors,
    factor_params,
    full_rank,
    layer_beta,
    overall_budget,
    rank_for_budget,
    saves_parameters,
    uniform_ranks,
    validate_ranks,
)
from sfsd.decompose.lowrank import LOW_RANK_CLASSES, CompactLowRankLinear, LowRankLinear
from sfsd.decompose.methods import (
    METHODS,
    Decomposition,
    check_layer_method,
    decompose_layer,
    get_method,
    layer_methods,
)
from sfsd.errors import SfsdError
from sfsd.offload import like_tensor, onloaded

# Bump when the maths of a method or the stored fields change: cached decompositions of another
# format are never reused, since every decomposition folder's key includes it (`sfsd.compress.
# decomposition_folder`, used by compress, uniform and the search alike). 2: feature-paper/feature-official.
DECOMPOSITION_FORMAT = 2


def fit_decompositions(
    adapter: ModelAdapter,
    layers: Iterable[LinearLayer],
    method: str,
    stats: Mapping[str, Statistics] | None,
    progress: bool = True,
) -> dict[str, Decomposition]:
    """Factor every layer once (float64 on the statistics' device); ranks are sliced later.

    `stats` holds each layer's statistics under its own name (output side) or its group's (input side).
    """
    layers = list(layers)
    needs = get_method(method).needs_calibration
    result = {}
    for layer in tqdm(layers, desc=f"decompose ({method})", unit="layer", disable=not progress):
        module = adapter.model.get_submodule(layer.name)
        with onloaded(module):  # a disk- or CPU-offloaded layer's weights exist only inside this
            weight, bias = adapter.weight_and_bias(module)
            layer_stats = (stats[layer.name] if layer.name in stats else stats[layer.input_group]) if needs else None
            device = layer_stats.device if layer_stats is not None else weight.device
            result[layer.name] = decompose_layer(
                method, weight.to(device), None if bias is None else bias.to(device), layer_stats, weight.dtype
            )
    return result


def set_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Replace the submodule `name` (found with get_submodule, set on its parent); return the old one."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, child)
    setattr(parent, child, module)
    return old




def low_rank_module(dec: Decomposition, rank: int, like: torch.Tensor,
                    factors: str = TWO_FACTOR) -> LowRankLinear | CompactLowRankLinear:
    """The rank-r replacement of a layer, stored in the factor format `factors`."""
    first, second, bias = dec.factors(rank)
    return LOW_RANK_CLASSES[check_factors(factors)].from_factors(first, second, bias, like)


def apply_ranks(
    model: nn.Module, decompositions: Mapping[str, Decomposition], ranks: Mapping[str, int],
    factors: str = TWO_FACTOR,
) -> dict[str, nn.Module]:
    """Swap each named layer for its rank-r factorisation (in the format `factors`); return the replaced originals."""
    missing = sorted(set(ranks) - set(decompositions))
    if missing:
        raise SfsdError(f"no decomposition for {missing[0]}: decompose that layer first")
    originals = {}
    for name, rank in ranks.items():
        old = model.get_submodule(name)
        like = like_tensor(old)  # an offloaded layer's replacement lives on its execution device
        originals[name] = set_module(model, name, low_rank_module(decompositions[name], rank, like, factors))
    return originals


def decompositions_verified(folder: str | Path) -> bool:
    """True if `folder` holds complete decompositions whose file matches the checksum written with it."""
    import json

    folder = Path(folder)
    try:
        recorded = json.loads((folder / "checksum.json").read_text())["sha256"]
        return recorded == file_sha256(folder / "decompositions.safetensors")
    except (OSError, ValueError, KeyError, TypeError):
        return False


def save_decompositions(decompositions: Mapping[str, Decomposition], folder: str | Path) -> None:
    """All factorisations in one safetensors file plus a JSON index (no executable serialisation).

    The folder appears complete or not at all, with the file's sha256, so a resumed run can trust it.
    """
    tensors, index = {}, {}
    for i, (name, dec) in enumerate(decompositions.items()):
        key = f"l{i}"
        index[name] = {"key": key, "method": dec.method}
        for field in ("basis", "coeffs", "spectrum", "bias", "mean_shift"):
            value = getattr(dec, field)
            if value is not None:
                tensors[f"{key}.{field}"] = value.detach().cpu().contiguous()
    with atomic_dir(folder, overwrite=True) as tmp:
        save_file(tensors, str(tmp / "decompositions.safetensors"))
        write_json(tmp / "index.json", index)
        write_json(tmp / "checksum.json", {"sha256": file_sha256(tmp / "decompositions.safetensors")})


def load_decompositions(folder: str | Path, device: str | torch.device = "cpu") -> dict[str, Decomposition]:
    import json

    folder = Path(folder)
    try:
        index = json.loads((folder / "index.json").read_text())
        tensors = load_file(str(folder / "decompositions.safetensors"), device=str(device))
        return {
            name: Decomposition(
                method=entry["method"],
                **{f: tensors.get(f"{entry['key']}.{f}") for f in ("basis", "coeffs", "spectrum", "bias")},
                mean_shift=tensors.get(f"{entry['key']}.mean_shift"),
            )
            for name, entry in index.items()
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SfsdError(f"decomposition cache {folder} is unreadable ({exc}): delete it to recompute") from exc


__all__ = [
    "BETA_GRID",
    "DECOMPOSITION_FORMAT",
    "LOW_RANK_CLASSES",
    "METHODS",
    "TWO_FACTOR",
    "CompactLowRankLinear",
    "Decomposition",
    "LowRankLinear",
    "apply_ranks",
    "check_beta",
    "check_factors",
    "check_layer_method",
    "decompose_layer",
    "decompositions_verified",
    "factor_params",
    "fit_decompositions",
    "full_rank",
    "get_method",
    "layer_beta",
    "layer_methods",
    "load_decompositions",
    "low_rank_module",
    "overall_budget",
    "rank_for_budget",
    "save_decompositions",
    "saves_parameters",
    "set_module",
    "uniform_ranks",
    "validate_ranks",
]
