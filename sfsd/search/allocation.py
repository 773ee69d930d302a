"""Rank allocation at a target overall budget: how to spend parameters across layers.

Algorithm 1 answers "how small can the model get within a tolerance?"; these strategies answer "which
ranks give the best model at the budget B I need?". They are a different kind of thing from the per-layer
beta walks of `sfsd.search.strategies` (linear, bisect), hence their own registry, ALLOCATIONS
(at the end of this module). This module holds the maths only (no model, no run); `sfsd.search.targeted`
drives them on a model, supplies what they measure (`AllocationInputs`) and stores the result as a run.

Every strategy lands within BUDGET_TOLERANCE (relative) of B in the overall budget of Appendix B, counted
over *all* decomposable layers of the model (layers outside the search stay intact at beta 1).

Every count follows the factor format the ranks are stored in (`factors`, `sfsd.options.FACTORS`), through
`factor_params`: two factors spend d1 + d2 weights per rank, compact factors r (d1 + d2 - r) in all, so the
step r -> r + 1 costs d1 + d2 - 2r - 1 and a beta buys a higher rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sfsd.adapters import LinearLayer
from sfsd.decompose.budget import (
    BETA_GRID,
    TWO_FACTOR,
    factor_params,
    full_rank,
    layer_beta,
    overall_budget,
    rank_for_budget,
    saves_parameters,
)
from sfsd.errors import SfsdError
from sfsd.registry import Registry

BUDGET_TOLERANCE = 0.005  # a strategy's overall budget must lie within B * (1 -/+ this)

SENSITIVITY_FILE = "sensitivity.json"  # the sensitivity table, copied into the run folder
REFINED_FILE = "refined.json"  # the refinement's trial table around the sensitivity allocation, in the run folder
INTACT = "intact"  # the key of a layer left whole in the refinement's trial table
# (ranks of the searched layers that are factorised, details for the run's result); None: cancelled
Allocated = tuple[dict[str, int], dict] | None
Choice = float | None  # a layer's choice in a grid allocation: a grid beta, or None (intact)


class AllocationInputs(Protocol):
    """What a strategy reads, supplied by the driver (`sfsd.search.targeted`). The measured pieces cost
    model passes, so they are computed only when a strategy asks for them."""

    all_layers: Sequence[LinearLayer]  # every decomposable layer of the model
    layers: Sequence[LinearLayer]  # the searched layers
    target: float
    factors: str  # the factor format the ranks are stored in, which every count follows
    higher_is_better: bool  # the search metric's direction

    def spectra(self) -> Mapping[str, Sequence[float]]: ...

    def sensitivities(self) -> Mapping[str, Mapping[str, float]] | None: ...  # None: cancelled

    # (the metric at `first`, {layer: {choice_key(neighbour): metric change}}); None: cancelled
    def neighbour_changes(self, first: Mapping[str, Choice]) -> tuple[float, Mapping[str, Mapping[str, float]]] | None:
        ...

    def metric_at(self, ranks: Mapping[str, int]) -> float: ...  # the search metric with these ranks applied

    def algorithm1(self) -> tuple[dict[str, int], dict]: ...


@dataclass(frozen=True)
class Allocation:
    """A target-budget strategy: adding one means registering one Allocation at the end of this module."""

    name: str
    description: str
    allocate: Callable[[AllocationInputs], Allocated]
    color: str  # its colour on the Frontier page
    grid_only: bool = False  # picks ranks of the beta grid only (its lowest beta is the floor), else any rank >= 1


def budget_band(target: float) -> tuple[float, float]:
    """The overall budgets accepted for a target B: B (1 -/+ BUDGET_TOLERANCE), at most 1."""
    return target * (1 - BUDGET_TOLERANCE), min(1.0, target * (1 + BUDGET_TOLERANCE))


def check_target(target: float) -> float:
    if not (isinstance(target, (int, float)) and not isinstance(target, bool) and 0.0 < target <= 1.0):
        raise SfsdError(f"--target-budget must be in (0, 1], got {target}: pass e.g. --target-budget 0.8")
    return float(target)


def lowest_rank(strategy: str, layer: LinearLayer, factors: str = TWO_FACTOR) -> int:
    """The smallest rank a strategy gives a layer: rank 1, or the rank of the lowest grid beta."""
    if ALLOCATIONS[strategy].grid_only:
        return rank_for_budget(BETA_GRID[0], layer.d_in, layer.d_out, factors)
    return 1


def minimum_budget(strategy: str, all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
                   factors: str = TWO_FACTOR) -> float:
    """The smallest overall budget a strategy can reach: the lowest rank on every searched layer."""
    ranks = {layer.name: lowest_rank(strategy, layer, factors) for layer in searched}
    return overall_budget(all_layers, ranks, factors)


def check_reachable(strategy: str, target: float, all_layers: Sequence[LinearLayer],
                    searched: Sequence[LinearLayer], factors: str = TWO_FACTOR) -> None:
    """SfsdError (one line, before anything is written) when B is below what the strategy can reach."""
    low = minimum_budget(strategy, all_layers, searched, factors)
    if budget_band(target)[1] < low:
        floor = math.ceil(low * 1000) / 1000
        raise SfsdError(f"target budget {target} is below what {strategy!r} can reach on these layers "
                        f"({low:.4f}: the lowest rank everywhere): choose --target-budget >= {floor}")


def uniform_allocation(all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
                       target: float, factors: str = TWO_FACTOR) -> tuple[float, dict[str, int]]:
    """One beta for every searched layer, any rank: (beta, ranks).

    The overall budget is linear in a common real-valued beta, so beta = (B total - fixed) / searched is
    exact; each layer's real rank beta d1 d2 / (d1 + d2) (Eq. 3 without the floor) is rounded down, then
    rounded up one layer at a time, largest fractional part first, while that brings the budget closer to
    B. Every layer thus keeps beta of its parameters up to one rank (Eq. 3's floor alone could miss B by
    a whole rank on every layer at once). Compact factors: the real rank is the smaller root of
    r (d1 + d2 - r) = beta d1 d2 (`real_rank`), a step up costs d1 + d2 - 2r - 1."""
    total = sum(layer.params for layer in all_layers)
    searched_total = sum(layer.params for layer in searched)
    fixed = total - searched_total
    beta = min(1.0, (target * total - fixed) / searched_total) if searched_total else 1.0
    if beta >= 1.0:
        return 1.0, {}
    real = {layer.name: real_rank(beta, layer.d_in, layer.d_out, factors) for layer in searched}
    ranks = {name: max(1, math.floor(value + 1e-9)) for name, value in real.items()}
    goal = target * total

    def params(layer: LinearLayer, rank: int) -> int:
        return factor_params(rank, layer.d_in, layer.d_out, factors)

    kept = fixed + sum(params(layer, ranks[layer.name]) for layer in searched)
    for layer in sorted(searched, key=lambda layer: ranks[layer.name] - real[layer.name]):
        if ranks[layer.name] >= full_rank(layer.d_in, layer.d_out):
            continue
        step = params(layer, ranks[layer.name] + 1) - params(layer, ranks[layer.name])
        if abs(kept + step - goal) < abs(kept - goal):
            ranks[layer.name] += 1
            kept += step
    by_name = {layer.name: layer for layer in searched}
    return beta, {name: rank for name, rank in ranks.items()
                  if saves_parameters(rank, by_name[name].d_in, by_name[name].d_out, factors)}


def real_rank(beta: float, d_in: int, d_out: int, factors: str = TWO_FACTOR) -> float:
    """The real-valued rank whose layer holds exactly beta d1 d2 weights (Eq. 3 without the floor): two factors
    beta d1 d2 / (d1 + d2); compact the smaller root of r (d1 + d2 - r) = beta d1 d2."""
    width = d_in + d_out
    if factors == TWO_FACTOR:
        return beta * d_in * d_out / width
    return (width - math.sqrt(max(0.0, width * width - 4 * beta * d_in * d_out))) / 2


def largest_saving_rank(layer: LinearLayer, factors: str = TWO_FACTOR) -> int:
    """The largest rank that still holds fewer weights than W (at least 1): r (d1 + d2) < d1 d2 in two factors,
    r < min(d1, d2) compact."""
    if factors == TWO_FACTOR:
        return max(1, (layer.params - 1) // (layer.d_in + layer.d_out))
    return max(1, full_rank(layer.d_in, layer.d_out) - 1)


def _increments(layer: LinearLayer, spectrum: Sequence[float],
                factors: str = TWO_FACTOR) -> list[tuple[float, int, int | None]]:
    """The steps from rank 1 up to intact of one layer: (energy recovered, parameters spent, new rank).

    A step r -> r + 1 costs factor_params(r + 1) - factor_params(r) (d1 + d2 in two factors, d1 + d2 - 2r - 1
    compact); the last step replaces the largest rank that still saves parameters by the intact layer, so the
    costs sum to d1 d2 - factor_params(1)."""
    total = float(sum(spectrum))
    energy = [float(value) / total if total > 0 else 0.0 for value in spectrum]

    def params(rank: int) -> int:
        return factor_params(rank, layer.d_in, layer.d_out, factors)

    top = max(1, min(len(energy), largest_saving_rank(layer, factors)))
    steps = [(energy[rank] if rank < len(energy) else 0.0, params(rank + 1) - params(rank), rank + 1)
             for rank in range(1, top)]
    steps.append((sum(energy[top:]), layer.params - params(top), None))
    return steps


def spectrum_order(searched: Sequence[LinearLayer], spectra: Mapping[str, Sequence[float]],
                   factors: str = TWO_FACTOR) -> list[tuple[str, int, int | None]]:
    """Every rank increment of every layer, most energy per parameter first: (layer, parameters, new rank).

    Each layer's spectrum is divided by its total energy, so a step's energy is the relative output error
    it removes from its own layer: layers of very different scale (q against down) become comparable.
    Within a layer the priority is the running minimum of energy per parameter, so a layer's steps
    always come in order (rank r before r + 1) and every budget's allocation is a prefix of one list:
    the ranks are monotone in the budget."""
    items = []
    for position, layer in enumerate(searched):
        priority = math.inf
        for step, (gain, cost, rank) in enumerate(_increments(layer, spectra[layer.name], factors)):
            priority = min(priority, gain / cost)
            items.append((-priority, position, step, layer.name, cost, rank))
    items.sort(key=lambda item: item[:3])
    return [(name, cost, rank) for *_, name, cost, rank in items]


def spectrum_allocation(all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
                        spectra: Mapping[str, Sequence[float]], target: float,
                        factors: str = TWO_FACTOR) -> dict[str, int]:
    """Rank 1 everywhere, then the increments of `spectrum_order` until the budget is closest to B."""
    total = sum(layer.params for layer in all_layers)
    searched_names = {layer.name for layer in searched}
    fixed = sum(layer.params for layer in all_layers if layer.name not in searched_names)
    spent = fixed + sum(factor_params(1, layer.d_in, layer.d_out, factors) for layer in searched)
    available = target * total - spent
    order = spectrum_order(searched, spectra, factors)
    cumulative = np.concatenate([[0.0], np.cumsum([cost for _, cost, _ in order])])
    count = int(np.searchsorted(cumulative, available, side="right")) - 1  # last prefix within `available`
    if count + 1 < len(cumulative) and abs(cumulative[count + 1] - available) < abs(available - cumulative[count]):
        count += 1
    ranks: dict[str, int | None] = {layer.name: 1 for layer in searched}
    for name, _, rank in order[:max(count, 0)]:
        ranks[name] = rank
    return {name: rank for name, rank in ranks.items() if rank is not None}


def solve_choices(costs: Sequence[Sequence[float]], weights: Sequence[Sequence[float]], low: float,
                  high: float) -> list[int]:
    """Multiple-choice knapsack, solved exactly (scipy.optimize.milp, HiGHS): one choice per group,
    minimising the summed cost with the summed weight in [low, high]. Returns the chosen index per group."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    sizes = [len(group) for group in costs]
    c = np.concatenate([np.asarray(group, dtype=float) for group in costs])
    w = np.concatenate([np.asarray(group, dtype=float) for group in weights])
    one_each = np.zeros((len(sizes), len(c)))
    start = 0
    for group, size in enumerate(sizes):
        one_each[group, start:start + size] = 1.0
        start += size
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(w[None, :], low, high)]
    result = milp(c, constraints=constraints, integrality=np.ones_like(c), bounds=Bounds(0, 1))
    if result.status != 0 or result.x is None:
        raise SfsdError(f"no combination of the grid betas lands within the budget band ({result.message}): "
                        "choose another --target-budget or the spectrum strategy")
    chosen, start = [], 0
    for size in sizes:
        chosen.append(int(np.argmax(result.x[start:start + size])))
        start += size
    return chosen


