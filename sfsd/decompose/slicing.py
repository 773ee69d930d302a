"""SliceGPT (Ashkboos et al., ICLR 2024): rotate the residual stream by its principal components, delete the
least important directions.

What microsoft/TransformerCompression's `rotate_and_slice_sequential` does for LLaMA-like models, written for
this project's adapters:

1. Norm fusion (their `fuse_modules`): each RMSNorm's scale multiplies the columns of the linear layers that
   read its output (q, k, v after `input_layernorm`; gate, up after `post_attention_layernorm`; the head
   after the final norm), and the norm becomes scale-free (`FullWidthRMSNorm`). RMSNorm(x) then commutes with
   any orthogonal Q: RMSNorm(x Q) = RMSNorm(x) Q (Sec. 3.1, Eq. 2 and 3). The head is given its own copy of
   a tied embedding first. Their code also subtracts each embedding row's mean, which a LayerNorm model needs
   (LayerNorm = centring + RMSNorm) but which changes an RMSNorm model's outputs; it is not done here, so a
   rotation without slicing keeps the model's logits (tested).
2. Sequential PCA on the already-sliced model (Sec. 3.3 and their code): per block, the states entering it
   were rotated by Q_l (the PCA of the signal that leaves the previous block, or of the embeddings);
   the block's attention inputs are rotated by Q_l and sliced; the signal between attention and MLP is then
   computed through the sliced attention and its PCA gives Q_mid, which rotates and slices o_proj's rows
   and gate/up's columns; the block's output is computed again through the sliced MLP and its PCA gives
   Q_{l+1}, which rotates and slices down_proj's rows. Each residual connection carries the shortcut
   Q_l^T Q_mid and Q_mid^T Q_{l+1} (sliced) that changes basis (their `attn_shortcut_Q`, `mlp_shortcut_Q`).
3. PCA (their `pca_calc`): H = sum over non-padding tokens of x x^T in float64 (uncentred), plus 1% of its
   mean diagonal on the diagonal (damping), eigenvectors in decreasing order of eigenvalue.
4. Widths: SliceGPT's constant schedule: every residual width is d = int((1 - slicing) D) rounded down to a
   multiple of 8 (their `--round-interval`), except the last block's output, which the unsliced head
   reads at the full width D (their default, `do_slice_head=False`). The target-parameter form
   (`width_for_params`) picks any integer d instead, so that a budget is met within a fraction of a percent.

Parameters: the sliced model holds a V x d embedding, a V x D head of its own (a tied model becomes
untied: SliceGPT's issue #165), narrower q/k/v/o/gate/up/down and the shortcut matrices, and no norm scales;
`sliced_parameters` counts exactly that, as `count_parameters` counts the saved model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from sfsd.adapters import adapter_for, base_model_type
from sfsd.calibration.blocks import BlockBatch, block_outputs, capture_block_inputs, to_device
from sfsd.decompose.sliced_layers import (
    READERS_ATTN,
    READERS_MLP,
    SLICEABLE_TYPES,
    SLICED_FORMAT,
    replace_norm,
    with_shortcuts,
)
from sfsd.errors import SfsdError

ROUND_INTERVAL = 8  # SliceGPT's default --round-interval
DAMPING = 0.01  # of the mean eigenvalue, added to the diagonal before the eigendecomposition (their pca_calc)


# ---- checks and widths ---------------------------------------------------------------------------------------

def check_sliceable(model: nn.Module) -> None:
    """One-line refusal for a model SliceGPT's LLaMA adapter does not describe, or one already compressed."""
    model_type = getattr(model.config, "model_type", "")
    if model_type.startswith("sfsd_"):
        raise SfsdError("slicegpt starts from an uncompressed model: give the base model, not a compressed folder")
    if base_model_type(model_type) not in SLICEABLE_TYPES:
        raise SfsdError(f"slicegpt supports {', '.join(SLICEABLE_TYPES)} models (RMSNorm, separate q/k/v and "
                        f"gate/up); {model_type} is not one: use another --method")
    if getattr(model.config, "mlp_bias", False):
        raise SfsdError("slicegpt here handles MLPs without biases; this model's MLP has biases: use another --method")


def check_slicing(slicing: float) -> None:
    if not (isinstance(slicing, (int, float)) and 0 <= slicing < 1):
        raise SfsdError(f"--slicing must be in [0, 1) (the share of the residual width removed), got {slicing}")


