"""Output-side statistics (identical decompositions, cheaper Grams) and the on-disk statistics cache."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from sfsd.adapters import adapter_for
from sfsd.calibration import OUTPUT, choose_sides, collect_statistics
from sfsd.calibration.cache import StatisticsCache
from sfsd.calibration.statistics import add_gram
from sfsd.compress import CalibrationSpec, calibration_tokens, compress, statistics_folder
from sfsd.decompose import METHODS, fit_decompositions
from sfsd.errors import SfsdError

# the methods that can work from output-side statistics: the four feature-space variants
FEATURE_METHODS = [name for name, method in METHODS.items() if method.output_statistics]
CALIB = CalibrationSpec(source="random", samples=12, seq_len=24)


def _tokens(model):
    ids, mask = calibration_tokens(None, CALIB, model.config.vocab_size)
    mask[::3, 17:] = 0  # right padding in some rows: the padding mask matters on both sides
    return ids, mask


def _aligned(basis: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`basis` with each column's sign flipped to match `reference` (eigenvectors are defined up to sign)."""
    signs = torch.sign((basis * reference).sum(0))
    return basis * torch.where(signs == 0, 1.0, signs)


@pytest.mark.parametrize("dim,dtype", [(64, torch.float64), (576, torch.float32), (1000, torch.float64)])
def test_blocked_gram_equals_the_full_product(dim, dtype):
    x = torch.randn(300, dim, generator=torch.Generator().manual_seed(dim), dtype=dtype)
    total = torch.ones(dim, dim, dtype=torch.float64)  # adds to what is there
    add_gram(total, x)
    expected = 1 + (x.T @ x).double()
    torch.testing.assert_close(total, expected, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=0)


def test_choose_sides_follows_the_gram_cost():
    layers = adapter_for(tiny_model("llama")).layers(blocks=[0])  # d 64, mlp 96, k/v 32 wide
    sides = choose_sides(layers, output_side_ok=True)
    group = {layer.role: layer.input_group for layer in layers}
    assert sides[group["down"]] == OUTPUT  # 64^2 < 96^2
    assert sides[group["q"]] == "input"  # 64^2 + 2 * 32^2 > 64^2
    assert sides[group["o"]] == "input"  # a tie keeps the side that serves every method
    assert sides[group["gate"]] == "input"
    only_kv = [layer for layer in layers if layer.role in ("k", "v")]
    assert set(choose_sides(only_kv, True).values()) == {OUTPUT}  # 2 * 32^2 < 64^2
    assert set(choose_sides(layers, output_side_ok=False).values()) == {"input"}


@pytest.mark.parametrize("arch,roles", [("llama", None), ("gpt2", None), ("qwen2", ["k", "v", "down"]),
                                        ("phi3", None)])
