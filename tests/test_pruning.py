"""Structured pruning (sfsd.decompose.pruning): Taylor importance against autograd, exact surgery, the
budget plan, saving and reloading, and refusals that change nothing. Tiny models only."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_config, tiny_model

from sfsd.decompose.pruning import (
    block_shape,
    llm_pruner_blocks,
    plan_for_budget,
    prune,
    prune_block,
    prune_model,
    taylor_importance,
)
from sfsd.errors import SfsdError

ROLES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _model(model_type: str, seed: int = 0, **overrides):
    """tiny_model with config overrides (e.g. multi-head attention: num_key_value_heads=4)."""
    if not overrides:
        return tiny_model(model_type, seed)
    from transformers import AutoModelForCausalLM

    config = tiny_config(model_type)
    for key, value in overrides.items():
        setattr(config, key, value)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _ids(n: int = 5, length: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randint(3, 256, (n, length), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, use_cache=False).logits


def _snapshot(model) -> dict:
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}, "class": type(model),
            "flags": [p.requires_grad for p in model.parameters()], "config": model.config.to_dict()}


def _unchanged(model, before) -> None:
    assert type(model) is before["class"]
    assert model.config.to_dict() == before["config"]
    assert [p.requires_grad for p in model.parameters()] == before["flags"]
    after = model.state_dict()
    assert after.keys() == before["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(after[key], value), key


# ---- (a) importance ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kv_heads", [4, 2], ids=["multi-head", "grouped-query"])
def test_taylor_importance_equals_autograd(kv_heads):
    """Every group's score is the sum of |w * dL/dw| over its weights, L the mean LM loss over all the
    calibration tokens (one autograd call here; batches of 3 and 2 samples in the function)."""
    model = _model("llama", num_key_value_heads=kv_heads)
    ids = _ids(5)
    model.model.embed_tokens.weight.requires_grad_(False)  # a flag the function must give back
    marker = torch.ones_like(model.model.norm.weight)
    model.model.norm.weight.grad = marker  # a gradient the function must give back
    scores = taylor_importance(model, ids, [0, 1, 2], batch_size=3)

    blocks = model.model.layers
    weights = [blocks[b].get_submodule(role).weight for b in range(3) for role in ROLES]
    loss = model(input_ids=ids, labels=ids, use_cache=False).loss
    grads = dict(zip(map(id, weights), torch.autograd.grad(loss, weights), strict=True))

    def sal(block, role):
        weight = blocks[block].get_submodule(role).weight
        return (weight.detach() * grads[id(weight)]).abs()

    hd = 16
    for b in range(3):
        q, k, v, o = (sal(b, r) for r in ROLES[:4])
        gate, up, down = (sal(b, r) for r in ROLES[4:])
        heads = torch.stack([q[h * hd:(h + 1) * hd].sum() + o[:, h * hd:(h + 1) * hd].sum() for h in range(4)])
        kv = torch.stack([k[j * hd:(j + 1) * hd].sum() + v[j * hd:(j + 1) * hd].sum() for j in range(kv_heads)])
        channels = torch.stack([gate[i].sum() + up[i].sum() + down[:, i].sum() for i in range(96)])
        torch.testing.assert_close(scores[b]["heads"], heads, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(scores[b]["kv_heads"], kv, rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(scores[b]["channels"], channels, rtol=1e-4, atol=1e-9)
        assert (channels > 0).all() and (heads > 0).all()

    # Nothing left behind: the gradients and flags are as they were.
    assert model.model.norm.weight.grad is marker
    assert not model.model.embed_tokens.weight.requires_grad
    assert all(p.grad is None for n, p in model.named_parameters() if n != "model.norm.weight")
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "model.embed_tokens.weight")


def test_vectorize_sums_before_the_absolute_value():
    model = _model("llama")
    ids = _ids(3)
    scores = taylor_importance(model, ids, [1], kind="vectorize")
    gate, up, down = (model.model.layers[1].get_submodule(r).weight for r in ROLES[4:])
    grads = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, [gate, up, down])
    layers = zip((gate, up, down), grads, (1, 1, 0), strict=True)
    expected = sum(((w.detach() * g).sum(dim)).abs() for w, g, dim in layers)
    torch.testing.assert_close(scores[1]["channels"], expected, rtol=1e-4, atol=1e-9)


# ---- (b) surgery ---------------------------------------------------------------------------------------------

def _zeroed(model, kept: dict) -> torch.nn.Module:
    """The unpruned model with the pruned heads' o columns and the pruned channels' down columns zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for b, k in kept.items():
            block = ref.model.layers[b]
            shape = block_shape(block)
            for h in set(range(shape.heads)) - set(k["heads"]):
                block.self_attn.o_proj.weight[:, h * shape.head_dim:(h + 1) * shape.head_dim] = 0
            dropped = sorted(set(range(shape.channels)) - set(k["channel_indices"]))
            block.mlp.down_proj.weight[:, dropped] = 0
    return ref


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "gemma", "mistral", "qwen3", "gemma2", "gemma3_text"])
@pytest.mark.parametrize("heads,kv_heads", [(2, 2), (2, 1), (1, 1)], ids=["query-heads", "kv-groups", "both"])
def test_surgery_is_exact(model_type, heads, kv_heads):
    """Pruned logits equal the intact model's with the same heads and channels switched off; the layers
    really are smaller."""
    model = _model(model_type)
    generator = torch.Generator().manual_seed(3)
    importance = {b: {"heads": torch.rand(4, generator=generator), "kv_heads": torch.rand(2, generator=generator),
                      "channels": torch.rand(96, generator=generator)} for b in (0, 2)}
    order = {b: torch.argsort(importance[b]["channels"], descending=True) for b in (0, 2)}
    ids = _ids(2)
    original = copy.deepcopy(model)
    kept = prune_model(model, [0, 2], heads, kv_heads, {0: 40, 2: 41}, importance)
    for b, channels in ((0, 40), (2, 41)):
        kept[b]["channel_indices"] = sorted(order[b][:channels].tolist())
        attn, mlp = model.model.layers[b].self_attn, model.model.layers[b].mlp
        hd = attn.head_dim  # 16, or Qwen3's default 128
        assert attn.q_proj.weight.shape == (heads * hd, 64) and attn.o_proj.weight.shape == (64, heads * hd)
        assert attn.k_proj.weight.shape == attn.v_proj.weight.shape == (kv_heads * hd, 64)
        assert mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape == (channels, 64)
        assert mlp.down_proj.weight.shape == (64, channels)
        assert len(kept[b]["kv_heads"]) == kv_heads and attn.num_key_value_groups == heads // kv_heads
        if model_type == "qwen2":
            assert attn.q_proj.bias.shape == (heads * 16,) and attn.k_proj.bias.shape == (kv_heads * 16,)
    assert model.model.layers[1].self_attn.q_proj.weight.shape == original.model.layers[1].self_attn.q_proj.weight.shape
    torch.testing.assert_close(_logits(model, ids), _logits(_zeroed(original, kept), ids), rtol=0, atol=1e-5)


