"""Rank allocation at a target budget on a tiny real model: every strategy lands on the budget, the
knapsack is exact, spectrum ranks grow with the budget, the refinement re-solves only around its first allocation,
and a killed frontier resumes."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest
from conftest import save_tiny_llama

from sfsd.adapters import LinearLayer
from sfsd.compress import CalibrationSpec
from sfsd.decompose import BETA_GRID
from sfsd.errors import SfsdError
from sfsd.runs import Run, RunStore, layers_frame, run_id_for
from sfsd.search import MetricSpec, SearchConfig, materialize, run_search
from sfsd.search.allocation import (
    ALLOCATIONS,
    INTACT,
    bisect_tolerance,
    budget_band,
    choice_key,
    choice_params,
    neighbours,
    refined_choices,
    sensitivity_choices,
    solve_choices,
    spectrum_allocation,
)

STRATEGIES = list(ALLOCATIONS)  # every registered allocation strategy is tested
# Left out of `make test-fast` (run by `make test`): the strategies that run many searches or trials on the tiny
# model (sensitivity: a trial per layer and beta; refined: those and up to 3 per layer more; alg1: a search per
# tolerance tried).
SLOW_STRATEGIES = {"sensitivity", "refined", "alg1"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("alloc") / "tiny-llama", default_model_dir, 3)


def _config(model, strategy, target, **extra):
    metric = MetricSpec(name="ppl", tolerance=0.0, samples=4, seq_len=32, batch_size=2)
    return SearchConfig(model=str(model), metric=metric,
                        calibration=CalibrationSpec(source="wiki", samples=16, seq_len=32),
                        strategy=strategy, target_budget=target, **extra)


@pytest.mark.parametrize("strategy", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_STRATEGIES else s
                                      for s in STRATEGIES])
def test_each_strategy_lands_on_the_target_budget_as_a_stored_run(cache, tiny_dir, tmp_path, strategy):
    target = 0.7
    run = run_search(_config(tiny_dir, strategy, target), progress=False)
    result = run.result()
    low, high = budget_band(target)
    assert low <= result["overall_budget"] <= high
    assert abs(result["overall_budget"] / target - 1) <= 0.005
    assert result["strategy"] == strategy and result["params"] < result["base_params"]
    layers = layers_frame(run)
    assert layers["decided"].all() and len(layers) == 21
    factorised = layers[~layers["intact"]]
    # The decision's beta is the layer's actual budget, rank (d_in + d_out) / (d_in d_out).
    d_in, d_out = factorised["d_in"], factorised["d_out"]
    expected = factorised["rank"] * (d_in + d_out) / (d_in * d_out)
    assert (factorised["beta"] - expected).abs().max() < 1e-12
    assert run.status()["state"] == "done" and result["heldout"]["final"]["value"] > 0
    out = materialize(run, tmp_path / "model")
    assert (out / "config.json").exists()
    if strategy == "alg1":
        tried = result["allocation"]["tolerances"]
        assert tried[0]["tolerance"] == 0.05
        # The runs that miss B finish; the one that reaches it stops there (resumable, not finished).
        assert all(Run.open(t["run_id"]).result() for t in tried if t["overall_budget"] > target)
        assert tried[-1]["overall_budget"] <= target
        from sfsd.runs.frontier import frontier_frame

        point = frontier_frame().set_index("run_id").loc[run.id]
        assert point["tolerance"] == result["allocation"]["tolerance"] == tried[-1]["tolerance"]
    if strategy == "sensitivity":
        table = json.loads(run.file("sensitivity.json").read_text())["table"]
        assert len(table) == 21 and all(len(row) == 9 for row in table.values())
        # A second target reuses the stored sensitivities: no trial at all.
        again = run_search(_config(tiny_dir, strategy, 0.5), progress=False).result()
        assert again["trials"] == 0 and abs(again["overall_budget"] / 0.5 - 1) <= 0.005


@pytest.mark.slow  # three searches and three CLI searches on the tiny model
def test_a_search_stopped_at_a_budget_is_the_prefix_of_the_finished_search(cache, tiny_dir, tmp_path, capsys):
    from sfsd.cli import main

    config = replace(_config(tiny_dir, "linear", None),
                     metric=MetricSpec(name="ppl", tolerance=0.4, samples=4, seq_len=32,
                                                                          batch_size=2))
    stopped = run_search(config, progress=False, stop_at_budget=0.9)
    status = stopped.status()
    assert stopped.result() is None and status["state"] == "stopped" and status["stopped_at_budget"] <= 0.9
    prefix = stopped.decisions()
    assert 0 < len(prefix) < 21
    assert run_search(config, progress=False, stop_at_budget=0.95).decisions() == prefix  # already there
    full = run_search(config, root=tmp_path / "other", progress=False)  # from nothing, never stopped
    fields = ("layer", "rank")
    assert [[d[f] for f in fields] for d in full.decisions()[:len(prefix)]] == [[d[f] for f in fields] for d in prefix]
    pairs = zip(full.decisions()[:len(prefix)], prefix, strict=True)
    assert all(abs(a["value"] / b["value"] - 1) < 1e-6 for a, b in pairs)
    argv = ["search", "--model", str(tiny_dir), "--metric", "ppl", "--tolerance", "0.4", "--search-samples", "4",
            "--search-seq-len", "32", "--search-batch-size", "2", "--calib-source", "wiki", "--calib-samples", "16",
            "--calib-seq-len", "32", "--quiet", "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, "--stop-at-budget", "0.9"]) == 0 and "stopped at overall budget" in capsys.readouterr().out
    assert main(argv) == 0  # resumed to the end
    assert Run.open(stopped.id).status()["state"] == "done"
    resumed = Run.open(stopped.id)
    assert [[d[f] for f in fields] for d in resumed.decisions()] == [[d[f] for f in fields] for d in full.decisions()]
    assert main([*argv, "--stop-at-budget", "1.5"]) == 2


@pytest.mark.parametrize(("method", "metric", "strategy"), [
    pytest.param(*case, marks=pytest.mark.slow) if case[2] in SLOW_STRATEGIES else case for case in [
        ("weight", "ppl", "spectrum"), ("asvd", "ppl", "sensitivity"), ("svdllm", "ppl", "uniform"),
        ("feature-paper", "ppl", "alg1"), ("feature", "task", "sensitivity"), ("feature", "task", "alg1"),
    ]])
@pytest.mark.slow
def test_strategies_work_with_every_method_and_both_metrics(cache, tiny_dir, method, metric, strategy):
    spec = (MetricSpec(name="task", tolerance=0.0, task="piqa", limit=12, batch_size=4) if metric == "task"
            else MetricSpec(name="ppl", tolerance=0.0, samples=4, seq_len=32, batch_size=2))
    # The last block only (7 layers): the combinations are about plumbing, not about quality.
    config = replace(_config(tiny_dir, strategy, 0.8), method=method, metric=spec, first_block=2)
    result = run_search(config, progress=False).result()
    assert abs(result["overall_budget"] / 0.8 - 1) <= 0.005 and result["strategy"] == strategy
    assert result["params"] < result["base_params"] and result["heldout"]["metric"] == metric


@pytest.mark.slow
def test_uniform_uses_one_beta_for_every_layer(cache, tiny_dir):
    result = run_search(_config(tiny_dir, "uniform", 0.6), progress=False).result()
    beta = result["allocation"]["beta"]
    from sfsd.decompose import rank_for_budget

    layers = layers_frame(Run.open(run_search(_config(tiny_dir, "uniform", 0.6), progress=False).id))
    for row in layers.itertuples():  # Eq. 3's rank at that beta, or one more (rounding to reach B)
        assert row.rank - rank_for_budget(beta, row.d_in, row.d_out) in (0, 1)


def _brute_force(costs, weights, low, high):
    best = None
    for pick in itertools.product(*(range(len(group)) for group in costs)):
        weight = sum(weights[g][i] for g, i in enumerate(pick))
        if low <= weight <= high:
            cost = sum(costs[g][i] for g, i in enumerate(pick))
            best = cost if best is None else min(best, cost)
    return best


def test_knapsack_equals_brute_force():
    # 4 layers x 3 choices (two betas and intact), hand-made sensitivities; several budget bands.
    costs = [[0.30, 0.10, 0.0], [0.05, 0.02, 0.0], [0.50, 0.20, 0.0], [0.08, 0.07, 0.0]]
    weights = [[20, 50, 100], [10, 30, 60], [40, 80, 160], [15, 25, 50]]
    for low, high in [(100, 120), (150, 200), (250, 260), (300, 370), (85, 95)]:
        chosen = solve_choices(costs, weights, low, high)
        weight = sum(weights[g][i] for g, i in enumerate(chosen))
        assert low <= weight <= high
        assert sum(costs[g][i] for g, i in enumerate(chosen)) == pytest.approx(_brute_force(costs, weights, low, high))
    with pytest.raises(SfsdError, match="budget band"):
        solve_choices(costs, weights, 1, 5)


@pytest.mark.slow
def test_sensitivity_on_a_tiny_model_equals_brute_force(cache, tiny_dir):
    # Search only the last block's k and v (2 layers x 10 choices): enumerate every combination.
    from sfsd.decompose import BETA_GRID, overall_budget, rank_for_budget

    run = run_search(_config(tiny_dir, "sensitivity", 0.99, first_block=2, roles=["k", "v"]), progress=False)
    table = json.loads(run.file("sensitivity.json").read_text())["table"]
    layers = [LinearLayer(s["name"], s["block"], s["role"], s["d_in"], s["d_out"], "") for s in run.config["layers"]]
    from sfsd.adapters import adapter_for
    from sfsd.models import load_model

    all_layers = adapter_for(load_model(str(tiny_dir), "cpu")[0]).layers()
    low, high = budget_band(0.99)
    best = None
    for pick in itertools.product([*BETA_GRID, None], repeat=len(layers)):
        ranks = {ly.name: rank_for_budget(b, ly.d_in, ly.d_out) for ly, b in zip(layers, pick, strict=True) if b}
        if low <= overall_budget(all_layers, ranks) <= high:
            cost = sum(table[ly.name][str(b)] for ly, b in zip(layers, pick, strict=True) if b)
            best = cost if best is None else min(best, cost)
    chosen = run.result()["ranks"]
    by_rank = {ly.name: {rank_for_budget(b, ly.d_in, ly.d_out): str(b) for b in BETA_GRID} for ly in layers}
    cost = sum(table[name][by_rank[name][rank]] for name, rank in chosen.items())
    assert cost == pytest.approx(best)


REFINE_LAYERS = [LinearLayer(f"ly{i}", i, "q", d_in, d_out, "") for i, (d_in, d_out) in
                 enumerate([(64, 64), (64, 96), (96, 64), (48, 80), (80, 48)])]


def _hand_made_table(seed):
    import numpy as np

    gen = np.random.default_rng(seed)  # each layer's change falls with beta, at its own scale
    return {layer.name: dict(zip(map(str, BETA_GRID), sorted(gen.random(len(BETA_GRID)) * gen.uniform(0.1, 2),
                                                              reverse=True), strict=True)) for layer in REFINE_LAYERS}


def test_neighbours_are_at_most_three_adjacent_choices():
    assert neighbours(0.1) == [0.2, None] and neighbours(0.5) == [0.4, 0.6, None]
    assert neighbours(0.9) == [0.8, None] and neighbours(None) == [0.9]
    assert all(len(neighbours(choice)) <= 3 for choice in [*BETA_GRID, None])


def test_refinement_with_all_zero_trials_keeps_the_first_allocation():
    for target in (0.45, 0.6, 0.8):
        first = sensitivity_choices(REFINE_LAYERS, REFINE_LAYERS, _hand_made_table(0), target)
        zeros = {name: {choice_key(n): 0.0 for n in neighbours(choice)} for name, choice in first.items()}
        assert refined_choices(REFINE_LAYERS, REFINE_LAYERS, first, zeros, target) == (first, 0.0)


def test_refinement_is_the_exact_knapsack_over_each_layer_and_its_neighbours():
    import numpy as np

    gen = np.random.default_rng(1)
    total = sum(layer.params for layer in REFINE_LAYERS)
    moved_somewhere = False
    for target in (0.45, 0.6, 0.8):
        low, high = budget_band(target)
        first = sensitivity_choices(REFINE_LAYERS, REFINE_LAYERS, _hand_made_table(2), target)
        trials = {name: {choice_key(n): float(gen.normal(0, 0.1)) for n in neighbours(choice)}
                  for name, choice in first.items()}
        chosen, predicted = refined_choices(REFINE_LAYERS, REFINE_LAYERS, first, trials, target)
        options = [[(first[layer.name], 0.0)] + [(n, trials[layer.name][choice_key(n)])
                                                  for n in neighbours(first[layer.name])] for layer in REFINE_LAYERS]
        best = min(sum(cost for _, cost in combo) for combo in itertools.product(*options)
                   if low * total <= sum(choice_params(layer, choice) for layer, (choice, _) in
                                         zip(REFINE_LAYERS, combo, strict=True)) <= high * total)
        assert predicted == pytest.approx(min(best, 0.0))
        kept = sum(choice_params(layer, chosen[layer.name]) for layer in REFINE_LAYERS)
        assert low * total <= kept <= high * total
        assert all(chosen[name] in (first[name], *neighbours(first[name])) for name in first)
        moved_somewhere |= chosen != first
    assert moved_somewhere  # the random trials offer gains: the test sees a re-solve that moves layers


@pytest.mark.slow  # the sensitivity trials of 7 layers, then at most 21 refinement trials
def test_refined_on_a_tiny_model_lands_on_the_budget_and_never_measures_worse_than_sensitivity(cache, tiny_dir,
                                                                                               tmp_path):
    from sfsd.decompose import rank_for_budget

    target, last_block = 0.7, dict(first_block=2)
    sensitivity = run_search(_config(tiny_dir, "sensitivity", target, **last_block), progress=False).result()
    run = run_search(_config(tiny_dir, "refined", target, **last_block), progress=False)
    result = run.result()
    details = result["allocation"]
    low, high = budget_band(target)
    assert low <= result["overall_budget"] <= high and result["strategy"] == "refined"
    # The first allocation is the sensitivity run's (its table reused: no sensitivity trial), measured alike.
    stored = json.loads(run.file("refined.json").read_text())
    first = {name: None if key == INTACT else float(key) for name, key in stored["first"].items()}
    layers = {s["name"]: s for s in run.config["layers"]}
    assert {name: rank_for_budget(beta, layers[name]["d_in"], layers[name]["d_out"])
            for name, beta in first.items() if beta is not None} == sensitivity["ranks"]
    assert details["start_metric"] == pytest.approx(sensitivity["final_metric"], rel=1e-9)
    # One trial per neighbour of each layer's first choice, all the trials of this run: at most 3 x layers.
    assert {name: set(row) for name, row in stored["table"].items()} == \
        {name: {choice_key(n) for n in neighbours(beta)} for name, beta in first.items()}
    assert result["trials"] == details["trials"] <= details["trial_budget"] == 3 * len(layers)
    # Never worse than the sensitivity allocation on the search metric: the refined ranks are measured and kept
    # only if they are not. On this fixture the re-solve moves layers and gains, as it predicted.
    assert result["final_metric"] <= sensitivity["final_metric"] * (1 + 1e-9)
    assert details["moved"] and details["kept"] == "refined" and result["ranks"] != sensitivity["ranks"]
    assert result["final_metric"] == pytest.approx(details["refined_metric"], rel=1e-9)
    assert details["predicted_metric"] < details["start_metric"]
    # Another store on the same cache reuses both tables: no trial at all, the same ranks.
    again = run_search(_config(tiny_dir, "refined", target, **last_block), root=tmp_path / "other",
                       progress=False).result()
    assert again["trials"] == 0 and again["ranks"] == result["ranks"]


def test_spectrum_ranks_are_monotone_in_the_budget():
    layers = [LinearLayer(f"ly{i}", i, "q", d_in, d_out, "") for i, (d_in, d_out) in
              enumerate([(256, 256), (256, 128), (384, 256), (256, 384)] * 2)]
    import torch

    torch.manual_seed(0)
    spectra = {ly.name: sorted(torch.rand(min(ly.d_in, ly.d_out)).pow(1 + i % 4).tolist(), reverse=True)
               for i, ly in enumerate(layers)}
    previous = None
    for target in [0.1, 0.2, 0.35, 0.5, 0.6, 0.75, 0.9, 0.97, 1.0]:
        ranks = spectrum_allocation(layers, layers, spectra, target)
        from sfsd.decompose import overall_budget

        assert abs(overall_budget(layers, ranks) / target - 1) <= 0.005
        full = {ly.name: ranks.get(ly.name, 10**9) for ly in layers}  # intact above every rank
        if previous:
            assert all(full[name] >= previous[name] for name in full)
        previous = full


def test_bad_targets_are_one_line_errors_and_write_nothing(cache, tiny_dir):
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(SfsdError, match="target-budget"):
            _config(tiny_dir, "spectrum", bad)
    with pytest.raises(SfsdError, match="with --target-budget"):
        SearchConfig(model=str(tiny_dir), strategy="spectrum")
    with pytest.raises(SfsdError, match="does not allocate"):
        _config(tiny_dir, "linear", 0.8)
    for strategy in ("sensitivity", "refined"):  # the same grid floor, the same line
        with pytest.raises(SfsdError, match=rf"^target budget 0.05 is below what '{strategy}' can reach on these "
                                            r"layers \(0\.\d+: the lowest rank everywhere\): choose --target-budget"):
            run_search(_config(tiny_dir, strategy, 0.05), progress=False)
    assert RunStore().ids() == []


def test_alg1_tolerance_bisection_finds_the_smallest_tolerance_that_reaches_the_target():
    calls = []

    def budget_at(tolerance):  # a monotone step function, like Algorithm 1's final budget
        calls.append(tolerance)
        return 1.0 - 0.01 * int(tolerance * 100), f"run@{tolerance}"

    tolerance, run = bisect_tolerance(budget_at, 0.65, 0.05, 1000.0, 8)
    assert 0.35 <= tolerance < 0.35 + 0.2 / 2**8 and run == f"run@{tolerance}"
    assert calls[:4] == [0.05, 0.1, 0.2, 0.4] and 0.0 not in calls  # tolerance 0 alone is never run
    with pytest.raises(SfsdError, match="does not reach"):
        bisect_tolerance(lambda t: (0.9, None), 0.5, 0.05, 1.0, 3)


def test_alg1_without_bisections_runs_only_the_doubling_and_keeps_ids():
    calls = []

    def budget_at(tolerance):
        calls.append(tolerance)
        return 1.0 - 0.01 * int(tolerance * 100), f"run@{tolerance}"

    tolerance, run = bisect_tolerance(budget_at, 0.65, 0.05, 1000.0, 0)
    assert calls == [0.05, 0.1, 0.2, 0.4] and tolerance == 0.4 and run == "run@0.4"
    config = _config("m", "alg1", 0.8)
    assert "alg1_bisections" not in config.to_dict()  # the default keeps earlier runs' ids
    coarse = SearchConfig.from_dict(replace(config, alg1_bisections=0).to_dict())
    assert coarse.alg1_bisections == 0 and run_id_for(coarse.to_dict()) != run_id_for(config.to_dict())
    with pytest.raises(SfsdError, match="alg1-bisections"):
        replace(config, strategy="spectrum", alg1_bisections=1)
    calls.clear()
    tolerance, _ = bisect_tolerance(budget_at, 0.65, 0.05, 1000.0, 0, growth=4)
    assert calls == [0.05, 0.2, 0.8] and tolerance == 0.8  # fewer runs on the way, a wider bracket
    assert "alg1_growth" not in config.to_dict()
    grown = replace(config, alg1_growth=4.0)
    assert SearchConfig.from_dict(grown.to_dict()) == grown
    assert run_id_for(grown.to_dict()) != run_id_for(config.to_dict())
    with pytest.raises(SfsdError, match="alg1-growth"):
        replace(config, alg1_growth=1.0)


def test_old_configs_load_and_keep_their_ids():
    old = _config("m", "linear", None).to_dict()
    assert "target_budget" not in old
    assert SearchConfig.from_dict(old).target_budget is None


@pytest.mark.slow  # a frontier of four searches, evaluated, then resumed from the command line
def test_killed_frontier_resumes_and_reuses_finished_points(cache, tiny_dir, capsys):
    from sfsd.cli import main
    from sfsd.runs.frontier import frontier_frame
    from sfsd.search.frontier import run_frontier

    base = SearchConfig(model=str(tiny_dir), metric=MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=32),
                        calibration=CalibrationSpec(source="wiki", samples=16,
                                                    seq_len=32), strategy="spectrum", target_budget=0.8)
    said: list[str] = []
    runs = run_frontier(base, ["uniform", "spectrum"], [0.8, 0.6], seq_lens=(32, 64), ppl_tokens=2048,
                        progress=False, say=said.append)
    assert sum("new run" in line for line in said) == 4
    frame = frontier_frame()
    assert len(frame) == 5 and set(frame["strategy"]) == {"base", "uniform", "spectrum"}
    assert frame[["ppl@32", "ppl@64"]].notna().all().all()
    # Kill one point mid-way (its process gone while running, no result, its last evaluation lost) and
    # lose another entirely; then start the same frontier again from the command line.
    killed, lost = runs[1], runs[2]
    killed.file("result.json").unlink()
    lines = killed.file("evaluations.jsonl").read_text().splitlines()
    killed.file("evaluations.jsonl").write_text(lines[0] + "\n")
    killed.write_status(state="running", pid=2**22 + 1)
    assert killed.status()["state"] == "interrupted"
    RunStore().delete(lost.id)
    capsys.readouterr()
    assert main(["frontier", "--model", str(tiny_dir), "--strategies", "uniform,spectrum", "--budgets", "0.8,0.6",
                 "--search-samples", "4", "--search-seq-len", "32", "--ppl-seq-lens", "32,64", "--ppl-tokens", "2048",
                 "--calib-source", "wiki", "--calib-samples", "16", "--calib-seq-len", "32", "--quiet",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing run") == 2 and "resuming run" in out and "new run" in out
    again = frontier_frame()
    assert len(again) == 5 and again[["ppl@32", "ppl@64"]].notna().all().all()
    for run in runs:
        kinds = [(e["kind"], e["metrics"]["seq_len"]) for e in Run.open(run.id).read_evaluations()]
        assert sorted(kinds) == [("ppl", 32), ("ppl", 64)]  # nothing evaluated twice
    merged = again.set_index("run_id").loc[[r.id for r in runs if r.id != lost.id]]
    before = frame.set_index("run_id").loc[merged.index]
    assert (merged["ppl@64"] - before["ppl@64"]).abs().max() < 1e-9  # the resumed point gives the same numbers
