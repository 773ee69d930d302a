"""Structured pruning of decoder blocks, the block-wise method of LLM-Pruner (Ma et al., 2023).

What horseee/LLM-Pruner's `hf_prune.py --block_wise --pruner_type taylor --taylor param_first` does, written
for this project's adapters (LLaMA-like families only: separate q/k/v/o and gate/up/down projections):

- Coupled groups, per block: an attention head (its rows of q_proj, k_proj and v_proj, its columns of
  o_proj) and an MLP channel (row i of gate_proj and up_proj, column i of down_proj). Removing a group
  removes all of those weights; the block's output keeps its width, so nothing outside the block changes.
- Importance (first-order Taylor expansion of the LM loss L around the weights, `param_first`): a weight's
  removal changes L by about |w * dL/dw|; a group's importance is the sum of that over all its weights
  (the repository's `TaylorImportance`, `group_reduction="sum"`). `vectorize` sums w * dL/dw over each
  output (input, for o/down) channel of each layer before the absolute value, as the repository's option
  of that name. Biases do not enter the score (the repository scores weights only); they are pruned
  with their rows.
- The gradient is that of the mean LM loss (labels = the input ids) over all calibration tokens: the
  repository backpropagates one batch of all its samples (10 x 64 tokens) once; here the batches'
  losses are weighted by their share of the predicted tokens before their gradients add up in `.grad`,
  which gives the same gradient within the memory of one batch.
- The same ratio in every pruned block (the repository's local pruning: `ch_sparsity` per root module),
  on a range of blocks: LLaMA-7B's first four and last two blocks are left intact (4..30 of 32);
  `llm_pruner_blocks` scales that range to another depth.

Grouped-query attention. A KV head is read by every query head of its group, so a group can only go as a
whole: either (a) whole KV groups with all their query heads (what the repository's `llama3.py` does: the
root of each attention group is k_proj, one head_dim of consecutive channels at a time), or (b) the same
number of query heads inside every KV group, all KV heads kept (`num_key_value_groups` stays uniform, so
the stock `repeat_kv` works). The granularity of (a) is 1/num_kv_heads of the heads, that of (b) 1/(query
heads per KV group). `gqa="auto"` takes the finer one and (b) on a tie: SmolLM2-135M (9 query heads, 3 KV
heads) gets 1/3 either way, and (b) then keeps the KV heads that every query head reads, changes no KV
cache shape (a static cache sized from the config stays valid) and lets the scores choose the query heads
within each group; Qwen2.5-0.5B (14/2) gets 1/7 instead of 1/2; Llama-3-8B (32/8) 1/8 by (a) instead of
1/4; multi-head attention (one query head per KV head) is (a), i.e. plain head pruning. A group's score in
(a) is its KV heads' score plus its query heads' scores; in (b) a query head's score alone.

Budget. Heads are coarse, so `plan_for_budget` keeps the requested fraction of the attention units
(rounded half up; the repository floors the pruned count, which on SmolLM2 at ratio 0.25 prunes no KV
group at all) and then gives the MLP the number of channels that lands the pruned layers' parameters
(weights and biases of q, k, v, o, gate, up, down in the chosen blocks) on the requested fraction. The
channel total is spread over the blocks, so their channel counts differ by at most one; the rounding error
is then at most half a channel's parameters for the whole range (within 0.5% unless the range is tiny).

The pruned widths are recorded in the config as `sfsd_pruned` (`hf_classes.mark_pruned`), from which the
registered `sfsd_<type>` class rebuilds the smaller layers on `from_pretrained` (`hf_classes.
install_pruned_layers`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sfsd.adapters import adapter_for
from sfsd.adapters.families import LlamaLikeAdapter
from sfsd.errors import SfsdError
from sfsd.hf_classes import PRUNED_FORMAT, block_widths, mark_pruned, set_pruned_widths

KINDS = ("param_first", "vectorize")
GQA_MODES = ("auto", "kv-groups", "query-heads")
_ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


# ---- shapes and checks ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockShape:
    """The widths of one block's prunable layers and which of them have a bias."""

    hidden: int
    head_dim: int
    heads: int  # query heads
    kv_heads: int
    channels: int  # MLP intermediate width
    biases: tuple[bool, ...]  # q, k, v, o, gate, up, down

    @property
    def group_size(self) -> int:
        return self.heads // self.kv_heads

    def params(self, heads: int | None = None, kv_heads: int | None = None, channels: int | None = None) -> int:
        """Weights and biases of q, k, v, o, gate, up, down with that many heads, KV heads and channels."""
        heads = self.heads if heads is None else heads
        kv_heads = self.kv_heads if kv_heads is None else kv_heads
        channels = self.channels if channels is None else channels
        q, kv = heads * self.head_dim, kv_heads * self.head_dim
        outs = (q, kv, kv, self.hidden, channels, channels, self.hidden)  # output width of each layer
        ins = (self.hidden, self.hidden, self.hidden, q, self.hidden, self.hidden, channels)
        return sum(o * i + (o if b else 0) for o, i, b in zip(outs, ins, self.biases, strict=True))