def test_prune_block_keeps_the_given_indices():
    model = _model("qwen2")
    original = copy.deepcopy(model)
    prune_block(model, 1, heads=[1, 3], kv_heads=[0, 1], channels=list(range(0, 96, 2)))
    attn = model.model.layers[1].self_attn
    q_old = original.model.layers[1].self_attn.q_proj
    assert torch.equal(attn.q_proj.weight, torch.cat([q_old.weight[16:32], q_old.weight[48:64]]))
    assert torch.equal(attn.q_proj.bias, torch.cat([q_old.bias[16:32], q_old.bias[48:64]]))
    kept = {1: {"heads": [1, 3], "channel_indices": list(range(0, 96, 2))}}
    ids = _ids(2)
    torch.testing.assert_close(_logits(model, ids), _logits(_zeroed(original, kept), ids), rtol=0, atol=1e-5)


# ---- (c) save and reload -------------------------------------------------------------------------------------

def _count_from_shapes(model_type: str, kept: dict) -> int:
    """All parameters of the tiny model after pruning, from the config's shapes and the kept counts."""
    hidden, inter, vocab, layers, hd = 64, 96, 256, 3, 16
    qkv_bias = model_type == "qwen2"
    tied = tiny_config(model_type).tie_word_embeddings
    total = vocab * hidden * (1 if tied else 2) + hidden  # embeddings (+ head), final norm
    for b in range(layers):
        heads, kv, channels = ((len(kept[b]["heads"]), len(kept[b]["kv_heads"]), kept[b]["channels"])
                               if b in kept else (4, 2, inter))
        total += 2 * hidden  # the two norms
        total += hidden * heads * hd * 2 + hidden * kv * hd * 2  # q, o, k, v
        total += (heads * hd + 2 * kv * hd) if qkv_bias else 0
        total += 3 * hidden * channels
    return total


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_saved_folder_reloads_with_plain_transformers(model_type, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _model(model_type)
    ids = _ids(4)
    record = prune(model, ids, [1, 2], 0.6, batch_size=2)
    assert record["params"] == _count_from_shapes(model_type, record["blocks"])
    assert record["params_before"] == _count_from_shapes(model_type, {})
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == f"sfsd_{model_type}"
    assert saved["sfsd_pruned"]["blocks"]["1"] == {"heads": len(record["blocks"][1]["heads"]), "kv_heads": 2,
                                                   "channels": record["blocks"][1]["channels"]}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert sum(p.numel() for p in loaded.parameters()) == record["params"]
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)
    # It generates with the stock cache (the KV heads kept, so the cache shapes are the config's).
    out = loaded.generate(ids[:1, :4], max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_low_rank_compression_of_a_pruned_model_reloads(tmp_path):
    """The pruned widths are rebuilt before the low-rank layers: a pruned model compressed later still loads."""
    from transformers import AutoModelForCausalLM

    from sfsd.decompose import LowRankLinear
    from sfsd.hf_classes import mark_compressed

    model = _model("llama")
    ids = _ids(3)
    prune(model, ids, [0, 1, 2], 0.75)
    down = model.model.layers[1].mlp.down_proj
    weight = down.weight.detach()
    first, second = weight[:8].contiguous(), torch.eye(64)[:, :8]  # any factors of the pruned shape
    model.model.layers[1].mlp.down_proj = LowRankLinear.from_factors(first, second, None, weight)
    d_in = weight.shape[1]
    mark_compressed(model, "weight", {"model.layers.1.mlp.down_proj":
                                      {"d_in": d_in, "d_out": 64, "rank": 8, "bias": False}})
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=0, atol=0)


