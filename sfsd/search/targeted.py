"""A search at a target budget: run an allocation strategy on a model and store it as a run.

The run looks like any search run (config, spectra, snapshots at step 0 and at the end, one decision
per searched layer in search order, result with ranks and the held-out check), so `materialize`, the
budget heatmap and `sfsd runs show` read it unchanged. A decision's `beta` is the layer's actual budget
rank (d_in + d_out) / (d_in d_out) (compact factors: rank (d_in + d_out - rank) / (d_in d_out)), since ranks need
not come from the 0.1 grid. The run's factor format (`SearchConfig.factors`) is how every count is made, how the
sensitivity trials and the final model store their thin layers, and is in the run's id when not the default.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from sfsd import options
from sfsd.accounting import count_parameters, measure_macs
from sfsd.adapters import LinearLayer, adapter_for
from sfsd.atomic import write_json
from sfsd.cache import cache_key, model_fingerprint
from sfsd.decompose import (
    BETA_GRID,
    DECOMPOSITION_FORMAT,
    TWO_FACTOR,
    Decomposition,
    apply_ranks,
    factor_params,
    low_rank_module,
    overall_budget,
    set_module,
)
from sfsd.decompose import rank_for_budget as grid_rank
from sfsd.errors import SfsdError
from sfsd.models import load_model, resolve_model
from sfsd.offload import like_tensor
from sfsd.paths import cache_dir
from sfsd.runs import Run
from sfsd.search.allocation import (
    ALLOCATIONS,
    REFINED_FILE,
    SENSITIVITY_FILE,
    Allocated,
    Choice,
    bisect_tolerance,
    budget_band,
    check_reachable,
    choice_key,
    choice_ranks,
    layer_budget,
    metric_change,
    neighbours,
    truncate_at_target,
)
from sfsd.search.config import SearchConfig
from sfsd.search.replay import PrefixCache
from sfsd.search.surgical import (
    SurgicalSearch,
    built_with_stream,
    decided_budget,
    run_layer_search,
    run_record,
    search_layers,
)

ALG1_BISECTIONS = options.ALG1_BISECTIONS.unset  # when the config leaves them None (declared with their flags)
ALG1_GROWTH = options.ALG1_GROWTH.unset


def run_allocation(config: SearchConfig, root: Path | None = None, device: str | None = None,
                   progress: bool = True) -> Run:
    """Run (or resume, or return a finished) target-budget search. A budget the strategy cannot reach is
    refused before the run folder is created."""
    model, tokenizer = load_model(config.model, device, config.dtype)
    layers = search_layers(model, config)
    check_reachable(config.strategy, config.target_budget, adapter_for(model).layers(), layers, config.factors)
    run = Run.create(run_record(config, layers), root)
    if run.status()["state"] == "done":
        return run
    with run.lock():
        run.mark_running()
        AllocationSearch(config, run, model, tokenizer, progress, root, device).run()
    return run


class AllocationSearch(SurgicalSearch):
    """Allocate ranks for `config.target_budget` with `config.strategy`, apply them, measure, store."""

    def __init__(self, config: SearchConfig, run: Run, model: Any, tokenizer: Any, progress: bool = True,
                 root: Path | None = None, device: str | None = None):
        super().__init__(config, run, model, tokenizer, progress)
        self.root, self.device_name = root, device

    def run(self) -> dict:
        run, target = self.run_store, self.config.target_budget
        decs, base_value, base_params, heldout_base = self.prepare()
        run.write_status(base_metric=base_value, base_params=base_params, layers_total=len(self.layers),
                         layers_done=len(run.decisions()))
        start = time.perf_counter()
        allocated = self.allocate(decs, base_value)
        if allocated is None:
            run.mark_cancelled(layers_done=len(run.decisions()))
            return {"state": "cancelled"}
        ranks, details = allocated
        seconds = time.perf_counter() - start
        budget = overall_budget(self.all_layers, ranks, self.config.factors)
        low, high = budget_band(target)
        if not low <= budget <= high:  # only when single rank steps are large against the whole model
            raise SfsdError(f"{self.config.strategy} ends at budget {budget:.4f}, outside [{low:.4f}, {high:.4f}]: "
                            "the layers are too coarse for this target; choose another --target-budget")
        if self.config.calibration_stream == options.OPEN_LOOP:
            self.apply(decs, ranks)
        else:  # the final model is built with its stream: the open-loop one is let go first (one model in memory)
            self.ranks, self.model = dict(ranks), None
            self.model, self.tokenizer = built_with_stream(self.config, self.ranks, self.device_name, self.progress)
            self.adapter = adapter_for(self.model)
        self.write_decisions(ranks)
        value = self.evaluate(0)
        self.snapshot(len(self.layers), value)
        result = {"ranks": self.ranks, "overall_budget": budget, "target_budget": target,
                  "strategy": self.config.strategy, "factors": self.config.factors,
                  "calibration_stream": self.config.calibration_stream,
                  "allocation_seconds": seconds, "allocation": details,
                  "params": count_parameters(self.model), "macs": measure_macs(self.model, 128), "macs_seq_len": 128,
                  "base_params": base_params, "base_metric": base_value,
                  "final_metric": value, "trials": self.trials,
                  "heldout": {"metric": self.config.metric.name, "higher_is_better": self.metric.higher_is_better,
                              "base": heldout_base, "final": self.heldout(base=False)}}
        run.mark_done(result, layers_done=len(self.layers))
        return result

    # ---- the strategies --------------------------------------------------------------------------------

    def allocate(self, decs: dict[str, Decomposition], base_value: float) -> Allocated:
        """(ranks of the searched layers that are factorised, details for the result); None if cancelled."""
        return ALLOCATIONS[self.config.strategy].allocate(RunInputs(self, decs, base_value))

    def sensitivity_path(self) -> Path:
        """The table's place in the cache: one per model weights, method, calibration, metric, layers and factor
        format (a grid beta is another rank in compact factors; the format is in the key only when not the
        default, so the tables measured before it existed are still found)."""
        metric = {k: v for k, v in asdict(self.config.metric).items() if k not in ("tolerance", "compounding")}
        factors = {} if self.config.factors == TWO_FACTOR else {"factors": self.config.factors}
        key = cache_key("sensitivity", DECOMPOSITION_FORMAT, model=resolve_model(self.config.model),
                        weights=model_fingerprint(self.model), method=self.config.method,
                        calibration=asdict(self.config.calibration), metric=metric,
                        layers=[layer.name for layer in self.layers], grid=list(BETA_GRID), **factors)
        return cache_dir() / "sensitivity" / f"{self.config.method}-{self.config.metric.name}-{key}.json"

    def sensitivities(self, decs: dict[str, Decomposition], base_value: float) -> dict | None:
        """Metric change with only one layer compressed, for every layer and grid beta (ppl: relative
        increase; accuracy: drop). Saved after each layer, so a killed pass continues; None if cancelled."""
        path = self.sensitivity_path()
        stored = json.loads(path.read_text()) if path.exists() else {}
        table: dict[str, dict[str, float]] = stored.get("table", {})
        todo = [layer for layer in self.layers if layer.name not in table]
        if todo and self.config.engine == "fast":
            self.prefix = PrefixCache(self.run_store.path / "prefix", self.metric.batches)
            self.prefix.build(self.model, self.adapter)
        for layer in tqdm(todo, desc="sensitivity", unit="layer", disable=not self.progress):
            if self.run_store.cancel_requested():
                return None
            table[layer.name] = self.layer_sensitivity(layer, decs[layer.name], base_value)
            write_json(path, {"base_metric": base_value, "metric": self.config.metric.name,
                              "higher_is_better": self.metric.higher_is_better, "table": table})
            self.run_store.write_status(trials_done=self.trials, current_layer=layer.name)
        shutil.rmtree(self.run_store.path / "prefix", ignore_errors=True)
        write_json(self.run_store.file(SENSITIVITY_FILE), json.loads(path.read_text()))
        return table

    def layer_sensitivity(self, layer: LinearLayer, dec: Decomposition, base_value: float) -> dict[str, float]:
        return self.layer_changes(layer, dec, BETA_GRID, base_value, self.model.get_submodule(layer.name))

    def layer_changes(self, layer: LinearLayer, dec: Decomposition, choices: Sequence[Choice], reference: float,
                      original: nn.Module) -> dict[str, float]:
        """The metric change against `reference` (`metric_change`) with this layer alone at each choice (a grid
        beta, or None: the intact `original`), every other layer as it stands; the layer is then put back."""
        current = self.model.get_submodule(layer.name)
        like = like_tensor(original)  # an offloaded layer's replacement lives on its execution device
        changes = {}
        try:
            for choice in choices:
                module = original if choice is None else low_rank_module(
                    dec, grid_rank(choice, layer.d_in, layer.d_out, self.config.factors), like, self.config.factors)
                set_module(self.model, layer.name, module)
                value = self.evaluate(layer.block)
                self.trials += 1
                changes[choice_key(choice)] = metric_change(value, reference, self.metric.higher_is_better)
        finally:
            set_module(self.model, layer.name, current)
        return changes

    def refinement_path(self, first: Mapping[str, Choice]) -> Path:
        """The refinement's trial table in the cache, beside the sensitivity table: keyed by that table's key and
        the first allocation, so that another first allocation never reuses it."""
        sensitivity = self.sensitivity_path()
        key = cache_key("refinement", DECOMPOSITION_FORMAT, sensitivity=sensitivity.stem,
                        first={name: choice_key(choice) for name, choice in first.items()})
        return sensitivity.parent / f"{self.config.method}-{self.config.metric.name}-refined-{key}.json"

    def neighbour_changes(self, decs: dict[str, Decomposition],
                          first: Mapping[str, Choice]) -> tuple[float, dict[str, dict[str, float]]] | None:
        """The metric with every searched layer at its choice in `first`, and the change when one layer alone
        moves to each of its `neighbours` (at most 3 trials a layer). Saved after each layer, so a killed pass
        continues; the model is put back intact; None if cancelled."""
        path = self.refinement_path(first)  # before any layer changes: the key holds the weights' fingerprint
        stored = json.loads(path.read_text()) if path.exists() else {}
        table: dict[str, dict[str, float]] = stored.get("table", {})
        originals = apply_ranks(self.model, decs, choice_ranks(self.layers, first, self.config.factors),
                                self.config.factors)
        try:
            start = stored["start_metric"] if "start_metric" in stored else self.evaluate(0)
            todo = [layer for layer in self.layers if layer.name not in table]
            self.prepare_prefix(todo, "refine-prefix")
            budget = 3 * len(self.layers)
            for layer in tqdm(todo, desc=f"refine (<= {budget} trials)", unit="layer", disable=not self.progress):
                if self.run_store.cancel_requested():
                    return None
                original = originals.get(layer.name, self.model.get_submodule(layer.name))
                table[layer.name] = self.layer_changes(layer, decs[layer.name], neighbours(first[layer.name]), start,
                                                       original)
                write_json(path, self.refinement_record(first, start, table))
                self.run_store.write_status(trials_done=self.trials, current_layer=layer.name,
                                            message=f"refined: {sum(map(len, table.values()))} of at most {budget} "
                                                    "trials around the sensitivity allocation")
        finally:
            for name, module in originals.items():
                set_module(self.model, name, module)
            shutil.rmtree(self.run_store.path / "refine-prefix", ignore_errors=True)
        write_json(self.run_store.file(REFINED_FILE), self.refinement_record(first, start, table))
        return start, table

    def refinement_record(self, first: Mapping[str, Choice], start: float, table: dict) -> dict:
        return {"start_metric": start, "metric": self.config.metric.name,
                "higher_is_better": self.metric.higher_is_better,
                "first": {name: choice_key(choice) for name, choice in first.items()}, "table": table}

    def prepare_prefix(self, todo: list[LinearLayer], folder: str) -> None:
        """With the fast engine and trials to run: the hidden states entering every block of the model as it
        stands (built afresh: the blocks below a trial's layer stay as they are during the trials)."""
        if todo and self.config.engine == "fast":
            shutil.rmtree(self.run_store.path / folder, ignore_errors=True)
            self.prefix = PrefixCache(self.run_store.path / folder, self.metric.batches)
            self.prefix.build(self.model, self.adapter)

    def metric_at(self, decs: dict[str, Decomposition], ranks: Mapping[str, int]) -> float:
        """The search metric (a full pass) with `ranks` applied; the layers are put back afterwards."""
        originals = apply_ranks(self.model, decs, ranks, self.config.factors)
        try:
            return self.evaluate(0)
        finally:
            for name, module in originals.items():
                set_module(self.model, name, module)

    def algorithm1(self) -> tuple[dict, dict]:
        """Algorithm 1 runs (each a stored search run, reused by any later target that tries the same
        tolerance) with the tolerance doubled until the search reaches B, then bisected; the smallest
        tolerance that reaches B is stopped at B (`truncate_at_target`)."""
        target, tried = self.config.target_budget, []
        higher = self.metric.higher_is_better
        step, cap = (0.01, 1.0) if higher else (0.05, 1000.0)

        def budget_at(tolerance: float) -> tuple[float, Run]:
            metric = replace(self.config.metric, tolerance=round(tolerance, 6))
            inner = replace(self.config, strategy="linear", target_budget=None, metric=metric, alg1_bisections=None,
                            alg1_growth=None)
            # A run that reaches B stops there: its later decisions cannot change where B is first reached.
            run = run_layer_search(inner, self.root, self.device_name, progress=False, stop_at_budget=target)
            result = run.result()
            budget = decided_budget(run, self.all_layers) if result is None else result["overall_budget"]
            if result is None and budget > target:
                raise SfsdError(f"Algorithm 1 run {run.id} did not finish: resume it, then this search")
            tried.append({"tolerance": metric.tolerance, "overall_budget": budget, "run_id": run.id,
                          "finished": result is not None})
            self.run_store.write_status(message=f"alg1: tolerance {metric.tolerance} -> {budget:.4f}")
            return budget, run

        halvings = ALG1_BISECTIONS if self.config.alg1_bisections is None else self.config.alg1_bisections
        growth = ALG1_GROWTH if self.config.alg1_growth is None else self.config.alg1_growth
        high, best = bisect_tolerance(budget_at, target, step, cap, halvings, growth)
        ranks, stopped = truncate_at_target(self.all_layers, best.decisions(), target)
        runs = {t["run_id"] for t in tried}
        trials = sum(len(Run.open(run_id, self.root).trials()) for run_id in runs)
        return ranks, {"tolerance": round(high, 6), "run_id": best.id, "stopped_at": stopped, "tolerances": tried,
                       "trials_in_runs": trials, "trials_reused": "each tolerance is a stored search run, reused by id"}

    # ---- storing ---------------------------------------------------------------------------------------

    def apply(self, decs: dict[str, Decomposition], ranks: dict[str, int]) -> None:
        apply_ranks(self.model, decs, ranks, self.config.factors)
        self.ranks = dict(ranks)

    def write_decisions(self, ranks: dict[str, int]) -> None:
        """One decision per searched layer, in search order; a resumed run checks and completes them."""
        written, factors = self.run_store.decisions(), self.config.factors
        for index, layer in enumerate(self.layers):
            rank = ranks.get(layer.name)
            if index < len(written):
                if (written[index]["layer"], written[index]["rank"]) != (layer.name, rank):
                    raise SfsdError(f"the trace of run {self.run_store.id} does not match this allocation: delete "
                                    f"the run with `sfsd runs delete {self.run_store.id}`")
                continue
            self.run_store.append_trace({
                "kind": "decision", "index": index, **self._layer_fields(layer),
                "beta": layer_budget(rank, layer, factors), "rank": rank,
                "params_kept": layer.params if rank is None else factor_params(rank, layer.d_in, layer.d_out, factors),
                "params_full": layer.params, "value": None,
            })


@dataclass
class RunInputs:
    """The `AllocationInputs` of one run: its layers and target, and its measurements when asked for."""

    search: AllocationSearch
    decs: dict[str, Decomposition]
    base_value: float

    @property
    def all_layers(self) -> list[LinearLayer]:
        return self.search.all_layers

    @property
    def layers(self) -> list[LinearLayer]:
        return self.search.layers

    @property
    def target(self) -> float:
        return self.search.config.target_budget

    @property
    def factors(self) -> str:
        return self.search.config.factors

    def spectra(self) -> dict[str, list[float]]:
        return {name: dec.spectrum.double().cpu().tolist() for name, dec in self.decs.items()}

    @property
    def higher_is_better(self) -> bool:
        return self.search.metric.higher_is_better

    def sensitivities(self) -> dict | None:
        return self.search.sensitivities(self.decs, self.base_value)

    def neighbour_changes(self, first: Mapping[str, Choice]) -> tuple[float, dict] | None:
        return self.search.neighbour_changes(self.decs, first)

    def metric_at(self, ranks: Mapping[str, int]) -> float:
        return self.search.metric_at(self.decs, ranks)

    def algorithm1(self) -> tuple[dict, dict]:
        return self.search.algorithm1()