def _prunable_adapter(model: nn.Module):
    """The model's adapter if its blocks can be pruned here, else a one-line error (nothing changed)."""
    adapter = adapter_for(model)
    if not isinstance(adapter, LlamaLikeAdapter):
        raise SfsdError(f"structured pruning needs separate q/k/v/o and gate/up/down projections, which "
                        f"{model.config.model_type} does not have: use a model of type "
                        f"{', '.join(LlamaLikeAdapter.model_types)}")
    if getattr(model.config, "sfsd_layers", None) or getattr(model.config, "sfsd_pruned", None):
        raise SfsdError("this model is already compressed or pruned: prune the original model")
    for block in adapter.blocks:
        modules = [getattr(block.self_attn, n) for n in _ATTN] + [getattr(block.mlp, n) for n in _MLP]
        if not all(type(m) is nn.Linear for m in modules):
            raise SfsdError("this model's projections are not plain linear layers: prune the original model")
    return adapter


def _checked_blocks(adapter, blocks: Iterable[int]) -> list[int]:
    chosen = sorted(set(int(b) for b in blocks))
    if not chosen:
        raise SfsdError("no blocks to prune: name at least one block")
    if chosen[0] < 0 or chosen[-1] >= adapter.num_blocks:
        raise SfsdError(f"blocks {chosen[0]}..{chosen[-1]} are outside 0..{adapter.num_blocks - 1}: "
                        "choose blocks of this model")
    return chosen


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise SfsdError(f"unknown Taylor importance {kind!r}: use one of {', '.join(KINDS)}")


def block_shape(block: nn.Module) -> BlockShape:
    attn, mlp = block.self_attn, block.mlp
    head_dim = attn.head_dim
    layers = [getattr(attn, n) for n in _ATTN] + [getattr(mlp, n) for n in _MLP]
    return BlockShape(hidden=attn.o_proj.out_features, head_dim=head_dim,
                      heads=attn.q_proj.out_features // head_dim, kv_heads=attn.k_proj.out_features // head_dim,
                      channels=mlp.gate_proj.out_features, biases=tuple(m.bias is not None for m in layers))


def unpruned_weight_params(model: nn.Module) -> dict[str, int]:
    """The weight parameters each layer of a pruned block had before pruning (from the config's widths), by
    module name: the reference of the pruned model's budget."""
    record = getattr(model.config, "sfsd_pruned", None) or {}
    config, adapter = model.config, adapter_for(model)
    full = {}
    for block in record.get("blocks", {}):
        attn = adapter.blocks[int(block)].self_attn
        widths = block_widths(attn.o_proj.out_features, attn.head_dim, config.num_attention_heads,
                              config.num_key_value_heads, config.intermediate_size)
        for layer in adapter.layers([int(block)]):
            d_in, d_out = widths[layer.name.rsplit(".", 1)[-1]]
            full[layer.name] = d_in * d_out
    return full