@pytest.mark.parametrize("method", FEATURE_METHODS)
def test_output_side_decompositions_equal_the_input_side(arch, roles, method):
    """Same ranks, spectra, factors (up to each eigenvector's sign) and biases, within 1e-6, in float64.

    GPT-2's down layer (Conv1D, transposed) and Qwen2's k/v (chosen without q) have biases: the output
    side takes them off y before its Gram.
    """
    model = tiny_model(arch).double()
    adapter = adapter_for(model)
    layers = adapter.layers(roles=roles)
    ids, mask = _tokens(model)
    sides = choose_sides(layers, output_side_ok=True)
    assert OUTPUT in sides.values()
    outputs = collect_statistics(model, adapter, layers, ids, mask, batch_size=5, progress=False, sides=sides)
    inputs = collect_statistics(model, adapter, layers, ids, mask, batch_size=5, progress=False)
    via_outputs = fit_decompositions(adapter, layers, method, outputs, progress=False)
    via_inputs = fit_decompositions(adapter, layers, method, inputs, progress=False)
    checked = 0
    for layer in layers:
        got, ref = via_outputs[layer.name], via_inputs[layer.name]
        assert got.max_rank == ref.max_rank, layer.name
        torch.testing.assert_close(got.spectrum, ref.spectrum, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(_aligned(got.basis, ref.basis), ref.basis, atol=1e-6, rtol=1e-6)
        for rank in (1, got.max_rank // 2, got.max_rank):
            first, second, bias = got.factors(rank)
            ref_first, ref_second, ref_bias = ref.factors(rank)
            torch.testing.assert_close(second @ first, ref_second @ ref_first, atol=1e-6, rtol=1e-6)
            assert (bias is None) == (ref_bias is None), layer.name
            if bias is not None:
                torch.testing.assert_close(bias, ref_bias, atol=1e-6, rtol=1e-6)
        checked += layer.name in outputs
    assert checked >= 1  # at least one layer really went through the output side


def test_input_side_methods_refuse_output_statistics():
    model = tiny_model("llama")
    adapter = adapter_for(model)
    layers = [layer for layer in adapter.layers(blocks=[0]) if layer.role == "down"]
    ids, mask = _tokens(model)
    stats = collect_statistics(model, adapter, layers, ids, mask, progress=False, sides=choose_sides(layers, True))
    with pytest.raises(SfsdError, match="inputs, not its outputs"):
        fit_decompositions(adapter, layers, "svdllm", stats, progress=False)


class _CalibrationCalls:
    """Counts real forward calls of the embedding and of every decoder block on calibration-length
    sequences (compress also measures the base model's MACs, with one forward at another length)."""

    def __init__(self, model):
        adapter = adapter_for(model)
        self.count = 0
        modules = [model.get_input_embeddings(), *adapter.blocks]
        self.handles = [m.register_forward_hook(self._hook) for m in modules]

    def _hook(self, _module, _args, output):
        states = output[0] if isinstance(output, tuple) else output
        self.count += states.shape[1] == CALIB.seq_len


def _compress(method, timings=None):
    model = tiny_model("llama")
    calls = _CalibrationCalls(model)
    compress(model, None, method, beta=0.5, last_blocks=2, calibration=CALIB, batch_size=5, progress=False,
             timings=timings)
    return model, calls.count


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        torch.testing.assert_close(sa[name], sb[name], atol=1e-6, rtol=1e-6, msg=name)


def test_second_compress_reuses_the_statistics_and_a_corrupt_entry_is_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path / "reference"))
    references = {m: _compress(m)[0] for m in ("feature-paper", "feature-official")}  # each with its own pass

    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path / "shared"))
    _, first_calls = _compress("feature")
    assert first_calls > 0
    files = sorted((tmp_path / "shared" / "statistics").glob("*/*.safetensors"))
    assert any(".output." in f.name for f in files) and any(".input." in f.name for f in files)

    # Another method (its decompositions are not cached): every statistic comes from the cache, no forward.
    timings: dict = {}
    model, calls = _compress("feature-paper", timings)
    assert calls == 0 and timings["forward_blocks"] == [] and "capture_s" not in timings
    assert timings["statistics_cached_blocks"] == [1, 2]
    _same_weights(model, references["feature-paper"])

    # One flipped byte in a block-1 entry: that block's statistics are recomputed (blocks 0 and 1 run),
    # block 2's still come from the cache, and the entry is whole again.
    broken = next(f for f in files if ".layers.1." in f.name and ".output." in f.name)
    data = bytearray(broken.read_bytes())
    data[-1] ^= 0xFF
    broken.write_bytes(bytes(data))
    timings = {}
    model, calls = _compress("feature-official", timings)
    assert calls > 0 and timings["forward_blocks"] == [0, 1] and timings["statistics_cached_blocks"] == [2]
    _same_weights(model, references["feature-official"])
    assert broken.read_bytes() != bytes(data)


def test_cache_entries_check_themselves(tmp_path, monkeypatch):
    model = tiny_model("llama")
    adapter = adapter_for(model)
    layers = adapter.layers(blocks=[0])
    ids, mask = _tokens(model)
    stats = collect_statistics(model, adapter, layers, ids, mask, progress=False, sides=choose_sides(layers, True))
    cache = StatisticsCache(tmp_path)
    for key, value in stats.items():
        cache.save(key, value)
    for key, value in stats.items():
        loaded = cache.load(key, value.side)
        assert loaded is not None and loaded.count == value.count
        for name, tensor in value.tensors().items():
            assert torch.equal(loaded.tensors()[name], tensor)
    key, value = next(iter(stats.items()))
    monkeypatch.setattr("sfsd.calibration.cache.STATISTICS_FORMAT", 2)  # a later format: stale
    assert cache.load(key, value.side) is None
    monkeypatch.undo()
    assert cache.load(key, value.side) is not None
    path = cache.path(key, value.side)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # a bit flip inside the tensors
    path.write_bytes(bytes(data))
    assert cache.load(key, value.side) is None
    path.write_bytes(b"\x00" * 7)  # a truncated file
    assert cache.load(key, value.side) is None
    assert not cache.has("model.layers.9:mlp_out", OUTPUT)  # missing


def test_the_cache_folder_follows_weights_tokens_and_batch_size():
    model = tiny_model("llama")
    ids, mask = _tokens(model)
    base = statistics_folder(model, CALIB, ids, mask, 5)
    assert statistics_folder(model, CALIB, ids, mask, 5) == base
    assert statistics_folder(model, CALIB, ids, mask, 4) != base
    assert statistics_folder(model, CALIB, ids, 1 - mask, 5) != base
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert statistics_folder(model, CALIB, ids, mask, 5) != base
