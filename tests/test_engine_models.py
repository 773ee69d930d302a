"""The engine on tiny randomly initialised models of every supported architecture."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_model
from transformers import AutoModelForCausalLM

from sfsd.accounting import count_parameters
from sfsd.adapters import SUPPORTED_MODEL_TYPES, adapter_for
from sfsd.calibration import collect_statistics
from sfsd.compress import CalibrationSpec, Compressor, compress, describe, save_compressed
from sfsd.decompose import LowRankLinear, rank_for_budget
from sfsd.decompose.fusion import LOW_RANK_TYPES
from sfsd.errors import SfsdError

ARCHS = ["llama", "mistral", "qwen2", "gemma", "gemma2", "gemma3_text", "phi3", "gpt2"]
CALIB = CalibrationSpec(source="random", samples=24, seq_len=32)


def _ids(model, seed=1):
    return torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))


def test_every_listed_architecture_is_supported():
    assert set(ARCHS) <= set(SUPPORTED_MODEL_TYPES)


@pytest.mark.parametrize("arch", ARCHS)
def test_compress_shapes_params_and_reload(arch, tmp_path):
    model = tiny_model(arch)
    adapter = adapter_for(model)
    layers = adapter.layers()
    assert {layer.role for layer in layers} == set(adapter.role_names())
    before = count_parameters(model)
    compress(model, None, "feature", beta=0.5, last_blocks=2, calibration=CALIB, progress=False)

    info = describe(model, seq_len=16)
    removed = 0
    for layer in layers:
        module = model.get_submodule(layer.name)
        if layer.block == 0:
            assert not isinstance(module, LowRankLinear)
            continue
        rank = rank_for_budget(0.5, layer.d_in, layer.d_out)
        assert isinstance(module, LOW_RANK_TYPES) and module.rank == rank
        assert module.first_weight.shape == (rank, layer.d_in)
        assert module.second.weight.shape == (layer.d_out, rank)
        had_bias = getattr(tiny_model(arch).get_submodule(layer.name), "bias", None) is not None
        removed += layer.d_in * layer.d_out - rank * (layer.d_in + layer.d_out) - (0 if had_bias else layer.d_out)
    assert count_parameters(model) == before - removed == info["params"]
    assert info["layers_decomposed"] == 2 * len(adapter.role_names())

    ids = _ids(model)
    expected = model(ids).logits
    save_compressed(model, None, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == f"sfsd_{arch}" and config["sfsd_method"] == "feature"
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(reloaded(ids).logits, expected)  # bit-identical
    assert count_parameters(reloaded) == count_parameters(model)  # not inflated back


@pytest.mark.parametrize("arch", ["llama", "gpt2", "phi3"])
def test_full_rank_model_matches_original(arch):
    model = tiny_model(arch)
    ids = _ids(model)
    expected = model(ids).logits
    compressor = Compressor(model, None, "feature", CALIB, progress=False)
    ranks = {layer.name: min(layer.d_in, layer.d_out) for layer in compressor.layers}
    from sfsd.decompose import apply_ranks

    apply_ranks(model, compressor.decompose(), ranks)
    assert torch.allclose(model(ids).logits, expected, atol=1e-4)


def _output_error(dec, rank, weight, cov):
    """Mean squared output error of the rank-r factors about the mean: tr(D Cov D^T), D = W - W_r."""
    first, second, _ = dec.factors(rank)
    delta = weight - second.double() @ first.double()
    return float(torch.trace(delta @ cov @ delta.T))


def test_feature_beats_weight_on_calibration_outputs():
    """At the same ranks, feature space reconstructs the layer outputs better than weight-space SVD."""
    model = tiny_model("llama")
    adapter = adapter_for(model)
    compressors = {m: Compressor(model, None, m, CALIB, progress=False) for m in ("feature", "weight")}
    compressors["feature"].collect()  # down_proj's statistics on its output side
    stats = Compressor(model, None, "svdllm", CALIB, progress=False).collect()  # every input's covariance
    for layer in adapter.layers():
        feat = compressors["feature"].decompose()[layer.name]
        weight = compressors["weight"].decompose()[layer.name]
        rank = rank_for_budget(0.4, layer.d_in, layer.d_out)
        s = stats[layer.input_group]
        cov = s.covariance
        w = adapter.weight_and_bias(model.get_submodule(layer.name))[0].double()

        feat_error = _output_error(feat, rank, w, cov)
        # The centred output error of feature space is its discarded eigenvalues (the paper's optimality claim).
        assert feat_error == pytest.approx(feat.residual_energy(rank), rel=1e-6, abs=1e-9)
        assert feat_error <= _output_error(weight, rank, w, cov) + 1e-9


@pytest.mark.parametrize("method", ["weight", "asvd", "svdllm", "feature-uncentred"])
def test_other_methods_compress_and_reload(method, tmp_path):
    model = tiny_model("qwen2")
    compress(model, None, method, beta=0.4, last_blocks=3, calibration=CALIB, progress=False)
    ids = _ids(model)
    expected = model(ids).logits
    save_compressed(model, None, tmp_path / method)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / method).eval()
    assert torch.equal(reloaded(ids).logits, expected)
    assert reloaded.config.sfsd_method == method


def test_explicit_ranks_and_their_errors():
    model = tiny_model("llama")
    name = "model.layers.1.self_attn.q_proj"
    compress(model, None, "feature", ranks={name: 5}, calibration=CALIB, progress=False)
    assert model.get_submodule(name).rank == 5
    assert describe(model, 8)["layers_decomposed"] == 1
    fresh = tiny_model("llama")
    with pytest.raises(SfsdError, match="not decomposable layers"):
        compress(fresh, None, "feature", ranks={"model.layers.1.q_proj": 5}, calibration=CALIB, progress=False)
    with pytest.raises(SfsdError, match="outside 1..64"):
        compress(fresh, None, "feature", ranks={name: 65}, calibration=CALIB, progress=False)
    with pytest.raises(SfsdError, match="beta"):
        compress(fresh, None, "feature", beta=1.5, last_blocks=1, calibration=CALIB, progress=False)
    with pytest.raises(SfsdError, match="last-blocks"):
        compress(fresh, None, "feature", beta=0.5, last_blocks=7, calibration=CALIB, progress=False)


def test_unsupported_architecture_names_the_supported_ones():
    from transformers import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32,
                                     num_attention_heads=2, word_embed_proj_dim=16))
    with pytest.raises(SfsdError, match="not supported: use a model of type llama"):
        adapter_for(model)


def test_padding_tokens_are_excluded_from_statistics():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    layers = adapter.layers(blocks=[0], roles=["q"])
    ids = torch.randint(0, 256, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    stats = collect_statistics(model, adapter, layers, ids, mask, progress=False)
    got = next(iter(stats.values()))
    assert got.count == 16
    # The sums are those of the 16 real tokens' inputs, captured independently with a hook of our own.
    seen = []
    module = model.get_submodule(layers[0].name)
    handle = module.register_forward_hook(lambda m, args, out: seen.append(args[0].detach()))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    handle.remove()
    real = seen[0][mask.bool()].double()
    assert torch.allclose(got.sum_x, real.sum(0), rtol=1e-5, atol=1e-5)
    assert torch.allclose(got.sum_xxT, real.T @ real, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got.sum_x, seen[0].reshape(-1, real.shape[1]).double().sum(0), atol=1e-3)