def choice_key(choice: Choice) -> str:
    """A choice as the trial tables name it: the beta as text (as in the sensitivity table), or "intact"."""
    return INTACT if choice is None else str(choice)


def choice_params(layer: LinearLayer, choice: Choice, factors: str = TWO_FACTOR) -> int:
    """The weights a layer keeps at a choice: Eq. 3's rank for the beta in the format `factors`, or all."""
    if choice is None:
        return layer.params
    return factor_params(rank_for_budget(choice, layer.d_in, layer.d_out, factors), layer.d_in, layer.d_out, factors)


def choice_ranks(searched: Sequence[LinearLayer], choices: Mapping[str, Choice],
                 factors: str = TWO_FACTOR) -> dict[str, int]:
    """The ranks of the factorised layers of a grid allocation (intact layers left out)."""
    return {layer.name: rank_for_budget(choices[layer.name], layer.d_in, layer.d_out, factors)
            for layer in searched if choices[layer.name] is not None}


def choose(all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
           options: Mapping[str, Mapping[Choice, float]], target: float,
           factors: str = TWO_FACTOR) -> dict[str, Choice]:
    """One option per searched layer (`options[layer]`: choice -> cost) minimising the summed cost with the
    overall budget within the band of B: the multiple-choice knapsack of `solve_choices`."""
    total = sum(layer.params for layer in all_layers)
    searched_names = {layer.name for layer in searched}
    fixed = sum(layer.params for layer in all_layers if layer.name not in searched_names)
    picks = [list(options[layer.name]) for layer in searched]
    costs = [[options[layer.name][choice] for choice in group] for layer, group in zip(searched, picks, strict=True)]
    weights = [[choice_params(layer, choice, factors) for choice in group]
               for layer, group in zip(searched, picks, strict=True)]
    low, high = budget_band(target)
    chosen = solve_choices(costs, weights, low * total - fixed, high * total - fixed)
    return {layer.name: group[pick] for layer, group, pick in zip(searched, picks, chosen, strict=True)}


