"""LLM-Pruner as a method of `sfsd compress` and `sfsd uniform` (Table 1's third row): same parameters as the
feature-space row at one beta, parameters and MACs counted from the saved model, one-line refusals."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_llama
from transformers import AutoModelForCausalLM

from sfsd.accounting import count_parameters, measure_macs
from sfsd.cli import main

CALIBRATION = ["--calib-source", "wiki", "--calib-samples", "8", "--calib-seq-len", "32"]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", default_model_dir, 4)


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _compress(capsys, folder, out, method, *extra):
    code, text, err = _run(capsys, "compress", "--model", folder, "--method", method, "--beta", "0.5", *extra,
                           *CALIBRATION, "--out", out)
    assert code == 0, err
    return AutoModelForCausalLM.from_pretrained(out).eval()


def _linear_weights(model) -> int:
    from sfsd.adapters import adapter_for

    return sum(model.get_submodule(layer.name).weight.numel() for layer in adapter_for(model).layers())


@pytest.mark.slow
def test_compress_prunes_to_the_feature_rows_parameters(capsys, tiny_folder, tmp_path):
    """`--method llm-pruner --beta B --last-blocks N`: the pruned blocks keep Eq. 3's share at B, so the saved
    model's linear weights are within 0.5% of the feature-space model's; the folder reloads plainly, with the
    per-block widths recorded, and its parameters and MACs are those of the model itself."""
    pruned = _compress(capsys, tiny_folder, tmp_path / "pruned", "llm-pruner", "--last-blocks", "2")
    feature = _compress(capsys, tiny_folder, tmp_path / "feature", "feature", "--last-blocks", "2")
    base = AutoModelForCausalLM.from_pretrained(tiny_folder)
    record = pruned.config.sfsd_pruned
    assert sorted(record["blocks"]) == ["2", "3"] and pruned.config.sfsd["last_blocks"] == 2
    feature_kept = sum(spec["rank"] * (spec["d_in"] + spec["d_out"]) for spec in feature.config.sfsd_layers.values())
    full = sum(spec["d_in"] * spec["d_out"] for spec in feature.config.sfsd_layers.values())
    intact = _linear_weights(base) - full
    assert _linear_weights(pruned) - intact == pytest.approx(feature_kept, rel=0.005)
    for block, widths in record["blocks"].items():  # real smaller layers
        attn = pruned.model.layers[int(block)].self_attn
        assert attn.q_proj.out_features == widths["heads"] * attn.head_dim < base.config.hidden_size
        assert pruned.model.layers[int(block)].mlp.down_proj.in_features == widths["channels"]
    from sfsd.compress import describe

    info = describe(pruned)
    assert info["params"] == count_parameters(pruned) < count_parameters(base)
    assert info["macs"] == measure_macs(pruned) < measure_macs(base)
    removed = _linear_weights(base) - _linear_weights(pruned)  # counted here from the layers' shapes
    assert measure_macs(base, 128) - info["macs"] == 128 * removed  # one MAC per weight per token
    assert info["overall_budget"] == pytest.approx(describe(feature)["overall_budget"], abs=0.005)
    assert info["layers_decomposed"] == 14
    ids = torch.randint(3, 1000, (2, 16))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, pruned(ids).logits)
    code, out, _ = _run(capsys, "info", tmp_path / "pruned")
    assert code == 0 and "overall budget" in out


def test_compress_without_last_blocks_prunes_llm_pruners_own_range(capsys, tiny_folder, tmp_path):
    from sfsd.decompose.pruning import llm_pruner_blocks

    pruned = _compress(capsys, tiny_folder, tmp_path / "own", "llm-pruner")
    assert sorted(map(int, pruned.config.sfsd_pruned["blocks"])) == llm_pruner_blocks(4)
    assert pruned.config.sfsd["last_blocks"] is None
    assert llm_pruner_blocks(32) == list(range(4, 30)) and llm_pruner_blocks(30) == list(range(4, 28))


@pytest.mark.slow
def test_uniform_run_of_llm_pruner_is_a_table1_row(tiny_folder):
    from sfsd.compress import CalibrationSpec
    from sfsd.dashboard import data
    from sfsd.search.uniform import UniformConfig, run_uniform

    calibration = CalibrationSpec(source="wiki", samples=8, seq_len=32)
    results = {}
    for method in ("feature", "llm-pruner"):
        run = run_uniform(UniformConfig(model=str(tiny_folder), method=method, beta=0.5, last_blocks=2,
                                        calibration=calibration, tasks=["piqa"], limit=4, ppl_seq_lens=[32],
                                        ppl_tokens=512), progress=False)
        assert run.status()["state"] == "done"
        results[method] = run.result()
    assert results["llm-pruner"]["overall_budget"] == pytest.approx(results["feature"]["overall_budget"], abs=0.005)
    assert results["llm-pruner"]["layers_decomposed"] == 14
    rows = data.table1_rows(data.uniform_frame(), str(tiny_folder), 0.5, 2)
    assert set(rows["method"]) == {"feature", "llm-pruner"}


@pytest.mark.parametrize("argv, fragment", [
    (["search", "--method", "llm-pruner"], "sfsd uniform --method llm-pruner"),
    (["compress", "--method", "llm-pruner", "--ranks", "r.json", "--out", "x"], "no per-layer ranks"),
])
def test_llm_pruner_where_it_has_no_meaning_is_refused_in_one_line(capsys, tiny_folder, tmp_path, argv, fragment):
    (tmp_path / "r.json").write_text('{"model.layers.0.self_attn.q_proj": 4}')
    argv = [a.replace("r.json", str(tmp_path / "r.json")).replace("x", str(tmp_path / "x")) if a in ("r.json", "x")
            else a for a in argv]
    code, _, err = _run(capsys, *argv, "--model", tiny_folder)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family, beta, fragment", [
    ("llama", "0.02", "choose a larger --beta"),  # so small a share would remove every head of a layer
    ("gpt2", "0.5", "gpt2"),  # no pruning rule for this family
])
def test_bad_pruning_requests_are_one_line_errors_and_write_nothing(capsys, tmp_path, default_model_dir, family,
                                                                    beta, fragment):
    from conftest import tiny_model
    from transformers import AutoTokenizer

    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(folder)
    capsys.readouterr()  # the saving's progress bars
    out = tmp_path / "out"
    code, _, err = _run(capsys, "compress", "--model", folder, "--method", "llm-pruner", "--beta", beta,
                        "--last-blocks", "2", "--calib-source", "random", "--calib-samples", "4",
                        "--calib-seq-len", "8", "--out", out)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("sfsd: error: ") and fragment in lines[0], err
    assert not out.exists()
