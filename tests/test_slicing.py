"""SliceGPT (`sfsd.decompose.slicing`): rotation keeps the model, the sequential PCA is that of the already-sliced
model, parameters are counted from shapes, the budget mapping lands within 0.5%, saved models reload, one-line
refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_llama, tiny_model
from transformers import AutoConfig, AutoModelForCausalLM

from sfsd.accounting import count_parameters, measure_macs
from sfsd.cli import main
from sfsd.decompose.slicing import (
    SliceWidths,
    principal_components,
    slice_model,
    sliced_parameters,
    width_for_params,
    width_for_slicing,
)
from sfsd.errors import SfsdError

FAMILIES = ("llama", "qwen2", "mistral")
CALIBRATION = ["--calib-source", "wiki", "--calib-samples", "8", "--calib-seq-len", "32"]


def _model(family: str, dtype=torch.float64):
    """A tiny random model with informative norm scales (random init leaves them at one)."""
    model = tiny_model(family).to(dtype)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.3)
    return model


def _tokens(model, rows: int = 12, cols: int = 24, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, model.config.vocab_size, (rows, cols), generator=generator)
    return ids, torch.ones_like(ids)


def _widths(model, width: int) -> SliceWidths:
    return SliceWidths.constant(model.config.hidden_size, model.config.num_hidden_layers, width)


@pytest.mark.parametrize("family", FAMILIES)
def test_rotation_without_slicing_keeps_the_logits(family):
    """Norm fusion + every rotation at the full width: the logits within 1e-4 in float64 (slicing 0 = the base)."""
    model = _model(family)
    probe, _ = _tokens(model, 3, 20, seed=7)
    with torch.no_grad():
        before = model(probe).logits
    assert width_for_slicing(model.config.hidden_size, 0.0) == model.config.hidden_size
    ids, mask = _tokens(model)
    slice_model(model, ids, mask, _widths(model, model.config.hidden_size), batch_size=4, progress=False)
    with torch.no_grad():
        after = model(probe).logits
    assert (after - before).abs().max().item() < 1e-4
    assert model.config.sfsd_sliced["embedding"] == model.config.hidden_size


def _count_from_shapes(config, width: int, biases: dict[str, bool]) -> int:
    """The sliced model's parameters from the config alone: embedding V x d, head V x D, the narrower layers
    (and their biases), two shortcuts per block, no norm scales."""
    hidden, vocab, n = config.hidden_size, config.vocab_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q, kv, ch = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim, config.intermediate_size
    total = vocab * width + vocab * hidden
    for block in range(n):
        d_in, d_mid, d_out = width, width, hidden if block == n - 1 else width
        total += d_in * (q + 2 * kv) + biases["qkv"] * (q + 2 * kv)
        total += q * d_mid + biases["o"] * d_mid
        total += 2 * d_mid * ch + ch * d_out
        total += d_in * d_mid + d_mid * d_out
    return total


@pytest.mark.parametrize("family", FAMILIES)
def test_parameters_of_a_sliced_model_equal_a_count_from_its_shapes(family, tmp_path):
    model = _model(family, torch.float32)
    config = model.config
    attn = model.model.layers[0].self_attn
    biases = {"qkv": attn.q_proj.bias is not None, "o": attn.o_proj.bias is not None}
    expected = _count_from_shapes(config, 40, biases)
    assert sliced_parameters(model, _widths(model, 40)) == expected
    ids, mask = _tokens(model)
    slice_model(model, ids, mask, _widths(model, 40), batch_size=4, progress=False)
    assert count_parameters(model) == expected
    probe, _ = _tokens(model, 2, 16, seed=3)
    with torch.no_grad():
        logits = model(probe).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert count_parameters(reloaded) == expected and not reloaded.config.tie_word_embeddings
    with torch.no_grad():
        assert torch.equal(reloaded(probe).logits, logits)
    assert measure_macs(reloaded, 16) > 0  # the shortcut products are counted by the flop counter as matmuls


def _gram(states: list[torch.Tensor]) -> torch.Tensor:
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in states]).to(torch.float64)
    return x.T @ x


def _is_diagonal_decreasing(gram: torch.Tensor) -> None:
    diag = gram.diagonal()
    off = gram - torch.diag(diag)
    assert off.abs().max().item() < 1e-8 * diag.max().item()
    assert torch.all(diag[:-1] >= diag[1:] - 1e-9 * diag.max())


def test_sequential_pca_is_that_of_the_already_sliced_model():
    """Independently of the code under test: run the final sliced model and collect, at every place where
    SliceGPT takes a PCA (the embeddings, between attention and MLP, each block's output), the states it carries.
    Each basis is the eigenbasis of the signal *of the already-sliced model* iff the Gram matrix of those states
    is diagonal with decreasing entries (the damping adds to the diagonal only, so it keeps the eigenvectors).
    A PCA taken on the unsliced model would leave off-diagonal terms from the second block on."""
    model = _model("llama")
    ids, mask = _tokens(model, rows=16, cols=24)
    slice_model(model, ids, mask, _widths(model, 48), batch_size=4, progress=False)
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for index, block in enumerate(model.model.layers):
        hooks.append(block.register_forward_pre_hook(
            lambda _m, args, i=index: seen.setdefault(f"in{i}", []).append(args[0])))
        hooks.append(block.post_attention_layernorm.register_forward_pre_hook(
            lambda _m, args, i=index: seen.setdefault(f"mid{i}", []).append(args[0])))
    with torch.no_grad():
        for start in range(0, ids.shape[0], 4):
            model(ids[start:start + 4])
    for hook in hooks:
        hook.remove()
    assert len(seen) == 2 * model.config.num_hidden_layers
    for name, states in seen.items():
        assert states[0].shape[-1] == 48, name
        _is_diagonal_decreasing(_gram(states))


def test_principal_components_skip_padding_and_damp_the_diagonal():
    generator = torch.Generator().manual_seed(0)
    states = torch.randn(2, 5, 4, generator=generator, dtype=torch.float64)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    values, vectors = principal_components([states], [keep], damping=0.01)
    x = states[keep]
    moment = x.T @ x
    moment += 0.01 * moment.diagonal().mean() * torch.eye(4, dtype=torch.float64)
    expected = torch.linalg.eigvalsh(moment).flip(0)
    assert torch.allclose(values, expected)
    assert torch.allclose(vectors.T @ moment @ vectors, torch.diag(expected), atol=1e-10)


@pytest.mark.parametrize("beta,last_blocks", [(0.46, 11), (0.33, 22), (0.8, 30)])
def test_target_parameters_are_met_within_half_a_percent(default_model_dir, beta, last_blocks):
    """The mapping from a parameter budget to the width, on the default model's shapes (weights on the meta
    device: only shapes are read) and on LLaMA-7B's (hidden 4096, 32 blocks)."""
    from sfsd.compress import eq3_parameters

    configs = [AutoConfig.from_pretrained(default_model_dir),
               AutoConfig.for_model("llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                    num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                                    tie_word_embeddings=False)]
    for config in configs:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        blocks = min(last_blocks, config.num_hidden_layers)
        target = eq3_parameters(model, beta, blocks)
        width = width_for_params(model, target)
        got = sliced_parameters(model, _widths(model, width))
        assert abs(got - target) / target < 0.005, (config.hidden_size, width, got, target)


def test_a_budget_slicegpt_cannot_reach_is_refused(default_model_dir):
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(default_model_dir))
    with pytest.raises(SfsdError, match="cannot reach"):
        width_for_params(model, count_parameters(model) * 2)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", default_model_dir, 4)


@pytest.mark.slow
def test_compress_with_slicing_saves_a_model_that_reloads_and_evaluates(capsys, tiny_folder, tmp_path):
    """`sfsd compress --method slicegpt --slicing 0.25` on a real tokenizer's tiny LLaMA: SliceGPT's width
    (48 of 64), a folder that plain transformers reloads (after `import sfsd`), and `sfsd ppl` on it."""
    out = tmp_path / "sliced"
    code = main(["compress", "--model", str(tiny_folder), "--method", "slicegpt", "--slicing", "0.25", *CALIBRATION,
                 "--out", str(out)])
    text, err = capsys.readouterr()
    assert code == 0, err
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.sfsd_sliced["embedding"] == 48 and model.config.sfsd["slicing"] == 0.25
    assert model.model.embed_tokens.weight.shape[1] == 48 and model.lm_head.weight.shape[1] == 64
    assert "slicegpt" in text
    code = main(["ppl", "--model", str(out), "--max-tokens", "256", "--seq-len", "64"])
    text, err = capsys.readouterr()
    assert code == 0, err
    assert "perplexity" in text and "loading " + str(out) in text


def test_compress_at_a_beta_matches_the_weight_rows_parameters(capsys, tiny_folder, tmp_path):
    """`--method slicegpt --beta B --last-blocks N`: the whole model sliced to the total parameters of Eq. 3's
    thin layers on the last N blocks (the weight-space row of Table 1), within the step of one width."""
    from sfsd.compress import describe

    out = tmp_path / "sliced"
    assert main(["compress", "--model", str(tiny_folder), "--method", "slicegpt", "--beta", "0.5", "--last-blocks",
                 "4", *CALIBRATION, "--out", str(out)]) == 0, capsys.readouterr().err
    weight = tmp_path / "weight"
    assert main(["compress", "--model", str(tiny_folder), "--method", "weight", "--beta", "0.5", "--last-blocks",
                 "4", "--out", str(weight)]) == 0, capsys.readouterr().err
    sliced, svd = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(weight)
    step = sliced.config.vocab_size + 4 * 4 * 64  # one width more: an embedding column and a few rows per block
    assert abs(count_parameters(sliced) - count_parameters(svd)) <= step
    info = describe(sliced)
    assert info["method"] == "slicegpt" and info["params"] == count_parameters(sliced)
    # every layer narrower but the last block's down_proj, which writes the full width the unsliced head reads
    assert 0 < info["overall_budget"] < 1 and (info["table"]["beta"] < 1).sum() == len(info["table"]) - 1


@pytest.mark.parametrize("argv,fragment", [
    (["--method", "slicegpt", "--slicing", "1.2"], "--slicing must be in [0, 1)"),
    (["--method", "feature", "--slicing", "0.2"], "--slicing is SliceGPT's knob"),
    (["--method", "slicegpt", "--slicing", "0.2", "--beta", "0.5"], "give one budget"),
    (["--method", "slicegpt", "--slicing", "0.2", "--ranks", "{ranks}"], "give one budget"),
])
def test_bad_slicing_requests_are_one_line_errors(capsys, tiny_folder, tmp_path, argv, fragment):
    out = tmp_path / "out"
    (tmp_path / "ranks.json").write_text("{}")
    argv = [a.format(ranks=tmp_path / "ranks.json") for a in argv]
    code = main(["compress", "--model", str(tiny_folder), *argv, *CALIBRATION, "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0 and fragment in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("family", ["gpt2", "phi3", "gemma"])
def test_other_families_are_refused_in_one_line(family):
    model = tiny_model(family)
    ids, mask = _tokens(model)
    with pytest.raises(SfsdError, match="slicegpt supports llama, mistral, qwen2") as info:
        slice_model(model, ids, mask, _widths(model, 32), progress=False)
    assert "\n" not in str(info.value)