def width_for_slicing(hidden: int, slicing: float, round_interval: int = ROUND_INTERVAL) -> int:
    """SliceGPT's new embedding dimension: int((1 - slicing) D), rounded down to a multiple of `round_interval`."""
    check_slicing(slicing)
    width = int((1 - slicing) * hidden)
    width -= width % round_interval
    if width < 1:
        raise SfsdError(f"--slicing {slicing} leaves no residual width (D = {hidden}): choose a smaller --slicing")
    return width


@dataclass(frozen=True)
class SliceWidths:
    """The residual widths: the embedding's and, per block, (entering, between attention and MLP, leaving)."""

    hidden: int
    embedding: int
    blocks: tuple[tuple[int, int, int], ...]

    @classmethod
    def constant(cls, hidden: int, num_blocks: int, width: int) -> SliceWidths:
        """SliceGPT's constant schedule with the head unsliced: the last block writes the full width."""
        if not 1 <= width <= hidden:
            raise SfsdError(f"a sliced width must be in 1..{hidden}, got {width}")
        blocks = tuple((width, width, hidden if i == num_blocks - 1 else width) for i in range(num_blocks))
        return cls(hidden, width, blocks)

    def as_record(self) -> dict:
        return {"hidden": self.hidden, "embedding": self.embedding,
                "blocks": {str(i): list(dims) for i, dims in enumerate(self.blocks)}}


def sliced_parameters(model: nn.Module, widths: SliceWidths) -> int:
    """The parameters of `model` (unsliced, a LLaMA-like model) once sliced to `widths`: embedding V x d_0,
    its own head, the narrower block layers and their biases, the shortcuts, no norm scales, and every other
    parameter as it is."""
    adapter = adapter_for(model)
    backbone = model.get_submodule(adapter.blocks_path.rpartition(".")[0])
    head = model.get_output_embeddings()
    vocab = backbone.embed_tokens.num_embeddings
    counted = {id(p) for p in backbone.embed_tokens.parameters()} | {id(p) for p in head.parameters()}
    counted |= {id(p) for p in backbone.norm.parameters()}
    total = vocab * widths.embedding + head.weight.numel() + (head.bias.numel() if head.bias is not None else 0)
    for block, (d_in, d_mid, d_out) in zip(adapter.blocks, widths.blocks, strict=True):
        attn, mlp = block.self_attn, block.mlp
        for name in READERS_ATTN:
            total += _linear_params(getattr(attn, name), d_in=d_in)
        total += _linear_params(attn.o_proj, d_out=d_mid)
        for name in READERS_MLP:
            total += _linear_params(getattr(mlp, name), d_in=d_mid)
        total += _linear_params(mlp.down_proj, d_out=d_out)
        total += d_in * d_mid + d_mid * d_out  # the two shortcut matrices
        for module in (attn, mlp, block.input_layernorm, block.post_attention_layernorm):
            counted |= {id(p) for p in module.parameters()}
    return total + sum(p.numel() for p in model.parameters() if id(p) not in counted)


def _linear_params(layer: nn.Linear, d_in: int | None = None, d_out: int | None = None) -> int:
    d_in = layer.in_features if d_in is None else d_in
    d_out = layer.out_features if d_out is None else d_out
    return d_in * d_out + (d_out if layer.bias is not None else 0)


def width_for_params(model: nn.Module, target: int) -> int:
    """The constant width whose sliced model has the parameter count closest to `target` (any integer width:
    one step of the rounding to 8 moves a small model's count by ~1.5%, too coarse to match a budget)."""
    hidden, n = model.config.hidden_size, adapter_for(model).num_blocks
    count = lambda width: sliced_parameters(model, SliceWidths.constant(hidden, n, width))  # noqa: E731
    smallest, largest = count(1), count(hidden)
    if not smallest <= target <= largest:
        raise SfsdError(f"slicegpt cannot reach {target:,} parameters on this model (it ranges from {smallest:,} "
                        f"to {largest:,}, its untied head and shortcuts included): choose another budget")
    low, high = 1, hidden  # count is increasing in the width: bisect for the first width at or above target
    while low < high:
        mid = (low + high) // 2
        low, high = (mid + 1, high) if count(mid) < target else (low, mid)
    return min((w for w in (low - 1, low) if w >= 1), key=lambda w: abs(count(w) - target))


# ---- the maths -----------------------------------------------------------------------------------------------

