"""Shared first factors (q/k/v; gate/up as one GEMM): same outputs as separate layers, saved and reloaded."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from conftest import tiny_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfsd.compress import CalibrationSpec, compress, save_compressed
from sfsd.decompose import LowRankLinear
from sfsd.decompose.fusion import fuse_shared_inputs, unfuse_shared_inputs
from sfsd.decompose.lowrank import SharedInputFirst, SharedInputLowRank
from sfsd.models import load_model

# The families whose adapters have separate q/k/v and gate/up layers (phi3 and gpt2 store them fused).
SHARED_INPUT_ARCHS = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"]
CALIB = CalibrationSpec(source="random", samples=24, seq_len=32)


def _ids(model, seed=1):
    return torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))


class CountGemms(TorchDispatchMode):
    """Counts the matrix products (mm, addmm) that reach the kernels."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


def _gemms(model, ids) -> int:
    with torch.no_grad(), CountGemms() as counter:
        model(ids)
    return counter.count


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _compressed(arch: str, last_blocks: int = 3):
    model = tiny_model(arch)
    compress(model, None, "feature", beta=0.5, last_blocks=last_blocks, calibration=CALIB, progress=False)
    return model


@pytest.mark.parametrize("arch", SHARED_INPUT_ARCHS)
def test_fused_equals_unfused_and_saves_fewer_gemms(arch):
    fused = _compressed(arch)
    blocks = fused.config.num_hidden_layers
    assert len(fused.config.sfsd_fused) == 2 * blocks  # attention input and MLP input of every block
    separate = copy.deepcopy(fused)
    unfuse_shared_inputs(separate)
    assert not any(isinstance(m, (SharedInputFirst, SharedInputLowRank)) for m in separate.modules())
    ids = _ids(fused)
    with torch.no_grad():
        expected, got = separate(ids).logits, fused(ids).logits
    assert _relative(got, expected) < 1e-5
    # q/k/v: 3 first GEMMs become 1; gate/up: 2 become 1.
    assert _gemms(separate, ids) - _gemms(fused, ids) == 3 * blocks


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_saved_folder_loads_fused_with_plain_from_pretrained(arch, tmp_path):
    model = _compressed(arch, last_blocks=2)
    ids = _ids(model)
    with torch.no_grad():
        expected = model(ids).logits
    save_compressed(model, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert set(config["sfsd_fused"]) == {f"model.layers.{b}.{part}" for b in (1, 2)
                                         for part in ("self_attn.sfsd_attn_in", "mlp.sfsd_mlp_in")}
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert isinstance(reloaded.get_submodule("model.layers.2.self_attn.k_proj"), SharedInputLowRank)
    assert isinstance(reloaded.get_submodule("model.layers.2.mlp.sfsd_mlp_in"), SharedInputFirst)
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, expected)


def test_folder_saved_before_fusion_still_loads(tmp_path, default_model_dir):
    """The format written before shared first factors (per-layer first.weight, no sfsd_fused) still loads:
    unfused by plain from_pretrained, fused by sfsd's loader; the same logits either way."""
    model = _compressed("llama", last_blocks=2)
    unfuse_shared_inputs(model)
    del model.config.sfsd_fused
    model.save_pretrained(tmp_path / "old")
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(tmp_path / "old")  # for sfsd's loader
    assert "sfsd_fused" not in json.loads((tmp_path / "old" / "config.json").read_text())
    ids = _ids(model)
    with torch.no_grad():
        expected = model(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tmp_path / "old").eval()
        assert type(plain.get_submodule("model.layers.2.self_attn.q_proj")) is LowRankLinear
        assert torch.equal(plain(ids).logits, expected)
        loaded, _ = load_model(str(tmp_path / "old"), "cpu")
        assert isinstance(loaded.get_submodule("model.layers.2.self_attn.q_proj"), SharedInputLowRank)
        assert _relative(loaded(ids).logits, expected) < 1e-5


def test_shared_product_is_recomputed_for_a_changed_input():
    """A member never receives a stale slice: another tensor, or the same one changed in place, recomputes."""
    model = _compressed("llama", last_blocks=1)
    attn = model.get_submodule("model.layers.2.self_attn")
    separate = copy.deepcopy(model)
    unfuse_shared_inputs(separate)
    ref = separate.get_submodule("model.layers.2.self_attn")
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        assert torch.allclose(attn.q_proj(x), ref.q_proj(x), rtol=1e-5, atol=1e-6)
        x.mul_(2)  # in place, before k and v took their slices
        assert torch.allclose(attn.k_proj(x), ref.k_proj(x), rtol=1e-5, atol=1e-6)
        other = torch.randn(2, 5, 64)
        assert torch.allclose(attn.v_proj(other), ref.v_proj(other), rtol=1e-5, atol=1e-6)
        assert torch.allclose(attn.v_proj(other), ref.v_proj(other), rtol=1e-5, atol=1e-6)  # asked twice


def test_refusing_after_a_layer_is_swapped_keeps_outputs():
    """A layer replaced after fusion (as a search or a second apply does) leaves no stale group behind."""
    from sfsd.decompose import set_module

    model = _compressed("llama", last_blocks=1)
    name = "model.layers.2.self_attn.q_proj"
    old = model.get_submodule(name)
    set_module(model, name, LowRankLinear.from_factors(old.first_weight.detach(), old.second.weight.detach(),
                                                       old.second.bias.detach(), old.second.weight))
    record = fuse_shared_inputs(model)
    assert record["model.layers.2.self_attn.sfsd_attn_in"] == [name, name.replace("q_", "k_"),
                                                               name.replace("q_", "v_")]
    assert sum(isinstance(m, SharedInputFirst) for m in model.modules()) == 2
    separate = copy.deepcopy(model)
    unfuse_shared_inputs(separate)
    ids = _ids(model)
    with torch.no_grad():
        assert _relative(model(ids).logits, separate(ids).logits) < 1e-5