def sensitivity_choices(all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
                        table: Mapping[str, Mapping[str, float]], target: float,
                        factors: str = TWO_FACTOR) -> dict[str, Choice]:
    """The per-layer grid betas (or intact) minimising the summed metric change at budget B.

    `table[layer][str(beta)]` is the metric change with only that layer at beta (intact: 0), the layer at Eq. 3's
    rank for beta in the factor format `factors` (the format the table was measured in)."""
    options = {layer.name: {**{beta: table[layer.name][str(beta)] for beta in BETA_GRID}, None: 0.0}
               for layer in searched}
    return choose(all_layers, searched, options, target, factors)


def sensitivity_allocation(all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
                           table: Mapping[str, Mapping[str, float]], target: float,
                           factors: str = TWO_FACTOR) -> dict[str, int]:
    """The ranks of `sensitivity_choices`."""
    return choice_ranks(searched, sensitivity_choices(all_layers, searched, table, target, factors), factors)


def metric_change(value: float, reference: float, higher_is_better: bool) -> float:
    """How much worse `value` is than `reference`, as every trial table records it: the drop of a metric where
    higher is better (accuracy), the relative increase of one where lower is (perplexity)."""
    return reference - value if higher_is_better else value / reference - 1


def metric_after(reference: float, change: float, higher_is_better: bool) -> float:
    """The metric `change` (as `metric_change` counts it) away from `reference`."""
    return reference - change if higher_is_better else reference * (1 + change)