def llm_pruner_blocks(num_blocks: int) -> list[int]:
    """LLaMA-7B's pruned range, blocks 4..30 of 32 (the first four and the last two intact), scaled to a depth."""
    return list(range(round(4 * num_blocks / 32), round(30 * num_blocks / 32)))


# ---- importance ----------------------------------------------------------------------------------------------

def _per_channel(salience: torch.Tensor, dim: int, kind: str) -> torch.Tensor:
    """Per-channel score of one layer: sum over `dim` of |w * g| (param_first) or |sum of w * g| (vectorize)."""
    return salience.abs().sum(dim) if kind == "param_first" else salience.sum(dim).abs()


def _block_scores(block: nn.Module, shape: BlockShape, kind: str) -> dict[str, torch.Tensor]:
    def salience(layer: nn.Linear) -> torch.Tensor:
        grad = layer.weight.grad
        weight = layer.weight.detach().float()
        return weight * (torch.zeros_like(weight) if grad is None else grad.float())

    attn, mlp = block.self_attn, block.mlp
    hd = shape.head_dim
    rows = {n: _per_channel(salience(getattr(attn, n)), 1, kind) for n in ("q_proj", "k_proj", "v_proj")}
    o_cols = _per_channel(salience(attn.o_proj), 0, kind)
    heads = rows["q_proj"].view(shape.heads, hd).sum(1) + o_cols.view(shape.heads, hd).sum(1)
    kv_heads = (rows["k_proj"] + rows["v_proj"]).view(shape.kv_heads, hd).sum(1)
    channels = (_per_channel(salience(mlp.gate_proj), 1, kind) + _per_channel(salience(mlp.up_proj), 1, kind)
                + _per_channel(salience(mlp.down_proj), 0, kind))
    return {"heads": heads.cpu(), "kv_heads": kv_heads.cpu(), "channels": channels.cpu()}


def taylor_importance(model: nn.Module, input_ids: torch.Tensor, blocks: Iterable[int], kind: str = "param_first",
                      batch_size: int = 8, attention_mask: torch.Tensor | None = None,
                      ) -> dict[int, dict[str, torch.Tensor]]:
    """First-order Taylor importance of every coupled group of `blocks` on calibration text (float32, CPU).

    Per block: `heads` (n_q: |W * dL/dW| over the head's rows of q_proj and columns of o_proj), `kv_heads`
    (n_kv: over the KV head's rows of k_proj and v_proj) and `channels` (intermediate: over row i of gate_proj
    and up_proj and column i of down_proj). L is the mean LM loss over all predicted tokens of `input_ids`
    (n x T, labels = the ids; padding, where `attention_mask` is 0, predicts nothing), accumulated over
    batches of `batch_size`. The model's gradients and
    requires_grad flags are as before when it returns.
    """
    adapter = _prunable_adapter(model)
    blocks = _checked_blocks(adapter, blocks)
    _check_kind(kind)
    if input_ids.dim() != 2 or input_ids.shape[1] < 2 or input_ids.shape[0] < 1:
        raise SfsdError("calibration ids must be a batch of sequences of at least 2 tokens (n x T)")
    wanted = {id(getattr(adapter.blocks[b].self_attn, n).weight) for b in blocks for n in _ATTN}
    wanted |= {id(getattr(adapter.blocks[b].mlp, n).weight) for b in blocks for n in _MLP}
    saved = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    device = next(model.parameters()).device
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    labels = input_ids.masked_fill(mask == 0, -100)
    total = int((labels[:, 1:] != -100).sum())
    if total == 0:
        raise SfsdError("the calibration text has no token to predict: use more or longer calibration samples")
    try:
        for param, _, _ in saved:
            param.grad = None
            param.requires_grad_(id(param) in wanted)
        with torch.enable_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                rows = slice(start, start + batch_size)
                batch, target = input_ids[rows].to(device), labels[rows].to(device)
                predicted = int((target[:, 1:] != -100).sum())
                if predicted == 0:
                    continue
                loss = model(input_ids=batch, attention_mask=mask[rows].to(device), labels=target,
                             use_cache=False).loss
                (loss * (predicted / total)).backward()  # the batch's share of the mean over all tokens
        return {b: _block_scores(adapter.blocks[b], block_shape(adapter.blocks[b]), kind) for b in blocks}
    finally:
        for param, flag, grad in saved:
            param.grad = grad
            param.requires_grad_(flag)


