"""The block-streaming engine: same decompositions as the in-memory pass, resume, bounded memory."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config, tiny_model

from sfsd.adapters import adapter_for
from sfsd.calibration import choose_sides, collect_statistics
from sfsd.compress import CalibrationSpec, calibration_tokens, stream_decompositions
from sfsd.decompose import fit_decompositions, get_method

CALIB = CalibrationSpec(source="random", samples=12, seq_len=24)
FIELDS = ("basis", "coeffs", "spectrum", "bias", "mean_shift")


def _padded_tokens(model):
    """Random calibration ids with right padding in some rows, so the padding mask matters."""
    ids, mask = calibration_tokens(None, CALIB, model.config.vocab_size)
    mask[::3, 17:] = 0
    return ids, mask


def _model(arch):
    """The tiny model; Gemma 3 with alternating sliding/full attention, so blocks get different masks."""
    if arch != "gemma3_text":
        return tiny_model(arch)
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch)
    config.sliding_window = 8
    config.layer_types = ["sliding_attention", "full_attention", "sliding_attention"]
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


def _in_memory(model, method, layers, ids, mask):
    """The full-model pass, each group on the side the streamed engine picks for `method`."""
    adapter = adapter_for(model)
    sides = choose_sides(layers, get_method(method).output_statistics)
    stats = collect_statistics(model, adapter, layers, ids, mask, batch_size=5, progress=False, sides=sides)
    return fit_decompositions(adapter, layers, method, stats, progress=False)


def _assert_same(streamed, reference):
    assert list(streamed) == list(reference)
    for name, ref in reference.items():
        got = streamed[name]
        assert got.max_rank == ref.max_rank, name
        for field in FIELDS:
            a, b = getattr(got, field), getattr(ref, field)
            assert (a is None) == (b is None), (name, field)
            if a is not None:
                torch.testing.assert_close(a.double(), b.double(), atol=1e-6, rtol=1e-6, msg=f"{name}.{field}")


@pytest.mark.parametrize("arch,method", [("llama", "feature"), ("gemma3_text", "feature"), ("gpt2", "svdllm"),
                                         ("phi3", "asvd"), ("qwen2", "weight")])
def test_streamed_equals_in_memory(arch, method, monkeypatch):
    model = _model(arch)
    ids, mask = _padded_tokens(model)
    monkeypatch.setattr("sfsd.compress.calibration_tokens", lambda *a: (ids, mask))
    layers = adapter_for(model).layers()
    reference = _in_memory(model, method, layers, ids, mask)
    streamed = stream_decompositions(model, None, layers, method, CALIB, batch_size=5, progress=False)
    _assert_same(streamed, reference)


def _block_files(folder):
    return {p.parent.name: p.stat().st_mtime_ns for p in sorted(folder.glob("block-*/decompositions.safetensors"))}


def test_resume_reuses_verified_blocks_and_redoes_a_corrupt_one(tmp_path):
    model = tiny_model("llama")
    layers = adapter_for(model).layers()
    folder = tmp_path / "decs"
    first = stream_decompositions(model, None, layers, "feature", CALIB, folder, batch_size=5, progress=False)
    before = _block_files(folder)
    assert list(before) == ["block-0000", "block-0001", "block-0002"]

    # An interruption after block 1: block 2 never written. A corrupt block 1 (bit flip) fails its checksum.
    import shutil

    shutil.rmtree(folder / "block-0002")
    data = bytearray((folder / "block-0001" / "decompositions.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "block-0001" / "decompositions.safetensors").write_bytes(bytes(data))

    timings: dict = {}
    again = stream_decompositions(model, None, layers, "feature", CALIB, folder, batch_size=5, progress=False,
                                  timings=timings)
    after = _block_files(folder)
    assert after["block-0000"] == before["block-0000"]  # reused, not rewritten
    assert sorted(timings["blocks"]) == [1, 2]  # only the corrupt and the missing block were computed
    _assert_same(again, first)


def test_weight_method_needs_no_calibration_pass(tmp_path):
    model = tiny_model("llama")
    layers = adapter_for(model).layers()[-7:]
    timings: dict = {}
    decs = stream_decompositions(model, None, layers, "weight", CALIB, tmp_path / "w", progress=False,
                                 timings=timings)
    assert "capture_s" not in timings and sorted(timings["blocks"]) == [2]
    assert set(decs) == {layer.name for layer in layers}