def neighbours(choice: Choice) -> list[Choice]:
    """The choices a refinement tries for a layer at `choice`: one grid beta lower, one higher (intact above the
    top beta) and intact; at most three (an intact layer: the top beta only)."""
    if choice is None:
        return [BETA_GRID[-1]]
    index = BETA_GRID.index(choice)
    tried: list[Choice] = [BETA_GRID[index - 1]] if index > 0 else []
    tried.append(BETA_GRID[index + 1] if index + 1 < len(BETA_GRID) else None)
    return tried if None in tried else [*tried, None]


def refined_choices(all_layers: Sequence[LinearLayer], searched: Sequence[LinearLayer],
                    first: Mapping[str, Choice], trials: Mapping[str, Mapping[str, float]], target: float,
                    factors: str = TWO_FACTOR) -> tuple[dict[str, Choice], float]:
    """Re-solve the knapsack around a first allocation: (choices, their predicted summed metric change).

    Each layer may keep its choice in `first` (cost 0) or move to one of its `neighbours`, at the cost
    `trials[layer][choice_key(neighbour)]` measured with every other layer at `first`. The first allocation is
    kept unless the re-solve predicts an improvement (a negative sum), so that, with nothing to gain, no layer
    moves for a tie."""
    options = {layer.name: {first[layer.name]: 0.0, **{choice: trials[layer.name][choice_key(choice)]
                                                        for choice in neighbours(first[layer.name])}}
               for layer in searched}
    chosen = choose(all_layers, searched, options, target, factors)
    predicted = sum(options[name][choice] for name, choice in chosen.items())
    return (chosen, predicted) if predicted < 0 else (dict(first), 0.0)