# ---- the plan: how many heads and channels each block keeps --------------------------------------------------

@dataclass(frozen=True)
class PrunePlan:
    blocks: list[int]
    gqa: str  # "kv-groups" or "query-heads"
    heads: int  # query heads kept per block
    kv_heads: int  # KV heads kept per block
    channels: dict[int, int]  # MLP channels kept, per block (counts differ by at most one)
    params: int  # parameters the pruned layers keep (weights and biases)
    params_full: int  # the same layers intact
    keep_fraction: float

    @property
    def kept(self) -> float:
        return self.params / self.params_full


def _gqa_mode(shape: BlockShape, gqa: str) -> str:
    if gqa not in GQA_MODES:
        raise SfsdError(f"unknown grouped-query mode {gqa!r}: use one of {', '.join(GQA_MODES)}")
    if gqa != "auto":
        return gqa
    return "query-heads" if 1 < shape.group_size and shape.kv_heads <= shape.group_size else "kv-groups"


def plan_for_budget(model: nn.Module, blocks: Iterable[int], keep_fraction: float, gqa: str = "auto") -> PrunePlan:
    """The heads and channels each block of `blocks` keeps so that those blocks' q/k/v/o/gate/up/down keep
    `keep_fraction` of their parameters (within 0.5%). Attention units (KV groups or query heads per group,
    see the module's docstring) keep round(fraction x units), the same in every block; the MLP channel count
    makes up the rest. Errors (one line, nothing changed) for a fraction outside (0, 1], one that keeps no
    head, a budget the channels cannot reach, unsupported models."""
    adapter = _prunable_adapter(model)
    blocks = _checked_blocks(adapter, blocks)
    if not (isinstance(keep_fraction, (int, float)) and 0 < keep_fraction <= 1):
        raise SfsdError(f"keep fraction {keep_fraction} is outside (0, 1]: give the fraction of parameters to keep")
    shapes = {b: block_shape(adapter.blocks[b]) for b in blocks}
    if len(set(shapes.values())) != 1:
        raise SfsdError("the chosen blocks differ in shape: prune blocks of one shape at a time")
    shape = shapes[blocks[0]]
    mode = _gqa_mode(shape, gqa)
    units = shape.kv_heads if mode == "kv-groups" else shape.group_size
    kept_units = math.floor(units * keep_fraction + 0.5)
    if kept_units < 1:
        raise SfsdError(f"keep fraction {keep_fraction} keeps no attention head ({units} {mode} per block): "
                        f"keep at least {0.5 / units:.3g}")
    heads, kv_heads = ((kept_units * shape.group_size, kept_units) if mode == "kv-groups"
                       else (kept_units * shape.kv_heads, shape.kv_heads))
    full = shape.params() * len(blocks)
    target = keep_fraction * full
    no_mlp = shape.params(heads, kv_heads, 0) * len(blocks)  # the attention (and the o/down biases)
    per_channel = shape.params(heads, kv_heads, 1) - shape.params(heads, kv_heads, 0)
    total = min(max(round((target - no_mlp) / per_channel), len(blocks)), shape.channels * len(blocks))
    base, extra = divmod(total, len(blocks))
    channels = {b: base + (1 if i < extra else 0) for i, b in enumerate(blocks)}
    params = no_mlp + total * per_channel
    if abs(params - target) > 0.005 * target:
        raise SfsdError(f"keep fraction {keep_fraction} cannot be reached within 0.5% with {heads} of {shape.heads} "
                        f"heads per block (it keeps {params / full:.3f}): choose another keep fraction")
    return PrunePlan(blocks, mode, heads, kv_heads, channels, params, full, float(keep_fraction))


