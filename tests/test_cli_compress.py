"""`sfsd compress` / `sfsd info` from the command line: results, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest
from conftest import save_tiny_llama
from transformers import AutoModelForCausalLM

from sfsd.cli import main


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_dir):
    """A tiny random LLaMA with the real SmolLM2 tokenizer, saved like any Hugging Face model."""
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", default_model_dir, 2)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(code, err, *fragments):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sfsd: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize("method", ["feature", "weight", "asvd", "svdllm"])
def test_compress_each_method_then_info(capsys, tiny_folder, tmp_path, method):
    out_dir = tmp_path / f"demo-{method}"
    code, out, _ = _run(capsys, "compress", "--model", tiny_folder, "--method", method, "--beta", "0.5",
                        "--last-blocks", "1", "--calib-source", "random", "--calib-samples", "8",
                        "--calib-seq-len", "16", "--out", out_dir)
    assert code == 0, out
    assert "overall budget (App. B)" in out and "MACs per sequence of 128" in out
    assert "sfsd_llama (2 blocks" in out  # the in-memory model already has its compressed type
    model = AutoModelForCausalLM.from_pretrained(out_dir)
    assert model.config.sfsd_method == method and len(model.config.sfsd_layers) == 7
    assert (out_dir / "tokenizer.json").exists()
    code, out, _ = _run(capsys, "info", out_dir, "--layers")
    assert code == 0 and "7 of 14" in out


def test_explicit_ranks_file(capsys, tiny_folder, tmp_path):
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"model.layers.1.mlp.down_proj": 8, "model.layers.0.self_attn.q_proj": 4}))
    code, out, err = _run(capsys, "compress", "--model", tiny_folder, "--ranks", ranks, "--calib-source", "random",
                          "--calib-samples", "4", "--calib-seq-len", "8", "--out", tmp_path / "ranked")
    assert code == 0, err
    layers = AutoModelForCausalLM.from_pretrained(tmp_path / "ranked").config.sfsd_layers
    assert {name: spec["rank"] for name, spec in layers.items()} == {
        "model.layers.1.mlp.down_proj": 8, "model.layers.0.self_attn.q_proj": 4}


def test_ranks_of_a_finished_run(capsys, tiny_folder, tmp_path):
    """--ranks RUN_ID builds a run's allocation again (e.g. with another --calibration-stream)."""
    from sfsd.paths import runs_dir

    run = runs_dir() / "search-tiny-feature-ppl-000000000000"
    run.mkdir(parents=True)
    (run / "result.json").write_text(json.dumps({"ranks": {"model.layers.1.mlp.down_proj": 6}, "final_metric": 9.0}))
    code, out, err = _run(capsys, "compress", "--model", tiny_folder, "--ranks", run.name, "--calib-source", "random",
                          "--calib-samples", "4", "--calib-seq-len", "8", "--out", tmp_path / "from-run")
    assert code == 0, err
    layers = AutoModelForCausalLM.from_pretrained(tmp_path / "from-run").config.sfsd_layers
    assert {name: spec["rank"] for name, spec in layers.items()} == {"model.layers.1.mlp.down_proj": 6}
    code, out, err = _run(capsys, "compress", "--model", tiny_folder, "--ranks", "search-no-such-run",
                          "--out", tmp_path / "none")
    assert code != 0 and "no such file or run" in err and len(err.strip().splitlines()) == 1


def _bad_folders(tmp_path):
    not_lm = tmp_path / "bert"
    not_lm.mkdir()
    (not_lm / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text("{ not json")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    return not_lm, corrupt, foreign


def test_bad_input_gives_one_line_errors(capsys, tiny_folder, tmp_path):
    base = ["compress", "--calib-source", "random", "--calib-samples", "4", "--calib-seq-len", "8"]
    out = tmp_path / "x"
    code, _, err = _run(capsys, *base, "--model", tmp_path / "nope", "--beta", "0.5", "--out", out)
    _assert_one_line_error(code, err, "does not exist")
    code, _, err = _run(capsys, *base, "--model", tiny_folder, "--beta", "1.5", "--out", out)
    _assert_one_line_error(code, err, "beta must be in (0, 1]")
    code, _, err = _run(capsys, *base, "--model", tiny_folder, "--beta", "0.5", "--last-blocks", "9", "--out", out)
    _assert_one_line_error(code, err, "--last-blocks")
    ranks = tmp_path / "ranks.json"
    ranks.write_text(json.dumps({"model.layers.7.mlp.down_proj": 8}))
    code, _, err = _run(capsys, *base, "--model", tiny_folder, "--ranks", ranks, "--out", out)
    _assert_one_line_error(code, err, "not decomposable layers")
    ranks.write_text(json.dumps({"model.layers.1.mlp.down_proj": 10_000}))
    code, _, err = _run(capsys, *base, "--model", tiny_folder, "--ranks", ranks, "--out", out)
    _assert_one_line_error(code, err, "outside 1..64")
    code, _, err = _run(capsys, *base, "--model", tiny_folder, "--beta", "0.5", "--calib-source", "tweets",
                        "--out", out)
    _assert_one_line_error(code, err, "unknown calibration source")
    for folder in _bad_folders(tmp_path):
        code, _, err = _run(capsys, *base, "--model", folder, "--beta", "0.5", "--out", out)
        _assert_one_line_error(code, err, str(folder.name))
        code, _, err = _run(capsys, "info", folder)
        _assert_one_line_error(code, err)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "half-written folders left behind"


def test_existing_output_is_not_overwritten(capsys, tiny_folder, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = _run(capsys, "compress", "--model", tiny_folder, "--beta", "0.5", "--out", out)
    _assert_one_line_error(code, err, "already exists")
    assert (out / "keep.txt").read_text() == "mine"


def test_corrupted_weights_of_a_saved_model(capsys, tiny_folder, tmp_path):
    out = tmp_path / "damaged"
    code, _, _ = _run(capsys, "compress", "--model", tiny_folder, "--beta", "0.5", "--calib-source", "random",
                      "--calib-samples", "4", "--calib-seq-len", "8", "--out", out)
    assert code == 0
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, _, err = _run(capsys, "info", out)
    _assert_one_line_error(code, err, "cannot load model")


def test_long_jobs_keep_freed_memory_on_linux():
    """The CLI sets glibc's malloc to reuse freed blocks (a search otherwise faults in ~1 GB per trial)."""
    import sys

    from sfsd.runtime import keep_freed_memory

    assert keep_freed_memory() is sys.platform.startswith("linux")
