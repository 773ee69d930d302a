"""The surgical search on a tiny real model: same decisions as the reference loop, resumable, stored."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import save_tiny_llama
from transformers import AutoModelForCausalLM, AutoTokenizer

from sfsd.compress import CalibrationSpec
from sfsd.errors import SfsdError
from sfsd.runs import Run, layers_frame, snapshots_frame, spectra_frame
from sfsd.search import MetricSpec, SearchConfig, materialize, run_search


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("search") / "tiny-llama", default_model_dir, 4)


def _config(model, engine="fast", strategy="linear", metric=None):
    metric = metric or MetricSpec(name="ppl", tolerance=0.0, samples=4, seq_len=32, batch_size=2)
    return SearchConfig(model=str(model), metric=metric,
                        calibration=CalibrationSpec(source="wiki", samples=16, seq_len=32),
                        engine=engine, strategy=strategy, snapshot_every=5)


def _files(root):
    """Every file under `root` with its size and modification time."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _decisions(run):
    return [(d["layer"], d["rank"]) for d in run.decisions()]


@pytest.mark.slow
def test_fast_search_decides_exactly_like_the_reference_loop(cache, tiny_dir):
    fast = run_search(_config(tiny_dir, "fast"), progress=False)
    reference = run_search(_config(tiny_dir, "reference"), progress=False)
    assert fast.id != reference.id
    assert _decisions(fast) == _decisions(reference)
    ranks = [rank for _, rank in _decisions(fast)]
    assert any(r is None for r in ranks) and any(r is not None for r in ranks), "want a mix of decisions"
    values = [t["value"] for t in fast.trials()]
    assert values == [t["value"] for t in reference.trials()]  # the same numbers, not just the same choices

    layers = layers_frame(fast)
    assert list(layers["role"][:7]) == ["down", "up", "gate", "o", "v", "k", "q"]  # last block first, backward
    assert layers["decided"].all() and len(layers) == 28
    snaps = snapshots_frame(fast)
    assert list(snaps["step"]) == [0, 5, 10, 15, 20, 25, 28] and snaps["params"].is_monotonic_decreasing
    assert set(spectra_frame(fast)["kind"]) == {"feature", "weight"}
    assert fast.status()["state"] == "done"
    # Asking again finds the finished run and computes nothing: no file of the cache is written or touched
    # (a trial appends to the trace, a start rewrites the status, a decomposition or statistic adds files).
    before = _files(cache)
    assert run_search(_config(tiny_dir, "fast"), progress=False).id == fast.id
    assert _files(cache) == before


@pytest.mark.slow
def test_bisect_needs_at_most_four_trials_a_layer_and_keeps_passing_choices(cache, tiny_dir):
    bisect = run_search(_config(tiny_dir, strategy="bisect"), progress=False)
    per_layer: dict[str, list[dict]] = {}
    for trial in bisect.trials():
        per_layer.setdefault(trial["layer"], []).append(trial)
    assert max(len(trials) for trials in per_layer.values()) <= 4  # ceil(log2(9 betas + intact))
    for decision in bisect.decisions():
        trials = {t["beta"]: t["passed"] for t in per_layer[decision["layer"]]}
        if decision["beta"] is None:
            assert trials[0.9] is False
        else:
            assert trials[decision["beta"]] is True
            lower = round(decision["beta"] - 0.1, 1)
            assert lower < 0.1 or trials.get(lower) is False  # the next lower beta was tried and failed


@pytest.mark.slow  # two task-metric searches (fast and reference) and lm-eval on the tiny model
def test_task_metric_base_value_equals_lm_eval(cache, tiny_dir):
    from sfsd.evaluate import evaluate_tasks

    metric = MetricSpec(name="task", tolerance=0.0, task="piqa", limit=12, batch_size=4)
    fast = run_search(_config(tiny_dir, metric=metric), progress=False)
    reference = run_search(_config(tiny_dir, "reference", metric=metric), progress=False)
    assert _decisions(fast) == _decisions(reference)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    lm_eval_acc = evaluate_tasks(model, tokenizer, ["piqa"], split="search", limit=12, use_cache=False)
    assert fast.result()["base_metric"] == pytest.approx(float(lm_eval_acc.summary["acc"].iloc[0]), abs=1e-9)