def principal_components(signals: Sequence[torch.Tensor], tokens: Sequence[torch.Tensor],
                         damping: float = DAMPING) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (decreasing) and eigenvectors (columns) of sum x x^T over the non-padding tokens, in float64,
    with `damping` x the mean diagonal added to the diagonal (SliceGPT's `pca_calc`; uncentred, Sec. 3.3)."""
    moment = None
    for states, keep in zip(signals, tokens, strict=True):
        x = states.to(torch.float64)[keep.to(states.device)]
        part = x.T @ x
        moment = part if moment is None else moment + part
    moment.diagonal().add_(damping * moment.diagonal().mean())
    values, vectors = torch.linalg.eigh(moment)
    order = torch.argsort(values, descending=True)
    return values[order], vectors[:, order]


def _rotate_columns(layer: nn.Module, q: torch.Tensor, keep: int) -> None:
    """W <- (W Q)[:, :keep] for a layer that reads the rotated stream (x Q)."""
    w = layer.weight.data
    layer.weight.data = (w.to(torch.float64) @ q.to(w.device))[:, :keep].to(w.dtype).contiguous()
    if isinstance(layer, nn.Linear):
        layer.in_features = keep
    else:  # the embedding: its rows are the token vectors
        layer.embedding_dim = keep


def _rotate_rows(layer: nn.Linear, q: torch.Tensor, keep: int) -> None:
    """W <- (Q^T W)[:keep], b <- (Q^T b)[:keep] for a layer that writes into the rotated stream."""
    w = layer.weight.data
    q = q.to(w.device)
    layer.weight.data = (q.T @ w.to(torch.float64))[:keep].to(w.dtype).contiguous()
    if layer.bias is not None:
        layer.bias.data = (q.T @ layer.bias.data.to(torch.float64))[:keep].to(w.dtype)
    layer.out_features = keep


def _scale_columns(layer: nn.Linear, scale: torch.Tensor) -> None:
    w = layer.weight.data
    layer.weight.data = (w.to(torch.float64) * scale.to(w.device, torch.float64)[None, :]).to(w.dtype)


def fuse_norms(model: nn.Module) -> None:
    """Fold every RMSNorm scale into the layers that read it and make the norms scale-free (in place; the
    model's outputs do not change). The head gets its own copy of a tied embedding first."""
    adapter = adapter_for(model)
    backbone = model.get_submodule(adapter.blocks_path.rpartition(".")[0])
    head = model.get_output_embeddings()
    head.weight = nn.Parameter(head.weight.data.clone())
    model.config.tie_word_embeddings = False
    width = model.config.hidden_size
    for block in adapter.blocks:
        for norm_name, parent, readers in (("input_layernorm", block.self_attn, READERS_ATTN),
                                           ("post_attention_layernorm", block.mlp, READERS_MLP)):
            scale = getattr(block, norm_name).weight.data
            for name in readers:
                _scale_columns(getattr(parent, name), scale)
            replace_norm(block, norm_name, width)
    _scale_columns(head, backbone.norm.weight.data)
    replace_norm(backbone, "norm", width)


class _Middle(Exception):
    """Raised at the MLP's norm to stop a block's forward once the signal between attention and MLP is seen."""


def _middle_signals(block: nn.Module, index: int, batches: Sequence[BlockBatch], device: torch.device,
                    ) -> list[torch.Tensor]:
    """Run every batch through the block's attention: the residual stream between attention and MLP (the MLP,
    three quarters of a block's work, is skipped)."""
    middles: list[torch.Tensor] = []

    def stop(_module, args):
        middles.append(args[0].detach().to(batches[0].states.device))
        raise _Middle

    hook = block.post_attention_layernorm.register_forward_pre_hook(stop)
    try:
        with torch.no_grad():
            for batch in batches:
                args, kwargs = to_device(batch.block_args[index], device, {})
                try:
                    block(batch.states.to(device), *args, **kwargs)
                except _Middle:
                    pass
    finally:
        hook.remove()
    return middles


def _block_outputs(block: nn.Module, index: int, batches: Sequence[BlockBatch], device: torch.device,
                   ) -> list[torch.Tensor]:
    """Run every batch through the block: its outputs, on the host of the batches."""
    outputs = []
    with torch.no_grad():
        for batch in batches:
            args, kwargs = to_device(batch.block_args[index], device, {})
            outputs.append(block_outputs(block(batch.states.to(device), *args, **kwargs)).to(batch.states.device))
    return outputs


def rotate_and_slice(model: nn.Module, batches: list[BlockBatch], widths: SliceWidths,
                     progress: bool = True, on_block: Callable[[int], None] | None = None) -> None:
    """SliceGPT's sequential rotate-and-slice on a norm-fused model (in place); `batches` hold the states
    entering block 0 (they are consumed)."""
    adapter = adapter_for(model)
    backbone = model.get_submodule(adapter.blocks_path.rpartition(".")[0])
    tokens = [batch.tokens for batch in batches]
    dtype = backbone.embed_tokens.weight.dtype
    _, q = principal_components([b.states for b in batches], tokens)
    _rotate_columns(backbone.embed_tokens, q, widths.embedding)
    for index, block in enumerate(tqdm(adapter.blocks, desc="slicegpt", unit="block", disable=not progress)):
        d_in, d_mid, d_out = widths.blocks[index]
        device = block.self_attn.o_proj.weight.device
        for name in READERS_ATTN:
            _rotate_columns(getattr(block.self_attn, name), q, d_in)
        for batch in batches:  # the states as the sliced model now carries them
            batch.states = (batch.states.to(torch.float64) @ q.to(batch.states.device))[..., :d_in].to(dtype)
        # until o_proj and down_proj are rotated, the block writes the original basis: Q_l^T maps it back
        with_shortcuts(block, q.T[:d_in].to(device, dtype), torch.eye(widths.hidden, dtype=dtype, device=device))
        middles = _middle_signals(block, index, batches, device)
        _, q_mid = principal_components(middles, tokens)
        del middles
        attn_shortcut = (q.T[:d_in] @ q_mid[:, :d_mid]).to(device, dtype)
        _rotate_rows(block.self_attn.o_proj, q_mid, d_mid)
        for name in READERS_MLP:
            _rotate_columns(getattr(block.mlp, name), q_mid, d_mid)
        with_shortcuts(block, attn_shortcut, q_mid.T[:d_mid].to(device, dtype))
        outputs = _block_outputs(block, index, batches, device)
        _, q = principal_components(outputs, tokens)
        _rotate_rows(block.mlp.down_proj, q, d_out)
        with_shortcuts(block, attn_shortcut, (q_mid.T[:d_mid] @ q[:, :d_out]).to(device, dtype))
        for batch, out in zip(batches, outputs, strict=True):
            batch.states = out
        if on_block is not None:
            on_block(index)
    head = model.get_output_embeddings()
    _rotate_columns(head, q, widths.blocks[-1][2])


def slice_model(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, widths: SliceWidths,
                batch_size: int = 16, progress: bool = True, **info) -> dict:
    """Norm fusion, sequential rotate-and-slice on the calibration tokens and marking, in place: the model then
    saves with `save_pretrained` and reloads with `AutoModelForCausalLM.from_pretrained` after `import sfsd`.
    Returns the `sfsd_sliced` record (widths, and `info` for people)."""
    from sfsd.accounting import count_parameters
    from sfsd.hf_classes import mark_sliced

    check_sliceable(model)
    adapter = adapter_for(model)
    if widths.hidden != model.config.hidden_size or len(widths.blocks) != adapter.num_blocks:
        raise SfsdError("slicing widths do not match this model: compute them from it (SliceWidths.constant)")
    params_base = count_parameters(model)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        fuse_norms(model)
        batches = capture_block_inputs(model, adapter, input_ids, attention_mask, batch_size, device)
        rotate_and_slice(model, batches, widths, progress)
    record = {"format": SLICED_FORMAT, **widths.as_record(), "params_base": params_base,
              "round_interval": info.pop("round_interval", None), "damping": DAMPING, **info}
    mark_sliced(model, record)
    return record


def unsliced_weight_params(model: nn.Module) -> dict[str, int]:
    """Each linear layer's weight parameters before slicing ({} for a model that was not sliced): the readers
    of the residual stream had D columns, the writers D rows."""
    record = getattr(model.config, "sfsd_sliced", None)
    if not record:
        return {}
    hidden = int(record["hidden"])
    full = {}
    for layer in adapter_for(model).layers():
        writes = layer.role in ("o", "down")
        full[layer.name] = hidden * (layer.d_in if writes else layer.d_out)
    return full


def equivalent_budget(params: int, params_base: int, linear_full: int) -> float:
    """The Appendix-B overall budget that an SFSD model with the same total parameters would have:
    1 - (parameters removed) / (parameters of the decomposable layers)."""
    return 1 - (params_base - params) / linear_full if linear_full else math.nan