# ---- surgery -------------------------------------------------------------------------------------------------

def _head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


def _sliced(layer: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new nn.Linear holding `rows` of the weight (and bias) and `cols` of the weight."""
    weight = layer.weight.detach()
    if rows is not None:
        weight = weight[rows.to(weight.device)]
    if cols is not None:
        weight = weight[:, cols.to(weight.device)]
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=layer.bias is not None, device="meta")
    new.weight = nn.Parameter(weight.clone(), requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        bias = layer.bias.detach()
        bias = bias if rows is None else bias[rows.to(bias.device)]
        new.bias = nn.Parameter(bias.clone(), requires_grad=layer.bias.requires_grad)
    return new


def _check_selection(shape: BlockShape, heads: torch.Tensor, kv_heads: torch.Tensor, channels: torch.Tensor):
    if not (len(heads) and len(kv_heads) and len(channels)):
        raise SfsdError("a block would keep no head or no channel: keep at least one of each")
    if heads.max() >= shape.heads or kv_heads.max() >= shape.kv_heads or channels.max() >= shape.channels or \
            min(heads.min(), kv_heads.min(), channels.min()) < 0:
        raise SfsdError("a kept head or channel index is outside the block: give indices of this block")
    groups = heads // shape.group_size
    counts = torch.bincount(groups, minlength=shape.kv_heads)
    if set(groups.tolist()) != set(kv_heads.tolist()) or len(set(counts[kv_heads].tolist())) != 1:
        raise SfsdError("every kept KV head needs the same number of kept query heads, and only those: "
                        "keep whole groups or the same count in each")


def prune_block(model: nn.Module, block: int, heads: Sequence[int], kv_heads: Sequence[int],
                channels: Sequence[int]) -> None:
    """Keep only query heads `heads`, KV heads `kv_heads` and MLP channels `channels` of one block (in place):
    fewer rows of q/k/v (their biases too), fewer columns of o, fewer rows of gate/up, fewer columns of down."""
    adapter = _prunable_adapter(model)
    _checked_blocks(adapter, [block])
    module = adapter.blocks[block]
    shape = block_shape(module)
    heads, kv_heads, channels = (torch.tensor(sorted(set(int(i) for i in x)), dtype=torch.long)
                                 for x in (heads, kv_heads, channels))
    _check_selection(shape, heads, kv_heads, channels)
    _cut(module, shape, heads, kv_heads, channels)


def _cut(module: nn.Module, shape: BlockShape, heads, kv_heads, channels) -> None:
    attn, mlp = module.self_attn, module.mlp
    q_rows, kv_rows = _head_rows(heads, shape.head_dim), _head_rows(kv_heads, shape.head_dim)
    attn.q_proj = _sliced(attn.q_proj, rows=q_rows)
    attn.k_proj = _sliced(attn.k_proj, rows=kv_rows)
    attn.v_proj = _sliced(attn.v_proj, rows=kv_rows)
    attn.o_proj = _sliced(attn.o_proj, cols=q_rows)
    mlp.gate_proj = _sliced(mlp.gate_proj, rows=channels)
    mlp.up_proj = _sliced(mlp.up_proj, rows=channels)
    mlp.down_proj = _sliced(mlp.down_proj, cols=channels)
    set_pruned_widths(module, len(heads), len(kv_heads), len(channels))


def select_groups(shape: BlockShape, scores: Mapping[str, torch.Tensor], heads: int, kv_heads: int,
                  channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The most important KV groups (score: their KV heads plus all their query heads), then within each
    the `heads / kv_heads` most important query heads, and the most important channels; sorted indices."""
    if not (1 <= kv_heads <= shape.kv_heads and 1 <= channels <= shape.channels and heads % kv_heads == 0
            and 1 <= heads // kv_heads <= shape.group_size):
        raise SfsdError(f"cannot keep {heads} heads, {kv_heads} KV heads and {channels} channels of a block with "
                        f"{shape.heads}, {shape.kv_heads} and {shape.channels}: keep whole groups or the same "
                        "number of query heads in each")
    per_group = scores["heads"].view(shape.kv_heads, shape.group_size)
    group_scores = scores["kv_heads"] + per_group.sum(1)
    kept_groups = torch.topk(group_scores, kv_heads).indices.sort().values
    inside = torch.topk(per_group[kept_groups], heads // kv_heads, dim=1).indices.sort(dim=1).values
    kept_heads = (kept_groups[:, None] * shape.group_size + inside).flatten()
    kept_channels = torch.topk(scores["channels"], channels).indices.sort().values
    return kept_heads, kept_groups, kept_channels


def prune_model(model: nn.Module, blocks: Iterable[int], heads_keep: int, kv_heads_keep: int,
                channels_keep: int | Mapping[int, int], importance: Mapping[int, Mapping[str, torch.Tensor]],
                ) -> dict[int, dict]:
    """Prune every block of `blocks` to its most important groups by `importance` (`taylor_importance`):
    `heads_keep` query heads in `kv_heads_keep` KV groups and `channels_keep` channels (a count, or one per
    block). Every block is checked before any is changed. Returns what each block kept."""
    adapter = _prunable_adapter(model)
    blocks = _checked_blocks(adapter, blocks)
    counts = channels_keep if isinstance(channels_keep, Mapping) else dict.fromkeys(blocks, channels_keep)
    chosen = {}
    for b in blocks:
        if b not in importance or b not in counts:
            raise SfsdError(f"no importance or channel count for block {b}: compute them for every pruned block")
        shape = block_shape(adapter.blocks[b])
        chosen[b] = (shape, *select_groups(shape, importance[b], heads_keep, kv_heads_keep, counts[b]))
    for b, (shape, heads, kv_heads, channels) in chosen.items():
        _cut(adapter.blocks[b], shape, heads, kv_heads, channels)
    return {b: {"heads": heads.tolist(), "kv_heads": kv_heads.tolist(), "channels": len(channels)}
            for b, (_, heads, kv_heads, channels) in chosen.items()}


# ---- the saved record ----------------------------------------------------------------------------------------

def pruned_record(kept: Mapping[int, Mapping], **info) -> dict:
    """What a saved config records (`sfsd_pruned`): the widths of every pruned block (what the loader reads)
    and `info` (how they were chosen, for people)."""
    return {"format": PRUNED_FORMAT, **info, "blocks": {
        str(b): {"heads": len(k["heads"]), "kv_heads": len(k["kv_heads"]), "channels": int(k["channels"])}
        for b, k in kept.items()}}


# ---- the one call --------------------------------------------------------------------------------------------

def prune(model: nn.Module, input_ids: torch.Tensor, blocks: Iterable[int], keep_fraction: float,
          kind: str = "param_first", gqa: str = "auto", batch_size: int = 8,
          attention_mask: torch.Tensor | None = None) -> dict:
    """Importance, plan, surgery and marking in one call (in place): `blocks`' q/k/v/o/gate/up/down keep
    `keep_fraction` of their parameters, by Taylor importance on `input_ids`. The model then saves with
    `save_pretrained` and reloads with `AutoModelForCausalLM.from_pretrained` after `import sfsd`.
    Returns what each block kept and the parameter counts."""
    from sfsd.accounting import count_parameters

    plan = plan_for_budget(model, blocks, keep_fraction, gqa)  # checks everything before anything changes
    _check_kind(kind)
    before = count_parameters(model)
    importance = taylor_importance(model, input_ids, plan.blocks, kind, batch_size, attention_mask)
    kept = prune_model(model, plan.blocks, plan.heads, plan.kv_heads, plan.channels, importance)
    mark_pruned(model, pruned_record(kept, kind=kind, gqa=plan.gqa, keep_fraction=plan.keep_fraction))
    return {"method": "llm-pruner", "kind": kind, "gqa": plan.gqa, "keep_fraction": plan.keep_fraction,
            "blocks": kept, "params_pruned_layers": plan.params, "params_pruned_layers_full": plan.params_full,
            "params_before": before, "params": count_parameters(model)}
