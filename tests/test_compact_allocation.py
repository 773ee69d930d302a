"""Target-budget allocation in compact factors (r (d1 + d2 - r) weights a layer): every count of the strategies
follows the format, the uniform and spectrum strategies land on B in it as stored runs whose final model holds the
counted parameters, the knapsack is exact with compact weights, and the format names its runs and frontier lines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import save_tiny_llama

from sfsd.adapters import LinearLayer
from sfsd.compress import CalibrationSpec
from sfsd.decompose import BETA_GRID, factor_params, full_rank, overall_budget, rank_for_budget
from sfsd.errors import SfsdError
from sfsd.runs import layers_frame, run_id_for
from sfsd.search import MetricSpec, SearchConfig, materialize, run_search
from sfsd.search.allocation import (
    _increments,
    budget_band,
    sensitivity_allocation,
    spectrum_allocation,
    spectrum_order,
    uniform_allocation,
)

COMPACT = "compact"


def _layer(name: str, d_in: int, d_out: int, block: int = 0) -> LinearLayer:
    return LinearLayer(name=name, block=block, role=name.rsplit(".", 1)[-1], d_in=d_in, d_out=d_out,
                       input_group=name)


LAYERS = [_layer("b0.q", 64, 64), _layer("b0.up", 64, 96), _layer("b0.down", 96, 64),
          _layer("b1.q", 64, 64, 1), _layer("b1.up", 64, 96, 1), _layer("b1.down", 96, 64, 1)]


def _spectra(layers, seed=0):
    gen = np.random.default_rng(seed)
    return {layer.name: sorted(gen.gamma(0.5, size=full_rank(layer.d_in, layer.d_out)).tolist(), reverse=True)
            for layer in layers}


@pytest.mark.parametrize(("d_in", "d_out"), [(64, 64), (64, 96), (96, 64), (7, 300)])
def test_compact_increments_cost_each_step_and_sum_to_the_intact_layer(d_in, d_out):
    layer = _layer("x", d_in, d_out)
    spectrum = np.linspace(1.0, 0.01, full_rank(d_in, d_out)).tolist()
    steps = _increments(layer, spectrum, COMPACT)
    # rank 1 .. min - 1 all save weights in compact factors, then the intact layer
    assert [rank for *_, rank in steps] == [*range(2, full_rank(d_in, d_out)), None]
    for gain_cost_rank in steps[:-1]:
        rank = gain_cost_rank[2]
        assert gain_cost_rank[1] == d_in + d_out - 2 * (rank - 1) - 1  # r -> r + 1 costs d1 + d2 - 2r - 1
    assert sum(cost for _, cost, _ in steps) == d_in * d_out - factor_params(1, d_in, d_out, COMPACT)
    assert abs(sum(gain for gain, _, _ in steps) - (1 - spectrum[0] / sum(spectrum))) < 1e-12
    # two factors: the same totals in their own count
    two = _increments(layer, spectrum)
    assert sum(cost for _, cost, _ in two) == d_in * d_out - (d_in + d_out)
    assert {cost for _, cost, _ in two[:-1]} <= {d_in + d_out}


def test_compact_spectrum_order_keeps_each_layer_in_rank_order():
    order = spectrum_order(LAYERS, _spectra(LAYERS), COMPACT)
    for layer in LAYERS:
        ranks = [rank for name, _, rank in order if name == layer.name]
        assert ranks == [*range(2, full_rank(layer.d_in, layer.d_out)), None]


@pytest.mark.parametrize("target", [0.3, 0.5, 0.7, 0.9])
def test_compact_uniform_and_spectrum_allocations_land_on_the_budget(target):
    low, high = budget_band(target)
    searched = LAYERS[1:]  # one layer stays intact, outside the search
    beta, ranks = uniform_allocation(LAYERS, searched, target, COMPACT)
    assert low <= overall_budget(LAYERS, ranks, COMPACT) <= high
    # every layer at the compact rank of the common beta (up to one rank), higher than two factors would give
    for layer in searched:
        rank = ranks.get(layer.name, full_rank(layer.d_in, layer.d_out))
        assert abs(factor_params(rank, layer.d_in, layer.d_out, COMPACT) / layer.params - beta) \
            <= (layer.d_in + layer.d_out) / layer.params
        assert rank >= rank_for_budget(beta, layer.d_in, layer.d_out)
    spectrum = spectrum_allocation(LAYERS, searched, _spectra(searched), target, COMPACT)
    assert low <= overall_budget(LAYERS, spectrum, COMPACT) <= high
    assert "b0.q" not in ranks and "b0.q" not in spectrum


def test_compact_sensitivity_knapsack_is_exact_on_a_hand_made_table():
    layers = [_layer("a", 40, 24), _layer("b", 24, 40), _layer("c", 32, 32)]
    gen = np.random.default_rng(3)
    # each layer's metric change falls with beta, at its own scale
    table = {layer.name: dict(zip(map(str, BETA_GRID), sorted(gen.random(len(BETA_GRID)) * scale, reverse=True),
                                  strict=True))
             for layer, scale in zip(layers, (1.0, 0.3, 2.0), strict=True)}
    total = sum(layer.params for layer in layers)
    for target in (0.4, 0.55, 0.7, 0.85):
        low, high = budget_band(target)
        got = sensitivity_allocation(layers, layers, table, target, COMPACT)
        options = [[(table[layer.name][str(beta)], rank_for_budget(beta, layer.d_in, layer.d_out, COMPACT))
                    for beta in BETA_GRID] + [(0.0, None)] for layer in layers]
        best, best_ranks = None, None
        for combo in itertools.product(*options):
            kept = sum(layer.params if rank is None else factor_params(rank, layer.d_in, layer.d_out, COMPACT)
                       for layer, (_, rank) in zip(layers, combo, strict=True))
            cost = sum(change for change, _ in combo)
            if low * total <= kept <= high * total and (best is None or cost < best - 1e-12):
                best, best_ranks = cost, {layer.name: rank for layer, (_, rank) in zip(layers, combo, strict=True)
                                          if rank is not None}
        assert best is not None
        assert sum(table[name][_beta_of(layers, name, rank)] for name, rank in got.items()) == pytest.approx(best)
        assert low <= overall_budget(layers, got, COMPACT) <= high
        assert low <= overall_budget(layers, best_ranks, COMPACT) <= high


def _beta_of(layers, name, rank):
    layer = next(layer for layer in layers if layer.name == name)
    return next(str(beta) for beta in BETA_GRID if rank_for_budget(beta, layer.d_in, layer.d_out, COMPACT) == rank)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, default_model_dir):
    return save_tiny_llama(tmp_path_factory.mktemp("compact-alloc") / "tiny-llama", default_model_dir, 2)


def _config(model, strategy, target, **extra):
    metric = MetricSpec(name="ppl", tolerance=0.0, samples=4, seq_len=32, batch_size=2)
    return SearchConfig(model=str(model), metric=metric,
                        calibration=CalibrationSpec(source="wiki", samples=16, seq_len=32),
                        strategy=strategy, target_budget=target, **extra)


def test_the_format_is_in_a_run_id_only_when_compact_and_algorithm1_refuses_it(tiny_dir):
    two = _config(tiny_dir, "spectrum", 0.7)
    compact = _config(tiny_dir, "spectrum", 0.7, factors=COMPACT)
    assert "factors" not in two.to_dict() and compact.to_dict()["factors"] == COMPACT
    assert run_id_for(two.to_dict()) != run_id_for(compact.to_dict())
    assert SearchConfig.from_dict(compact.to_dict()) == compact
    for strategy, target in (("linear", None), ("alg1", 0.7)):
        with pytest.raises(SfsdError, match="two factors only"):
            _config(tiny_dir, strategy, target, factors=COMPACT)
    with pytest.raises(SfsdError, match="unknown factor format"):
        _config(tiny_dir, "spectrum", 0.7, factors="three")


@pytest.mark.parametrize("strategy", ["uniform", "spectrum"])
def test_compact_strategy_lands_on_the_target_as_a_stored_run(cache, tiny_dir, tmp_path, strategy):
    import torch
    from transformers import AutoModelForCausalLM

    import sfsd  # noqa: F401  registers the compressed classes
    from sfsd.accounting import count_parameters
    from sfsd.adapters import adapter_for
    from sfsd.decompose import CompactLowRankLinear

    target = 0.6
    run = run_search(_config(tiny_dir, strategy, target, factors=COMPACT), progress=False)
    result = run.result()
    low, high = budget_band(target)
    assert result["factors"] == COMPACT and result["strategy"] == strategy
    assert low <= result["overall_budget"] <= high
    layers = layers_frame(run)
    factorised = layers[~layers["intact"]]
    d_in, d_out, rank = factorised["d_in"], factorised["d_out"], factorised["rank"]
    assert (factorised["beta"] - rank * (d_in + d_out - rank) / (d_in * d_out)).abs().max() < 1e-12
    assert (factorised["params_kept"] == rank * (d_in + d_out - rank)).all()
    out = materialize(run, tmp_path / "model")
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    assert model.config.sfsd_factors == COMPACT and count_parameters(model) == result["params"]
    # the final model holds exactly the counted weights in every factorised layer (its bias b0 aside)
    kept = dict(zip(factorised["layer"], factorised["params_kept"], strict=True))
    assert set(kept) == set(result["ranks"])
    for name, weights in kept.items():
        module = model.get_submodule(name)
        assert isinstance(module, CompactLowRankLinear)
        assert sum(p.numel() for n, p in module.named_parameters() if not n.endswith("bias")) == weights
    all_layers = adapter_for(model).layers()
    assert overall_budget(all_layers, result["ranks"], COMPACT) == pytest.approx(result["overall_budget"])
    # a compact-factor run is a line of its own on the frontier
    from sfsd.runs.frontier import frontier_frame

    assert frontier_frame().set_index("run_id").loc[run.id, "strategy"] == f"{strategy} compact"


@pytest.mark.slow  # 36 trials on the tiny model (~50 s)
def test_compact_sensitivity_trials_build_compact_layers_with_their_own_table(cache, tiny_dir):
    # the query projections only (2 layers, 18 trials): the plumbing, not the quality
    target = 0.95
    compact = run_search(_config(tiny_dir, "sensitivity", target, roles=["q"], factors=COMPACT),
                         progress=False).result()
    low, high = budget_band(target)
    assert compact["factors"] == COMPACT and low <= compact["overall_budget"] <= high
    assert compact["trials"] == 2 * len(BETA_GRID)
    grid = {rank_for_budget(beta, 64, 64, COMPACT) for beta in BETA_GRID}
    assert set(compact["ranks"].values()) <= grid and grid != {rank_for_budget(beta, 64, 64) for beta in BETA_GRID}
    # another target reuses the compact table; two factors measure their own
    again = run_search(_config(tiny_dir, "sensitivity", 0.93, roles=["q"], factors=COMPACT),
                       progress=False).result()
    assert again["trials"] == 0
    two = run_search(_config(tiny_dir, "sensitivity", target, roles=["q"]), progress=False).result()
    assert two["trials"] == 2 * len(BETA_GRID) and two["factors"] == "two-factor"


def test_compact_frontier_is_a_line_of_its_own_and_refuses_alg1(cache, tiny_dir, capsys):
    from sfsd.cli import main
    from sfsd.runs.frontier import frontier_frame

    argv = ["frontier", "--model", str(tiny_dir), "--budgets", "0.8", "--search-samples", "4", "--search-seq-len",
            "32", "--ppl-seq-lens", "32", "--ppl-tokens", "512", "--calib-source", "wiki", "--calib-samples", "16",
            "--calib-seq-len", "32", "--quiet", "--device", "cpu", "--factors", COMPACT]
    assert main([*argv, "--strategies", "spectrum,alg1"]) == 2
    assert "two factors only" in capsys.readouterr().err
    assert frontier_frame().empty  # refused before anything ran
    assert main([*argv, "--strategies", "spectrum"]) == 0
    assert "spectrum compact @ 0.8" in capsys.readouterr().out
    frame = frontier_frame()
    point = frame[frame["strategy"] == "spectrum compact"]
    assert len(point) == 1 and point["ppl@32"].notna().all()
    assert abs(point["overall_budget"].iloc[0] / 0.8 - 1) <= 0.005


@pytest.mark.slow  # 14 layers' sensitivity trials, up to 42 refinement trials, then the eval perplexity
def test_refined_compact_frontier_point_refines_in_compact_factors(cache, tiny_dir, capsys):
    import json

    from sfsd.cli import main
    from sfsd.runs import Run
    from sfsd.runs.frontier import frontier_frame

    argv = ["frontier", "--model", str(tiny_dir), "--budgets", "0.8", "--search-samples", "4", "--search-seq-len",
            "32", "--ppl-seq-lens", "32", "--ppl-tokens", "512", "--calib-source", "wiki", "--calib-samples", "16",
            "--calib-seq-len", "32", "--quiet", "--device", "cpu", "--factors", COMPACT, "--strategies", "refined"]
    assert main(argv) == 0
    assert "refined compact @ 0.8" in capsys.readouterr().out
    frame = frontier_frame()
    point = frame[frame["strategy"] == "refined compact"]
    assert len(point) == 1 and point["ppl@32"].notna().all()
    run = Run.open(point["run_id"].iloc[0])
    result = run.result()
    low, high = budget_band(0.8)
    assert result["factors"] == COMPACT and low <= result["overall_budget"] <= high
    # every layer at a compact grid rank, its trials measured in compact factors against their own table
    for layer in run.config["layers"]:
        grid = {rank_for_budget(beta, layer["d_in"], layer["d_out"], COMPACT) for beta in BETA_GRID}
        assert result["ranks"].get(layer["name"], min(grid)) in grid
    details = result["allocation"]
    assert details["trials"] <= details["trial_budget"] == 3 * len(run.config["layers"]) == 42
    assert result["trials"] == 14 * len(BETA_GRID) + details["trials"]
    assert len(json.loads(run.file("refined.json").read_text())["table"]) == 14
    assert result["final_metric"] <= details["start_metric"] * (1 + 1e-9)