@pytest.mark.slow
def test_materialize_saves_the_searched_model(cache, tiny_dir, tmp_path):
    run = run_search(_config(tiny_dir), progress=False)
    out = materialize(run, tmp_path / "searched")
    model = AutoModelForCausalLM.from_pretrained(out)
    stored = {name: spec["rank"] for name, spec in model.config.sfsd_layers.items()}
    assert stored == run.result()["ranks"]


@pytest.mark.slow
def test_snapshots_evaluated_after_the_fact(cache, tiny_dir):
    from sfsd.evaluate import evaluate_tasks
    from sfsd.runs import evaluations_frame
    from sfsd.search.surgical import evaluate_steps, model_at_step

    run = run_search(_config(tiny_dir), progress=False)
    evaluate_steps(run, [0, 28], ["piqa"], limit=4)
    evaluate_steps(run, [0, 28], ["piqa"], limit=4)  # already there: nothing added
    evals = evaluations_frame(run)
    assert list(evals["step"]) == [0, 28] and evals["params"].iloc[1] < evals["params"].iloc[0]
    base = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    lm_eval = evaluate_tasks(base, AutoTokenizer.from_pretrained(tiny_dir), ["piqa"], limit=4, use_cache=False)
    assert evals["acc"].iloc[0] == pytest.approx(float(lm_eval.summary["acc"].iloc[0]))
    _, _, ranks = model_at_step(run, 28)
    assert ranks == run.result()["ranks"]


def test_bad_search_requests(cache, tiny_dir):
    with pytest.raises(SfsdError, match="unknown metric"):
        MetricSpec(name="bleu")
    with pytest.raises(SfsdError, match="non-negative"):
        MetricSpec(name="ppl", tolerance=-0.1)
    with pytest.raises(SfsdError, match="needs --task"):
        MetricSpec(name="task", tolerance=0.0)
    with pytest.raises(SfsdError, match="unknown strategy"):
        SearchConfig(strategy="random")
    with pytest.raises(SfsdError, match="unknown role"):
        run_search(SearchConfig(model=str(tiny_dir), roles=["ffn"]), progress=False)
    with pytest.raises(SfsdError, match="first-block"):
        run_search(SearchConfig(model=str(tiny_dir), first_block=9), progress=False)


