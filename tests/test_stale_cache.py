"""Stale decompositions are never reused: the real CLI on a tiny saved model.

A bumped decomposition format, or one weight changed in place (same file size and modification time),
must make `sfsd compress` and `sfsd uniform` compute new decompositions, and give what they give with
no cache at all. (These tests use only the CLI, so they also run against code without `sfsd.cache`.)
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest
import torch
from conftest import make_private_cache, save_tiny_llama
from safetensors.torch import load_file

from sfsd.cli import main
from sfsd.decompose import DECOMPOSITION_FORMAT

EDITED = "model.layers.1.self_attn.q_proj.weight"  # a layer every compression below decomposes
CALIBRATION = ["--calib-source", "random", "--calib-samples", "4", "--calib-seq-len", "8"]
UNIFORM = ["--method", "feature", "--beta", "0.5", "--last-blocks", "2", *CALIBRATION, "--ppl-seq-lens", "32",
           "--quiet"]


def _private_cache(root: Path, monkeypatch) -> Path:
    """Another empty private cache as SFSD_CACHE_DIR (the prepared inputs linked): "no cache at all"."""
    root.mkdir(parents=True)
    monkeypatch.setenv("SFSD_CACHE_DIR", str(make_private_cache(root)))
    return root


@pytest.fixture()
def model_dir(tmp_path, default_model_dir):
    """A tiny 2-block LLaMA (float32) with the real tokenizer, saved to a folder of its own (tests edit it)."""
    return save_tiny_llama(tmp_path / "tiny-llama", default_model_dir, 2)


def _cli(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _compress(capsys, model: Path, out: Path) -> Path:
    _cli(capsys, "compress", "--model", model, "--beta", "0.5", *CALIBRATION, "--out", out)
    return out


def _decomposition_folders(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "decompositions").iterdir())


def _edit_one_weight_in_place(model: Path) -> None:
    """Add 0.5 to one element of `EDITED` inside model.safetensors, keeping the file's size and times."""
    path = model / "model.safetensors"
    before = path.stat()
    data = bytearray(path.read_bytes())
    (length,) = struct.unpack("<Q", data[:8])
    entry = json.loads(data[8 : 8 + length])[EDITED]
    assert entry["dtype"] == "F32"
    start = 8 + length + entry["data_offsets"][0]
    (value,) = struct.unpack_from("<f", data, start)
    struct.pack_into("<f", data, start, value + 0.5)
    with open(path, "r+b") as handle:  # the same file, rewritten in place
        handle.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert load_file(str(path))[EDITED].reshape(-1)[0].item() == pytest.approx(value + 0.5)


def _same_tensors(a: Path, b: Path) -> None:
    first, second = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert sorted(first) == sorted(second)
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-6, atol=1e-6, msg=name)


@pytest.mark.slow
def test_compress_recomputes_after_a_decomposition_format_bump(cache, model_dir, tmp_path, capsys, monkeypatch):
    _compress(capsys, model_dir, tmp_path / "first")
    assert len(_decomposition_folders(cache)) == 1
    _compress(capsys, model_dir, tmp_path / "again")
    assert len(_decomposition_folders(cache)) == 1  # same weights, same format: reused
    # Where compress reads it (raising=False: code that does not read it there must fail below, not here).
    monkeypatch.setattr("sfsd.compress.DECOMPOSITION_FORMAT", DECOMPOSITION_FORMAT + 1, raising=False)
    _compress(capsys, model_dir, tmp_path / "bumped")
    folders = _decomposition_folders(cache)
    assert len(folders) == 2  # the new format's decompositions were computed and written
    assert all((cache / "decompositions" / f / "block-0001" / "checksum.json").is_file() for f in folders)


@pytest.mark.slow
def test_compress_recomputes_after_a_weight_changes_in_place(cache, model_dir, tmp_path, capsys, monkeypatch):
    _compress(capsys, model_dir, tmp_path / "before")
    assert len(_decomposition_folders(cache)) == 1
    _edit_one_weight_in_place(model_dir)
    edited = _compress(capsys, model_dir, tmp_path / "after")
    assert len(_decomposition_folders(cache)) == 2  # the edited weights' decompositions were computed
    _private_cache(tmp_path / "cold", monkeypatch)
    _same_tensors(edited, _compress(capsys, model_dir, tmp_path / "cold-out"))  # as if no cache existed


def _uniform_ppl(capsys, model: Path, ppl_tokens: int) -> float:
    from sfsd.runs import Run

    out = _cli(capsys, "uniform", "--model", model, *UNIFORM, "--ppl-tokens", ppl_tokens)
    run = Run.open(out.split()[1].rstrip(":"))
    (evaluation,) = run.read_evaluations()
    return evaluation["metrics"]["ppl"]


@pytest.mark.slow
def test_uniform_recomputes_after_a_weight_changes_in_place(cache, model_dir, tmp_path, capsys, monkeypatch):
    _uniform_ppl(capsys, model_dir, 256)
    assert len(_decomposition_folders(cache)) == 1
    _edit_one_weight_in_place(model_dir)
    # A new run (another perplexity length: a done run is returned as it is) of the edited weights.
    edited = _uniform_ppl(capsys, model_dir, 128)
    assert len(_decomposition_folders(cache)) == 2
    _private_cache(tmp_path / "cold", monkeypatch)
    assert _uniform_ppl(capsys, model_dir, 128) == pytest.approx(edited, rel=1e-6)  # as if no cache existed
