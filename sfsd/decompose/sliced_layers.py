"""The modules of a SliceGPT-sliced model (`sfsd.decompose.slicing`), and their rebuilding from a saved record.

A sliced LLaMA-like model differs from the stock one in four ways, all of them needed by `from_pretrained`
before it loads the weights (`hf_classes` calls `install_sliced_layers`):
- every RMSNorm has lost its scale (fused into the next linear layers) and normalises by the model's full
  width D, not by the sliced width of what it receives (`FullWidthRMSNorm`; SliceGPT's `RMSN`);
- each block's residual connections carry a shortcut matrix (`attn_shortcut`, d_in x d_mid, and
  `mlp_shortcut`, d_mid x d_out: Q_l^T Q_{l+1} sliced) that takes the residual from one rotated basis to
  the next (`ShortcutBlock`);
- the linear layers that read or write the residual stream are narrower (q, k, v, gate, up read d_in or
  d_mid columns, o and down write d_mid or d_out rows), and so is the embedding (d_0 columns);
- the head is its own matrix (rotated, not sliced, as SliceGPT's default `do_slice_head=False`), so a model
  whose embedding and head were tied is saved untied.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sfsd.errors import SfsdError

SLICED_FORMAT = 1  # the version of the `sfsd_sliced` record in a saved config
SLICEABLE_TYPES = ("llama", "mistral", "qwen2")  # RMSNorm before q/k/v and gate/up, sequential attention + MLP
READERS_ATTN = ("q_proj", "k_proj", "v_proj")
READERS_MLP = ("gate_proj", "up_proj")


class FullWidthRMSNorm(nn.Module):
    """x / sqrt(sum(x^2) / width + eps) with no scale: the RMSNorm of a rotated, sliced residual stream.

    Rotation keeps the norm and the sliced-off directions carry little of it, so dividing the sum of squares
    by the full width D keeps the normalisation of the unsliced model (SliceGPT Sec. 3.1, its `RMSN`)."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width = width
        self.eps = eps

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        states = hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))  # as RMSNorm: >= fp32
        scale = torch.rsqrt(states.pow(2).sum(-1, keepdim=True) / self.width + self.eps)
        return (states * scale).to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"width={self.width}, eps={self.eps}"


def _forward_with_shortcuts(self, hidden_states: torch.Tensor, attention_mask=None, position_ids=None,
                            past_key_values=None, use_cache=False, position_embeddings=None, **kwargs) -> torch.Tensor:
    """The LLaMA/Mistral/Qwen2 decoder block (transformers 5) with a matrix on each residual connection."""
    residual = hidden_states @ self.attn_shortcut
    states = self.input_layernorm(hidden_states)
    states, _ = self.self_attn(hidden_states=states, attention_mask=attention_mask, position_ids=position_ids,
                               past_key_values=past_key_values, use_cache=use_cache,
                               position_embeddings=position_embeddings, **kwargs)
    states = residual + states
    residual = states @ self.mlp_shortcut
    return residual + self.mlp(self.post_attention_layernorm(states))


_SHORTCUT_CLASSES: dict[type, type] = {}


def with_shortcuts(block: nn.Module, attn_shortcut: torch.Tensor, mlp_shortcut: torch.Tensor) -> None:
    """Give `block` its two shortcut matrices (as parameters) and the forward that uses them, in place."""
    cls = type(block)
    if cls not in _SHORTCUT_CLASSES.values():
        if cls not in _SHORTCUT_CLASSES:
            _SHORTCUT_CLASSES[cls] = type(f"Shortcut{cls.__name__}", (cls,), {"forward": _forward_with_shortcuts})
        block.__class__ = _SHORTCUT_CLASSES[cls]
    block.attn_shortcut = nn.Parameter(attn_shortcut)
    block.mlp_shortcut = nn.Parameter(mlp_shortcut)


def replace_norm(parent: nn.Module, name: str, width: int) -> None:
    """Put a scale-free full-width RMSNorm in place of `parent.name` (same eps)."""
    old = getattr(parent, name)
    eps = getattr(old, "variance_epsilon", getattr(old, "eps", 1e-6))
    setattr(parent, name, FullWidthRMSNorm(width, float(eps)))


def block_dims(record: dict[str, Any], index: int) -> tuple[int, int, int]:
    """(d_in, d_mid, d_out) of block `index`: the residual widths entering it, between its attention and MLP,
    and leaving it."""
    d_in, d_mid, d_out = record["blocks"][str(index)]
    return int(d_in), int(d_mid), int(d_out)


def linear_like(old: nn.Linear, d_in: int, d_out: int) -> nn.Linear:
    """An uninitialised linear layer of another shape, with `old`'s bias presence, device and dtype."""
    return nn.Linear(d_in, d_out, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def require_format(record: dict[str, Any], expected: int, what: str) -> None:
    """One-line refusal of a saved record written by another version of sfsd."""
    if record.get("format") != expected:
        raise SfsdError(f"this folder's {what} record has format {record.get('format')}, not {expected}: update sfsd")


def install_sliced_layers(model: nn.Module, record: dict[str, Any] | None) -> None:
    """Rebuild, uninitialised, the modules of a sliced model at the recorded widths (before the weights load)."""
    if not record:
        return
    require_format(record, SLICED_FORMAT, "slicing")
    from sfsd.adapters import adapter_for

    adapter = adapter_for(model)
    width = int(record["hidden"])
    backbone = model.get_submodule(adapter.blocks_path.rpartition(".")[0])
    old = backbone.embed_tokens
    backbone.embed_tokens = nn.Embedding(old.num_embeddings, int(record["embedding"]), old.padding_idx,
                                         device=old.weight.device, dtype=old.weight.dtype)
    replace_norm(backbone, "norm", width)
    for index, block in enumerate(adapter.blocks):
        d_in, d_mid, d_out = block_dims(record, index)
        attn, mlp = block.self_attn, block.mlp
        for name in READERS_ATTN:
            setattr(attn, name, linear_like(getattr(attn, name), d_in, getattr(attn, name).out_features))
        attn.o_proj = linear_like(attn.o_proj, attn.o_proj.in_features, d_mid)
        for name in READERS_MLP:
            setattr(mlp, name, linear_like(getattr(mlp, name), d_mid, getattr(mlp, name).out_features))
        mlp.down_proj = linear_like(mlp.down_proj, mlp.down_proj.in_features, d_out)
        replace_norm(block, "input_layernorm", width)
        replace_norm(block, "post_attention_layernorm", width)
        like = attn.o_proj.weight
        with_shortcuts(block, torch.empty(d_in, d_mid, device=like.device, dtype=like.dtype),
                       torch.empty(d_mid, d_out, device=like.device, dtype=like.dtype))
