"""Real models at real scale, on small dims: `sfsd synth`, native dtypes end to end, memory vs depth."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from sfsd.cli import main
from sfsd.memory import measure_command

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _synth(capsys, out, blocks=2, dtype="float32", seed=0, hidden=64, intermediate=96):
    code, text, err = _run(capsys, "synth", "--hidden", hidden, "--intermediate", intermediate, "--heads", 4,
                           "--kv-heads", 2, "--blocks", blocks, "--dtype", dtype, "--seed", seed, "--out", out)
    assert code == 0, err
    return out


def test_synth_writes_a_seeded_model_of_the_shape(capsys, tmp_path):
    first = _synth(capsys, tmp_path / "a", dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(first)
    config = model.config
    assert (config.hidden_size, config.intermediate_size, config.num_hidden_layers) == (64, 96, 2)
    assert (config.num_attention_heads, config.num_key_value_heads) == (4, 2)
    assert model.dtype == torch.bfloat16  # recorded in the folder, reloaded in it
    assert (first / "tokenizer.json").exists() and config.vocab_size == 49152
    ids = torch.randint(0, 49152, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(model(ids).logits.float()).all()
    same = AutoModelForCausalLM.from_pretrained(_synth(capsys, tmp_path / "b", dtype="bfloat16"))
    other = AutoModelForCausalLM.from_pretrained(_synth(capsys, tmp_path / "c", dtype="bfloat16", seed=1))
    weight = "model.layers.1.mlp.down_proj.weight"
    assert torch.equal(model.state_dict()[weight], same.state_dict()[weight])
    assert not torch.equal(model.state_dict()[weight], other.state_dict()[weight])
    std = model.state_dict()[weight].float().std().item()
    assert 0.015 < std < 0.025


@pytest.mark.parametrize("argv,fragment", [
    (["--heads", "5"], "must divide by --heads"),
    (["--dtype", "float64"], "unknown dtype 'float64'"),
])
def test_synth_bad_input_is_one_line(capsys, tmp_path, argv, fragment):
    base = {"--hidden": "64", "--intermediate": "96", "--heads": "4", "--blocks": "1", "--out": str(tmp_path / "x")}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    code, _, err = _run(capsys, "synth", *[x for kv in base.items() for x in kv])
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "x").exists()


def test_unknown_dtype_on_a_loading_command_is_one_line(capsys, tmp_path):
    code, _, err = _run(capsys, "compress", "--model", "smollm2-135m", "--beta", "0.5", "--dtype", "half",
                        "--out", tmp_path / "never")
    assert code == 2 and "unknown dtype 'half'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


@pytest.mark.slow  # two compressions of the real default model
def test_bfloat16_end_to_end_matches_float32_perplexity(capsys, tmp_path, default_model_dir):
    """The real default model, compressed in float32 and in bfloat16, saved, reloaded plainly, evaluated."""
    from sfsd.evaluate import perplexity

    ppl = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        code, text, err = _run(capsys, "compress", "--model", default_model_dir, "--dtype", dtype, "--beta", "0.6",
                               "--last-blocks", "4", "--calib-source", "wiki", "--calib-samples", "32",
                               "--calib-seq-len", "128", "--out", out)
        assert code == 0, err
        model = AutoModelForCausalLM.from_pretrained(out)  # plain: no dtype given, the folder's is used
        assert model.dtype == getattr(torch, dtype)
        assert model.config.sfsd["dtype"] == dtype
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(out)
        ppl[dtype] = perplexity(model.eval(), tokenizer, split="eval", seq_len=128, max_tokens=2048,
                                use_cache=False, progress=False)["ppl"]
    assert ppl["bfloat16"] == pytest.approx(ppl["float32"], rel=0.02), ppl


def _peak(folder, tmp_path, name):
    result = measure_command(["compress", "--model", folder, "--beta", "0.5", "--calib-source", "random",
                              "--calib-samples", "16", "--calib-seq-len", "64", "--out", tmp_path / name],
                             env={**ENV, "SFSD_CACHE_DIR": str(tmp_path / "cache")}, timeout=900)
    assert result["code"] == 0, result["stderr"][-2000:]
    return result["peak_rss_bytes"]


@pytest.mark.slow  # two compressions in measured subprocesses
def test_peak_memory_grows_with_depth_by_the_extra_weights_only(capsys, tmp_path):
    """Two depths of one width: the streamed compress holds one block's statistics, not every block's.

    A wide MLP (intermediate 16 x hidden) makes a block's float64 statistics ten times its weights, so
    holding them for every block (the old in-memory pass) would add 4 x 136 MB; streaming adds the extra
    blocks' weights and their thin replacements (beta 0.5: half as many again), plus allocator noise.
    """
    hidden, intermediate, shallow, deep = 256, 4096, 2, 6
    folders = {n: _synth(capsys, tmp_path / f"m{n}", n, hidden=hidden, intermediate=intermediate)
               for n in (shallow, deep)}
    block_bytes = 4 * (3 * hidden * hidden + 3 * hidden * intermediate)  # fp32 q,o + k,v (2 of 4 heads), mlp
    stats_bytes = 8 * (3 * hidden * hidden + intermediate * intermediate)  # float64, per block
    growth = _peak(folders[deep], tmp_path, "deep") - _peak(folders[shallow], tmp_path, "shallow")
    extra = deep - shallow
    bound = 1.5 * extra * block_bytes + stats_bytes
    assert growth < bound < extra * (block_bytes + stats_bytes), (growth / 2**20, bound / 2**20)


def test_run_form_dtype_reaches_the_run_and_auto_keeps_old_ids():
    import shlex

    from sfsd.cli.search import config_from_argv
    from sfsd.dashboard import jobs
    from sfsd.runs.ids import run_id_for
    from sfsd.search import SearchConfig

    def through_the_cli(config):  # the command line the Runs page shows, run in a terminal
        return config_from_argv(shlex.split(jobs.command_line(config))[2:])

    auto = through_the_cli(SearchConfig(model="smollm2-135m"))
    bf16 = through_the_cli(SearchConfig(model="smollm2-135m", dtype="bfloat16"))
    assert (auto.dtype, bf16.dtype) == ("auto", "bfloat16")
    assert "dtype" not in auto.to_dict() and bf16.to_dict()["dtype"] == "bfloat16"
    assert run_id_for(auto.to_dict()) != run_id_for(bf16.to_dict())


def test_an_op_missing_in_a_dtype_is_a_one_line_hint():
    from sfsd.cli import dtype_op_missing

    with pytest.raises(RuntimeError) as caught:  # a real op torch lacks on CPU in float16
        torch.linalg.eigh(torch.eye(3, dtype=torch.float16))
    hint = dtype_op_missing(caught.value)
    assert hint is not None and "--dtype float32" in hint and "\n" not in hint
    assert dtype_op_missing(RuntimeError("shape mismatch")) is None