@pytest.mark.slow  # a real `sfsd search` process killed mid-run, then two reference-loop searches
def test_killed_search_resumes_to_the_same_result(cache, tiny_dir):
    """Kill a real `sfsd search` process mid-run (SIGKILL), cut the trace's last line, resume, compare."""
    argv = [sys.executable, "-m", "sfsd", "search", "--model", str(tiny_dir), "--tolerance", "0",
            "--search-samples", "8", "--search-seq-len", "64", "--search-batch-size", "2",
            "--calib-source", "wiki", "--calib-samples", "16", "--calib-seq-len", "32", "--snapshot-every", "5",
            "--engine", "reference", "--quiet"]
    config = SearchConfig(model=str(tiny_dir),
                          metric=MetricSpec(name="ppl", tolerance=0.0, samples=8, seq_len=64, batch_size=2),
                          calibration=CalibrationSpec(source="wiki", samples=16,
                                                      seq_len=32), snapshot_every=5, engine="reference")
    child = subprocess.Popen(argv, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    run = None
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        try:
            run = run or Run.open(next(p.name for p in (cache / "runs").iterdir() if p.name.startswith("search")))
            if len(run.decisions()) >= 6:
                break
        except (StopIteration, FileNotFoundError, SfsdError):
            pass
        time.sleep(0.05)
    assert child.poll() is None, f"the search ended before it could be killed: {child.stderr.read().decode()[-500:]}"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert run.status()["state"] == "interrupted"
    done_before = len(run.decisions())
    with open(run.file("trace.jsonl"), "ab") as trace:
        trace.write(b'{"kind": "trial", "layer": "model.la')  # a line cut by the crash
    resumed = run_search(config, progress=False)
    assert resumed.id == run.id and resumed.status()["state"] == "done"
    assert _decisions(resumed)[:done_before] == _decisions(run)[:done_before]

    fresh_root = cache / "fresh-runs"
    uninterrupted = run_search(config, root=fresh_root, progress=False)
    assert _decisions(resumed) == _decisions(uninterrupted)
    assert resumed.result()["ranks"] == uninterrupted.result()["ranks"]


@pytest.mark.slow
def test_uniform_protocol_run_stores_params_macs_and_evaluations(cache, tiny_dir):
    from sfsd.runs import evaluations_frame
    from sfsd.search.uniform import UniformConfig, run_uniform

    config = UniformConfig(model=str(tiny_dir), method="feature", beta=0.5, last_blocks=2,
                           calibration=CalibrationSpec(source="wiki", samples=8, seq_len=32), tasks=["piqa"], limit=4,
                           ppl_seq_lens=[32], ppl_tokens=256)
    run = run_uniform(config, progress=False)
    result = run.result()
    base = run_uniform(UniformConfig(model=str(tiny_dir), method="none", tasks=["piqa"], limit=4, ppl_seq_lens=[32],
                                     ppl_tokens=256), progress=False).result()
    assert result["params"] < base["params"] and result["macs"] < base["macs"]
    assert result["overall_budget"] == pytest.approx(1 - 0.5 * (1 - 0.5), abs=0.02)
    evals = evaluations_frame(run)
    assert set(evals["kind"]) == {"task", "ppl"} and (evals.loc[evals["kind"] == "ppl", "seq_len"] == 32).all()
    with pytest.raises(SfsdError, match="unknown task"):
        UniformConfig(tasks=["hellaswag"])


@pytest.mark.slow
def test_uniform_run_stops_on_cancel_and_resumes_without_duplicates(cache, tiny_dir, monkeypatch):
    import sfsd.evaluate
    from sfsd.runs import evaluations_frame
    from sfsd.search.uniform import UniformConfig, run_uniform

    config = UniformConfig(model=str(tiny_dir), method="weight", beta=0.5, last_blocks=1,
                           calibration=CalibrationSpec(source="wiki", samples=8, seq_len=32), tasks=["piqa"], limit=4,
                           ppl_seq_lens=[32], ppl_tokens=256)
    real_evaluate = sfsd.evaluate.evaluate_tasks

    def evaluate_then_cancel(*args, **kwargs):  # the user presses cancel while the task is being evaluated
        result = real_evaluate(*args, **kwargs)
        Run.create(config.to_dict()).request_cancel()
        return result

    monkeypatch.setattr(sfsd.evaluate, "evaluate_tasks", evaluate_then_cancel)
    run = run_uniform(config, progress=False)
    assert run.status()["state"] == "cancelled"
    assert [e["kind"] for e in run.read_evaluations()] == ["task"]  # perplexity not started
    monkeypatch.setattr(sfsd.evaluate, "evaluate_tasks", real_evaluate)
    run = run_uniform(config, progress=False)
    assert run.status()["state"] == "done"
    assert sorted(evaluations_frame(run)["kind"]) == ["ppl", "task"]  # the task is not evaluated twice


@pytest.mark.slow
def test_decomposition_cache_never_reuses_stale_factors(cache, tiny_dir, monkeypatch):
    """Same name, changed weights -> recomputed; changed format version -> recomputed; same -> reused."""
    import torch

    import sfsd.search.surgical as surgical
    from sfsd.search import search_layers

    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    config = _config(tiny_dir)
    layers = search_layers(model, config)[:3]
    folders = lambda: sorted(p.name for p in (cache / "decompositions").iterdir())  # noqa: E731
    first = surgical.cached_decompositions(model, tokenizer, config, layers, progress=False)
    assert len(folders()) == 1
    surgical.cached_decompositions(model, tokenizer, config, layers, progress=False)
    assert len(folders()) == 1  # reused
    with torch.no_grad():
        model.get_submodule(layers[0].name).weight.mul_(2.0)
    changed = surgical.cached_decompositions(model, tokenizer, config, layers, progress=False)
    assert len(folders()) == 2
    assert not torch.allclose(changed[layers[0].name].coeffs, first[layers[0].name].coeffs)
    from sfsd.decompose import DECOMPOSITION_FORMAT

    monkeypatch.setattr("sfsd.compress.DECOMPOSITION_FORMAT", DECOMPOSITION_FORMAT + 1)  # read there
    surgical.cached_decompositions(model, tokenizer, config, layers, progress=False)
    assert len(folders()) == 3