def truncate_at_target(all_layers: Sequence[LinearLayer], decisions: Sequence[Mapping],
                       target: float) -> tuple[dict[str, int], int]:
    """Algorithm 1's decisions, stopped at the first one that brings the budget to B or below.

    The layer where it stops gets the rank between its Algorithm 1 rank and intact whose budget is
    closest to B (any rank), the layers after it stay intact. Returns (ranks, index of that decision)."""
    by_name = {layer.name: layer for layer in all_layers}
    ranks: dict[str, int] = {}
    for index, decision in enumerate(decisions):
        if decision.get("rank") is None:
            continue
        ranks[decision["layer"]] = decision["rank"]
        if overall_budget(all_layers, ranks) > target:
            continue
        layer = by_name[decision["layer"]]
        options = [r for r in range(decision["rank"], min(layer.d_in, layer.d_out) + 1)
                   if saves_parameters(r, layer.d_in, layer.d_out)]
        best, best_gap = None, math.inf
        for rank in [*options, None]:
            trial = {**ranks}
            if rank is None:
                trial.pop(layer.name)
            else:
                trial[layer.name] = rank
            gap = abs(overall_budget(all_layers, trial) - target)
            if gap < best_gap:
                best, best_gap = rank, gap
        if best is None:
            ranks.pop(layer.name)
        else:
            ranks[layer.name] = best
        return ranks, index
    return ranks, len(decisions) - 1


def bisect_tolerance(budget_at: Callable[[float], tuple[float, Any]], target: float, step: float, cap: float,
                     halvings: int, growth: float = 2.0) -> tuple[float, Any]:
    """The smallest tolerance (found by multiplying `step` by `growth` until a run reaches B, then `halvings`
    bisections) whose Algorithm 1 run reaches B: (tolerance, what `budget_at` returned with the budget).
    SfsdError if `cap` does not.

    Tolerance 0 is never run on its own: nearly every trial fails there, so its run costs every layer the
    whole grid (1,890 trials on the default model) and it reaches no target below ~1; the bisection
    between 0 and `step` covers the targets it would."""
    low, high = 0.0, step
    budget, best = budget_at(high)
    while budget > target:
        if high >= cap:
            raise SfsdError(f"Algorithm 1 does not reach budget {target} even with tolerance {cap}: "
                            "choose a higher --target-budget or another strategy")
        low, high = high, min(cap, round(high * growth, 6))
        budget, best = budget_at(high)
    for _ in range(halvings):
        middle = (low + high) / 2
        budget, found = budget_at(middle)
        if budget <= target:
            high, best = middle, found
        else:
            low = middle
    return high, best


