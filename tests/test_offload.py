"""accelerate's big-model loading: a model with blocks offloaded to disk compresses like an in-memory one."""

from __future__ import annotations

import pytest
import torch
from conftest import make_private_cache, save_tiny_llama
from transformers import AutoModelForCausalLM

from sfsd.cli import main
from sfsd.compress import CalibrationSpec, compress, save_compressed
from sfsd.models import load_model

CALIB = CalibrationSpec(source="random", samples=8, seq_len=32)
DISK_MAP = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
            "model.layers.1": "disk", "model.layers.2": "disk", "model.norm": "cpu", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama", default_model_dir, 3)


def _ppl(model, tokenizer, key):
    from sfsd.evaluate import perplexity

    # An explicit key: the weight fingerprint cannot read weights that sit on disk.
    return perplexity(model, tokenizer, split="eval", seq_len=64, max_tokens=2048, model_key=key, use_cache=False,
                      progress=False)["ppl"]


@pytest.mark.slow
def test_disk_offloaded_model_compresses_to_the_same_model(tiny_folder, tmp_path):
    model, tokenizer = load_model(tiny_folder, "cpu", "float32")
    compress(model, tokenizer, "feature", beta=0.5, calibration=CALIB, progress=False)
    expected = _ppl(model, tokenizer, "in-memory")

    offloaded, tokenizer = load_model(tiny_folder, "cpu", "float32", device_map=DISK_MAP,
                                      offload_dir=tmp_path / "offload")
    assert offloaded.model.layers[2].mlp.down_proj.weight.device.type == "meta"  # really on disk
    compress(offloaded, tokenizer, "feature", beta=0.5, calibration=CALIB, progress=False)
    assert _ppl(offloaded, tokenizer, "offloaded") == pytest.approx(expected, rel=1e-5)

    save_compressed(offloaded, tokenizer, tmp_path / "saved")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()  # plain, no device map
    assert _ppl(reloaded, tokenizer, "reloaded") == pytest.approx(expected, rel=1e-5)
    ids = torch.randint(0, 1000, (1, 12), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("argv,fragment", [
    (["--max-memory", "0=20GiB"], "--max-memory and --offload-dir need --device-map"),
    (["--device-map", "auto", "--max-memory", "7=20GiB"], "names GPU 7"),
    (["--device-map", "auto", "--max-memory", "cpu"], "DEVICE=AMOUNT"),
])
def test_dispatch_bad_input_is_one_line(capsys, tiny_folder, tmp_path, argv, fragment):
    code = main(["compress", "--model", str(tiny_folder), "--beta", "0.5", "--out", str(tmp_path / "never"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not (tmp_path / "never").exists()


def test_offloaded_weights_have_the_in_memory_fingerprint(tiny_folder, tmp_path):
    from sfsd.evaluate import model_fingerprint

    model, _ = load_model(tiny_folder, "cpu", "float32")
    offloaded, _ = load_model(tiny_folder, "cpu", "float32", device_map=DISK_MAP, offload_dir=tmp_path / "offload")
    assert offloaded.model.layers[1].self_attn.q_proj.weight.device.type == "meta"
    assert model_fingerprint(offloaded) == model_fingerprint(model)
    with torch.no_grad():
        model.model.layers[1].self_attn.q_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(offloaded) != model_fingerprint(model)  # it reads the bytes on disk, not names


def _printed_ppl(capsys, argv) -> str:
    assert main(argv) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("perplexity")][0]
    return line.split()[1]


@pytest.mark.slow
def test_eval_commands_on_a_disk_offloaded_model_equal_in_memory(capsys, tiny_folder, tmp_path):
    argv = ["ppl", str(tiny_folder), "--seq-len", "64", "--max-tokens", "2048", "--no-cache"]
    in_memory = _printed_ppl(capsys, argv)
    # cpu=5MB holds not even the 12.6 MB embedding: accelerate puts the whole model on disk (its hooks read it).
    spread = _printed_ppl(capsys, [*argv, "--device-map", "sequential", "--max-memory", "cpu=5MB",
                                   "--offload-dir", str(tmp_path / "offload")])
    assert spread == in_memory
    spread_model, _ = load_model(tiny_folder, "cpu", "float32", device_map="sequential", max_memory="cpu=5MB",
                                 offload_dir=tmp_path / "offload")
    on_disk = [n for n, p in spread_model.named_parameters() if p.device.type == "meta"]
    assert on_disk, "nothing was offloaded to disk: the test would test nothing"

    # lm-eval gets the dispatched model (HFLM around the model object): the same per-document answers.
    eval_argv = ["eval", str(tiny_folder), "--tasks", "piqa", "--limit", "8", "--no-cache"]
    assert main(eval_argv) == 0
    in_memory_table = capsys.readouterr().out.splitlines()[-2]
    assert main([*eval_argv, "--device-map", "sequential", "--max-memory", "cpu=5MB",
                 "--offload-dir", str(tmp_path / "offload-eval")]) == 0
    assert capsys.readouterr().out.splitlines()[-2] == in_memory_table


def _search_and_uniform(cache, monkeypatch, model, placement):
    """A searched layer walk and a Table-1 uniform run in their own cache (nothing shared between calls)."""
    from sfsd.search import MetricSpec, SearchConfig, run_search
    from sfsd.search.uniform import UniformConfig, run_uniform

    monkeypatch.setenv("SFSD_CACHE_DIR", str(make_private_cache(cache)))
    calibration = CalibrationSpec(source="wiki", samples=8, seq_len=32)
    search = run_search(SearchConfig(model=str(model),
                                     metric=MetricSpec(name="ppl", tolerance=0.2, samples=4, seq_len=32),
                                     calibration=calibration, first_block=1, roles=["q", "down"]),
                        device=placement, progress=False)
    uniform = run_uniform(UniformConfig(model=str(model), method="feature", beta=0.5, last_blocks=2,
                                        calibration=calibration, tasks=[], limit=None, ppl_seq_lens=[32],
                                        ppl_tokens=1024),
                          device=placement, progress=False)
    return search, uniform


@pytest.mark.slow  # two searches and two uniform runs, one pair with blocks offloaded to disk
def test_search_and_uniform_on_a_disk_offloaded_model_equal_in_memory(tiny_folder, tmp_path, monkeypatch):
    from sfsd.models import Placement

    memory_search, memory_uniform = _search_and_uniform(tmp_path / "a", monkeypatch, tiny_folder, "cpu")
    disk = Placement("cpu", DISK_MAP, None, str(tmp_path / "offload"))  # the searched blocks 1 and 2 on disk
    disk_search, disk_uniform = _search_and_uniform(tmp_path / "b", monkeypatch, tiny_folder, disk)

    expected = [(d["layer"], d["rank"]) for d in memory_search.decisions()]
    assert any(rank is not None for _, rank in expected), "no layer compressed: the test would test little"
    assert [(d["layer"], d["rank"]) for d in disk_search.decisions()] == expected
    for ours, theirs in zip(disk_search.trials(), memory_search.trials(), strict=True):
        assert ours["value"] == pytest.approx(theirs["value"], rel=1e-5)
    ppl = lambda run: [e["metrics"]["ppl"] for e in run.read_evaluations()]  # noqa: E731
    assert ppl(disk_uniform) == pytest.approx(ppl(memory_uniform), rel=1e-5)
    assert disk_uniform.result()["params"] == memory_uniform.result()["params"]


@pytest.mark.parametrize("command", [["uniform"], ["search"], ["search", "--target-budget", "0.8"], ["frontier"]])
def test_a_bad_device_map_creates_no_run(capsys, tmp_path, monkeypatch, command):
    from sfsd.runs import RunStore

    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path / "cache"))
    code = main([*command, "--device-map", "auto", "--max-memory", "3=2GiB"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "names GPU 3" in err, err
    assert RunStore().ids() == []
