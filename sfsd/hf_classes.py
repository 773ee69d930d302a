"""Compressed models as first-class transformers models.

For each supported architecture X we register a config type `sfsd_X` (X's config plus the per-module
ranks and the method) and a model class that builds X and then puts a `LowRankLinear` of the recorded
shape at each decomposed module. `AutoModelForCausalLM.from_pretrained(folder)` therefore rebuilds the
thin layers and loads the safetensors weights as they are; `save_pretrained` writes them as they are.

A model whose thin layers are stored compact (Eq. ID, `sfsd.decompose.compact`) records `sfsd_factors: "compact"`
and gets a `CompactLowRankLinear` of the recorded shape at each decomposed module instead; folders without the
record hold the paper's two factors.

Layers that read the same input share one stacked first factor (`sfsd.decompose.fusion`), recorded in the
config as `sfsd_fused`; folders saved before that existed have no such record and load unfused.

Structurally pruned blocks (`sfsd.decompose.pruning`) are recorded as `sfsd_pruned` (their head and channel
counts); the model class rebuilds those smaller layers first, then any low-rank ones. A SliceGPT-sliced model
(`sfsd.decompose.slicing`) is recorded as `sfsd_sliced` (its residual widths) and rebuilt by
`sfsd.decompose.sliced_layers.install_sliced_layers`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sfsd.adapters import SUPPORTED_MODEL_TYPES, adapter_for, base_model_type
from sfsd.decompose.budget import TWO_FACTOR
from sfsd.decompose.fusion import fuse_shared_inputs, install_fused_layers
from sfsd.decompose.lowrank import LOW_RANK_CLASSES
from sfsd.decompose.sliced_layers import install_sliced_layers, linear_like, require_format

PREFIX = "sfsd_"
PRUNED_FORMAT = 1  # the version of the `sfsd_pruned` record in a saved config
_CLASSES: dict[str, tuple[type, type]] = {}


def install_low_rank_layers(model: nn.Module, layers: dict[str, dict[str, Any]],
                            fused: dict[str, list[str]] | None = None, factors: str = TWO_FACTOR) -> None:
    """Put an (uninitialised) low-rank module of the recorded shape and factor format at every decomposed module."""
    done = install_fused_layers(model, layers, fused or {})
    cls = LOW_RANK_CLASSES[factors]
    for name, spec in layers.items():
        if name in done:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        like = next(old.parameters())
        new = cls(spec["d_in"], spec["d_out"], spec["rank"], spec["bias"], like.device, like.dtype)
        setattr(parent, child, new)


def set_pruned_widths(block: nn.Module, heads: int, kv_heads: int, channels: int) -> None:
    """The attributes that the forward of LLaMA/Qwen2/Mistral/Gemma attention and MLP read besides the weights."""
    block.self_attn.num_key_value_groups = heads // kv_heads
    if hasattr(block.mlp, "intermediate_size"):
        block.mlp.intermediate_size = channels


ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


def block_widths(hidden: int, head_dim: int, heads: int, kv_heads: int, channels: int) -> dict[str, tuple[int, int]]:
    """(d_in, d_out) of each projection of a LLaMA-like block with these head and channel counts."""
    q, kv = heads * head_dim, kv_heads * head_dim
    return {"q_proj": (hidden, q), "k_proj": (hidden, kv), "v_proj": (hidden, kv), "o_proj": (q, hidden),
            "gate_proj": (hidden, channels), "up_proj": (hidden, channels), "down_proj": (channels, hidden)}


def install_pruned_layers(model: nn.Module, record: dict[str, Any] | None) -> None:
    """Put (uninitialised) linear layers of the recorded widths into every structurally pruned block
    (`sfsd.decompose.pruning`), before `from_pretrained` loads the weights."""
    if not record:
        return
    require_format(record, PRUNED_FORMAT, "pruning")
    adapter = adapter_for(model)
    for block, widths in record["blocks"].items():
        module = adapter.blocks[int(block)]
        attn = module.self_attn
        shapes = block_widths(attn.o_proj.out_features, attn.head_dim, widths["heads"], widths["kv_heads"],
                              widths["channels"])
        for name, (d_in, d_out) in shapes.items():
            parent = attn if name in ATTENTION_PROJECTIONS else module.mlp
            setattr(parent, name, linear_like(getattr(parent, name), d_in, d_out))
        set_pruned_widths(module, widths["heads"], widths["kv_heads"], widths["channels"])


def _make_classes(model_type: str) -> tuple[type, type]:
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    base_config = CONFIG_MAPPING[model_type]
    base_model = MODEL_FOR_CAUSAL_LM_MAPPING[base_config]
    config_cls = type(f"Sfsd{base_config.__name__}", (base_config,), {"model_type": PREFIX + model_type})

    def __init__(self, config, *args, **kwargs):
        base_model.__init__(self, config, *args, **kwargs)
        install_sliced_layers(self, getattr(config, "sfsd_sliced", None))
        install_pruned_layers(self, getattr(config, "sfsd_pruned", None))
        install_low_rank_layers(self, getattr(config, "sfsd_layers", {}) or {}, getattr(config, "sfsd_fused", None),
                                factors_of(config))

    model_cls = type(f"Sfsd{base_model.__name__}", (base_model,), {"config_class": config_cls, "__init__": __init__})
    return config_cls, model_cls


def register_all() -> None:
    """Register `sfsd_<type>` configs and models with the transformers Auto classes (idempotent)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    for model_type in SUPPORTED_MODEL_TYPES:
        if model_type in _CLASSES:
            continue
        config_cls, model_cls = _make_classes(model_type)
        AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
        AutoModelForCausalLM.register(config_cls, model_cls, exist_ok=True)
        _CLASSES[model_type] = (config_cls, model_cls)