# ---- (d) refusals --------------------------------------------------------------------------------------------

def _refused(call, model, match: str) -> None:
    before = _snapshot(model)
    with pytest.raises(SfsdError, match=match) as caught:
        call()
    assert "\n" not in str(caught.value)
    _unchanged(model, before)


def test_bad_inputs_are_refused_before_anything_changes():
    model = _model("llama")
    ids = _ids(2)
    imp = taylor_importance(model, ids, [0, 1])
    _refused(lambda: prune(model, ids, [0, 1], 0.0), model, r"outside \(0, 1\]")
    _refused(lambda: prune(model, ids, [0, 1], 1.5), model, r"outside \(0, 1\]")
    _refused(lambda: prune(model, ids, [0, 1], 0.2), model, "keeps no attention head")
    _refused(lambda: prune(model, ids, [0, 7], 0.5), model, "outside 0..2")
    _refused(lambda: prune(model, ids, [], 0.5), model, "no blocks")
    _refused(lambda: prune(model, ids, [0], 0.5, kind="param_mix"), model, "unknown Taylor importance")
    _refused(lambda: prune(model, ids, [0], 0.5, gqa="heads"), model, "unknown grouped-query mode")
    _refused(lambda: prune(model, ids[:, :1], [0], 0.5), model, "at least 2 tokens")
    # Three query heads kept in two groups, or a block without importance: nothing pruned, not even block 0.
    _refused(lambda: prune_model(model, [0, 1], 3, 2, 50, imp), model, "same number of query heads")
    _refused(lambda: prune_model(model, [0, 2], 2, 2, 50, imp), model, "no importance")
    _refused(lambda: prune_block(model, 0, [0, 1, 2], [0, 1], [0]), model, "same number of kept query heads")
    _refused(lambda: prune_block(model, 0, [0, 9], [0, 1], [0]), model, "outside the block")