def layer_budget(rank: int | None, layer: LinearLayer, factors: str = TWO_FACTOR) -> float | None:
    """The decision record's `beta` of an allocation: the layer's actual budget (None when intact)."""
    return None if rank is None else layer_beta(rank, layer.d_in, layer.d_out, factors)


def _uniform(inputs: AllocationInputs) -> Allocated:
    beta, ranks = uniform_allocation(inputs.all_layers, inputs.layers, inputs.target, inputs.factors)
    return ranks, {"beta": beta}


def _spectrum(inputs: AllocationInputs) -> Allocated:
    ranks = spectrum_allocation(inputs.all_layers, inputs.layers, inputs.spectra(), inputs.target, inputs.factors)
    return ranks, {"normalised": "total energy"}


def _sensitivity(inputs: AllocationInputs) -> Allocated:
    table = inputs.sensitivities()
    if table is None:
        return None
    ranks = sensitivity_allocation(inputs.all_layers, inputs.layers, table, inputs.target, inputs.factors)
    return ranks, {"file": SENSITIVITY_FILE}


def _refined(inputs: AllocationInputs) -> Allocated:
    """The sensitivity allocation, then one round of `refined_choices` on trials around it: every searched layer
    alone moved to each of its `neighbours`, the others at the allocation (at most 3 trials a layer: a trial
    budget of 3 x layers). The refined ranks are measured once more and kept only if the search metric is no
    worse than at the sensitivity allocation."""
    table = inputs.sensitivities()
    if table is None:
        return None
    first = sensitivity_choices(inputs.all_layers, inputs.layers, table, inputs.target, inputs.factors)
    measured = inputs.neighbour_changes(first)
    if measured is None:
        return None
    start, trials = measured
    choices, predicted = refined_choices(inputs.all_layers, inputs.layers, first, trials, inputs.target,
                                         inputs.factors)
    ranks = choice_ranks(inputs.layers, choices, inputs.factors)
    higher = inputs.higher_is_better
    moved = sorted(name for name, choice in choices.items() if choice != first[name])
    refined = inputs.metric_at(ranks) if moved else start
    kept = "refined" if metric_change(refined, start, higher) <= 0 else "sensitivity"
    details = {"file": SENSITIVITY_FILE, "refinement_file": REFINED_FILE, "kept": kept, "moved": moved,
               "trials": sum(len(row) for row in trials.values()), "trial_budget": 3 * len(inputs.layers),
               "start_metric": start, "predicted_metric": metric_after(start, predicted, higher),
               "refined_metric": refined}
    return (ranks if kept == "refined" else choice_ranks(inputs.layers, first, inputs.factors)), details


def _algorithm1(inputs: AllocationInputs) -> Allocated:
    return inputs.algorithm1()


ALLOCATIONS: Registry[Allocation] = Registry("allocation strategy")
for _allocation in (
    Allocation("uniform", "one beta (any rank) for every searched layer, solved exactly for B", _uniform,
               color="#7f7f7f"),
    Allocation("spectrum", "greedy on the normalised spectra: keep directions with the most energy per parameter",
               _spectrum, color="#9467bd"),
    Allocation("sensitivity",
               "per-layer metric change at each grid beta, then an exact multiple-choice knapsack (HiGHS)",
               _sensitivity, color="#d62728", grid_only=True),
    Allocation("refined", "sensitivity, then the knapsack re-solved on trials of each layer's neighbouring betas "
               "around that allocation (at most 3 x layers trials)", _refined, color="#ff9896", grid_only=True),
    Allocation("alg1", "Algorithm 1 with its tolerance bisected until it reaches B, stopped when it does", _algorithm1,
               color="#2ca02c", grid_only=True),
):
    ALLOCATIONS.register(_allocation.name, _allocation)