def mark_compressed(model: nn.Module, method: str, layers: dict[str, dict[str, Any]], extra: dict | None = None,
                    factors: str = TWO_FACTOR):
    """Turn an in-memory model whose layers were swapped into its registered sfsd class, in place.

    The sfsd classes add nothing to the base classes but the low-rank layers, so switching the class of
    the model and of its config is safe; save_pretrained then records the ranks and writes thin weights.
    `factors`: the format the layers were swapped in, recorded only when not the paper's (so the configs of
    two-factor models are as before).
    """
    _as_sfsd_class(model, method, layers, extra)
    if factors == TWO_FACTOR:
        vars(model.config).pop("sfsd_factors", None)
    else:
        model.config.sfsd_factors = factors
    return fuse_compressed(model)


def factors_of(config: Any) -> str:
    """The factor format a compressed model's thin layers are stored in (two-factor unless recorded)."""
    return getattr(config, "sfsd_factors", None) or TWO_FACTOR


def _as_sfsd_class(model: nn.Module, method: str, layers: dict[str, dict[str, Any]], extra: dict | None) -> None:
    """Switch the model and its config to their registered sfsd classes, recording the method, the low-rank
    layers and the description (`extra`)."""
    register_all()
    model_type = base_model_type(model.config.model_type)
    config_cls, model_cls = _CLASSES[model_type]
    model.config.__class__ = config_cls
    vars(model.config).pop("model_type", None)  # a config read from a file may carry it per instance
    model.config.sfsd_method = method
    model.config.sfsd_layers = layers
    model.config.sfsd = dict(extra or {})
    model.__class__ = model_cls


def mark_pruned(model: nn.Module, record: dict[str, Any], method: str = "llm-pruner",
                extra: dict | None = None) -> nn.Module:
    """Turn an in-memory structurally pruned model into its registered sfsd class, in place, recording the
    pruned widths (`sfsd.decompose.pruning.pruned_record`); a compressed model keeps its low-rank record."""
    if not is_compressed(model):
        _as_sfsd_class(model, method, {}, extra)
        model.config.sfsd_fused = {}
    model.config.sfsd_pruned = record
    return model


def mark_sliced(model: nn.Module, record: dict[str, Any], extra: dict | None = None) -> nn.Module:
    """Turn an in-memory SliceGPT-sliced model into its registered sfsd class, in place, recording its residual
    widths (`sfsd.decompose.slicing`); its head is its own matrix from now on (`tie_word_embeddings` False)."""
    _as_sfsd_class(model, "slicegpt", {}, extra)
    model.config.sfsd_fused = {}
    model.config.sfsd_sliced = record
    model.config.tie_word_embeddings = False
    return model


def fuse_compressed(model: nn.Module) -> nn.Module:
    """Give a compressed model shared first factors (in place) and record them in its config."""
    model.config.sfsd_fused = fuse_shared_inputs(model)
    return model


def is_compressed(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", "").startswith(PREFIX)