@pytest.mark.parametrize("model_type", ["gpt2", "phi3"])
def test_fused_layouts_are_refused(model_type):
    model = tiny_model(model_type)
    _refused(lambda: prune(model, _ids(2), [0], 0.5), model, "separate q/k/v/o")


def test_a_pruned_model_is_not_pruned_again():
    model = _model("llama")
    prune(model, _ids(2), [0], 0.75)
    _refused(lambda: prune(model, _ids(2), [1], 0.75), model, "already compressed or pruned")


# ---- (e) the budget ------------------------------------------------------------------------------------------

def _linear_params(model, blocks) -> int:
    return sum(p.numel() for b in blocks for r in ROLES for p in model.model.layers[b].get_submodule(r).parameters())


def _check_lands(model, blocks, fraction) -> None:
    plan = plan_for_budget(model, blocks, fraction)
    full = _linear_params(model, blocks)
    assert plan.params_full == full
    assert abs(plan.params - fraction * full) <= 0.005 * fraction * full, (fraction, plan)
    assert max(plan.channels.values()) - min(plan.channels.values()) <= 1
    shape = block_shape(model.model.layers[blocks[0]])
    imp = {b: {"heads": torch.rand(shape.heads), "kv_heads": torch.rand(shape.kv_heads),
               "channels": torch.rand(shape.channels)} for b in blocks}
    pruned = copy.deepcopy(model)
    prune_model(pruned, blocks, plan.heads, plan.kv_heads, plan.channels, imp)
    assert _linear_params(pruned, blocks) == plan.params


@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.6, 0.75, 0.9, 1.0])
def test_plan_lands_on_the_budget_tiny(fraction):
    _check_lands(_model("qwen2"), [0, 1, 2], fraction)


@pytest.mark.parametrize("fraction", [0.5, 0.6, 0.75, 0.8, 0.9])
def test_plan_lands_on_the_budget_smollm2_shapes(fraction):
    """SmolLM2-135M's published block shapes (hidden 576, 9 query heads, 3 KV heads, MLP 1536), 2 blocks."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=576, intermediate_size=1536,
                                         num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=2,
                                         head_dim=64, tie_word_embeddings=True))
    plan = plan_for_budget(model, [0, 1], fraction)
    assert plan.gqa == "query-heads" and plan.kv_heads == 3
    assert plan.heads == 3 * round(3 * fraction)  # heads rounded, the same ratio as the channels
    _check_lands(model, [0, 1], fraction)


def test_gqa_modes_and_block_range():
    assert plan_for_budget(_model("llama", num_key_value_heads=4), [0], 0.5).gqa == "kv-groups"  # plain heads
    assert plan_for_budget(_model("llama"), [0], 0.5).gqa == "query-heads"
    plan = plan_for_budget(_model("llama"), [0], 0.5, gqa="kv-groups")
    assert (plan.heads, plan.kv_heads) == (2, 1)
    assert llm_pruner_blocks(32) == list(range(4, 30))
    assert llm_pruner_blocks(30) == list(range(4, 28))
