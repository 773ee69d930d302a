"""The surgical rank search (the paper's Algorithm 1), resumable, written to the run store as it goes."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from sfsd.accounting import count_parameters
from sfsd.adapters import LinearLayer, adapter_for
from sfsd.cache import model_fingerprint, versions
from sfsd.compress import Compressor, decomposition_folder
from sfsd.data.sequences import starts_with_bos
from sfsd.decompose import (
    BETA_GRID,
    TWO_FACTOR,
    Decomposition,
    apply_ranks,
    low_rank_module,
    overall_budget,
    rank_for_budget,
    set_module,
)
from sfsd.errors import SfsdError
from sfsd.evaluate.keys import compressed_model_key
from sfsd.hf_classes import mark_compressed
from sfsd.models import check_placement, load_model
from sfsd.offload import input_device, like_tensor, onloaded
from sfsd.options import OPEN_LOOP
from sfsd.runs import Run, decided_ranks
from sfsd.search.config import SearchConfig
from sfsd.search.heldout import heldout_value
from sfsd.search.metrics import METRICS, SearchMetric
from sfsd.search.replay import PrefixCache, replaying
from sfsd.search.strategies import STRATEGIES


def search_layers(model: nn.Module, config: SearchConfig) -> list[LinearLayer]:
    """The layers the search decides, in search order: last block first, down .. q within a block."""
    adapter = adapter_for(model)
    if config.first_block >= adapter.num_blocks:
        raise SfsdError(f"--first-block {config.first_block} is past the model's {adapter.num_blocks} blocks")
    if config.roles:
        unknown = sorted(set(config.roles) - set(adapter.role_names()))
        if unknown:
            raise SfsdError(f"unknown role {unknown[0]!r}: this model has {', '.join(adapter.role_names())}")
    forward = adapter.layers(list(range(config.first_block, adapter.num_blocks)), config.roles)
    return list(reversed(forward))




def create_run(config: SearchConfig, root: Path | None = None, device: str | None = None):
    """Load the model, list the layers and create (or find) the run of `config`: (run, model, tokenizer)."""
    model, tokenizer = load_model(config.model, device, config.dtype)
    return Run.create(run_record(config, search_layers(model, config)), root), model, tokenizer


def run_record(config: SearchConfig, layers: list[LinearLayer]) -> dict:
    """The stored config of a search run: the request, library versions and the searched layers."""
    return {**config.to_dict(), "versions": versions(),
            "layers": [{"name": l.name, "block": l.block, "role": l.role, "d_in": l.d_in, "d_out": l.d_out}
                       for l in layers]}  # noqa: E741


def cached_decompositions(model: nn.Module, tokenizer: Any, config: SearchConfig, layers: list[LinearLayer],
                          progress: bool = True) -> dict[str, Decomposition]:
    """Full factorisations of the searched layers, computed once per (weights, method, calibration, layers).

    The folder is `compress`'s (`decomposition_folder`): its key holds a fingerprint of the weights (not
    only the model's name: a re-downloaded or fine-tuned checkpoint in the same folder must not reuse stale
    factors) and the decomposition format version, which changes whenever the maths or the stored fields do.
    """
    names = [layer.name for layer in layers]
    weights = model_fingerprint(model)  # once: the statistics cache's key needs it too
    folder = decomposition_folder(model, config.method, config.calibration, names, weights, starts_with_bos(tokenizer))
    # Streamed block by block; blocks already in the folder (checksum verified) are reused.
    return Compressor(model, tokenizer, config.method, config.calibration, layer_names=names, progress=progress,
                      folder=folder, weights=weights).decompose()


class SurgicalSearch:
    """One search over a loaded model; `run()` continues from whatever the run store already holds."""

    def __init__(self, config: SearchConfig, run: Run, model: nn.Module, tokenizer: Any, progress: bool = True,
                 stop_at_budget: float | None = None):
        self.config, self.run_store, self.model, self.tokenizer = config, run, model, tokenizer
        self.progress, self.stop_at_budget = progress, stop_at_budget
        self.adapter = adapter_for(model)
        self.layers = search_layers(model, config)
        self.all_layers = self.adapter.layers()
        self.device = input_device(model)  # a dispatched model's first weights may be on disk
        self.metric: SearchMetric = METRICS[config.metric.name](config.metric, tokenizer, model)
        # a target-budget run names an allocation (sfsd.search.allocation), not a per-layer walk
        self.strategy = None if config.target_budget is not None else STRATEGIES[config.strategy]
        self.ranks: dict[str, int] = {}
        self.trials = 0

    def reached_stop(self) -> bool:
        """Whether the budget is at `stop_at_budget` or below: Algorithm 1 decides the layers in order and
        never revisits one, so the decisions so far are exactly those of the finished run's prefix."""
        return self.stop_at_budget is not None and overall_budget(self.all_layers, self.ranks) <= self.stop_at_budget

    # ---- set-up ------------------------------------------------------------------------------------------

    def write_spectra(self, decs: dict[str, Decomposition]) -> None:
        """Each layer's spectrum under the search's method, and the squared singular values of W."""
        rows = []
        for layer in self.layers:
            module = self.model.get_submodule(layer.name)
            spectra = {self.config.method: decs[layer.name].spectrum}
            if self.config.method != "weight":
                with onloaded(module):  # an offloaded layer's weight is real only inside this
                    weight, _ = self.adapter.weight_and_bias(module)
                    spectra["weight"] = torch.linalg.svdvals(weight.double()).square()
            for kind, values in spectra.items():
                for index, value in enumerate(values.double().cpu().tolist()):
                    rows.append((layer.name, layer.block, layer.role, kind, index, value))
        frame = pd.DataFrame(rows, columns=["layer", "block", "role", "kind", "index", "value"])
        self.run_store.write_spectra(frame)

    # ---- evaluation --------------------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, block: int) -> float:
        """The metric of the current model; with the fast engine, only blocks >= `block` run."""
        statistics = []
        if self.config.engine == "reference" or block == 0:
            for i, batch in enumerate(self.metric.batches):
                logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
                statistics.append(self.metric.batch_statistic(i, logits))
            return self.metric.reduce(statistics)
        states = self.prefix.states_for(block)
        with replaying(self.adapter, block) as stand_in:
            for i, batch in enumerate(self.metric.batches):
                stand_in.replay = states[i].to(self.device)
                logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
                statistics.append(self.metric.batch_statistic(i, logits))
        return self.metric.reduce(statistics)

    # ---- the search --------------------------------------------------------------------------------------

    def decide(self, layer: LinearLayer, dec: Decomposition, threshold: float) -> tuple[int | None, float | None]:
        """Try betas on one layer (the chosen strategy); leave it at the chosen rank or intact."""
        original = self.model.get_submodule(layer.name)
        like = like_tensor(original)  # an offloaded layer's replacement lives on its execution device
        values: dict[int, float] = {}

        def trial(index: int) -> bool:
            beta = BETA_GRID[index]
            rank = rank_for_budget(beta, layer.d_in, layer.d_out)
            start = time.perf_counter()
            set_module(self.model, layer.name, low_rank_module(dec, rank, like))
            value = values[index] = self.evaluate(layer.block)
            passed = self.metric.passes(value, threshold)
            self.trials += 1
            self.run_store.append_trace({
                "kind": "trial", **self._layer_fields(layer), "beta": beta, "rank": rank, "value": value,
                "threshold": threshold, "passed": passed, "seconds": time.perf_counter() - start,
            })
            return passed

        chosen = self.strategy(trial, BETA_GRID)
        if chosen is None:
            set_module(self.model, layer.name, original)
            return None, None
        rank = rank_for_budget(BETA_GRID[chosen], layer.d_in, layer.d_out)
        set_module(self.model, layer.name, low_rank_module(dec, rank, like))
        return chosen, values[chosen]

    @staticmethod
    def _layer_fields(layer: LinearLayer) -> dict:
        return {"layer": layer.name, "block": layer.block, "role": layer.role, "d_in": layer.d_in,
                "d_out": layer.d_out}

    def _replay_decisions(self, decs: dict[str, Decomposition], decided: list[dict]) -> float | None:
        """Re-apply the decisions of an earlier, interrupted process."""
        expected = [l.name for l in self.layers[: len(decided)]]  # noqa: E741
        if [d["layer"] for d in decided] != expected:
            raise SfsdError(f"the trace of run {self.run_store.id} does not match this search: delete the run "
                            f"with `sfsd runs delete {self.run_store.id}`")
        self.ranks = decided_ranks(decided)
        apply_ranks(self.model, decs, self.ranks, self.config.factors)
        return decided[-1]["value"] if decided else None

    def heldout(self, base: bool) -> dict:
        """The metric on the eval split (the held-out check); the base model's is cached by its weights."""
        key = None if base else compressed_model_key(self.run_store.config, self.ranks)
        return heldout_value(self.model, self.tokenizer, asdict(self.config.metric), model_key=key,
                             progress=self.progress)

    def snapshot_evals(self, base: bool = False) -> dict:
        """The snapshot tasks' accuracies of the model as it stands ({} without `snapshot_tasks`); the base
        model's are cached by its weights, as its held-out value is."""
        if not self.config.snapshot_tasks:
            return {}
        from sfsd.evaluate import evaluate_tasks

        key = None if base else compressed_model_key(self.run_store.config, self.ranks)
        summary = evaluate_tasks(self.model, self.tokenizer, self.config.snapshot_tasks, split="eval",
                                 limit=self.config.snapshot_limit, model_key=key).summary
        return {row.task: {"acc": row.acc, "acc_norm": row.acc_norm, "n": int(row.n)} for row in summary.itertuples()}

    def snapshot(self, step: int, value: float) -> None:
        self.run_store.append_snapshot({"step": step, "params": count_parameters(self.model),
                                        "budget": overall_budget(self.all_layers, self.ranks, self.config.factors),
                                        "metric": value, "evals": self.snapshot_evals()})

    def prepare(self) -> tuple[dict[str, Decomposition], float, int, dict]:
        """Decompositions, spectra, the base model's metric (step-0 snapshot), parameters and held-out value;
        what every search needs before its first decision (each part is reused when resuming)."""
        run = self.run_store
        decs = cached_decompositions(self.model, self.tokenizer, self.config, self.layers, self.progress)
        if not run.file("spectra.parquet").exists():
            self.write_spectra(decs)
        base_value = run.stored_status().get("base_metric")
        if base_value is None:
            base_value = self.evaluate(0)
            if not run.read_snapshots():  # every accuracy curve starts at the base model, on the same documents
                run.append_snapshot({"step": 0, "params": count_parameters(self.model), "budget": 1.0,
                                     "metric": base_value, "evals": self.snapshot_evals(base=True)})
        return decs, base_value, count_parameters(self.model), self.heldout(base=True)

    def run(self) -> dict:
        run = self.run_store
        decs, base_value, base_params, heldout_base = self.prepare()
        if self.config.engine == "fast":
            self.prefix = PrefixCache(run.path / "prefix", self.metric.batches)
            self.prefix.build(self.model, self.adapter)
        decided = run.decisions()
        current = self._replay_decisions(decs, decided) or base_value
        run.write_status(base_metric=base_value, base_params=base_params, layers_total=len(self.layers),
                         layers_done=len(decided))
        todo = self.layers[len(decided):]
        started, done_here = time.perf_counter(), 0
        bar = tqdm(todo, desc="search", unit="layer", disable=not self.progress, initial=len(decided),
                   total=len(self.layers))
        for layer in bar:
            if run.cancel_requested():
                run.mark_cancelled(layers_done=len(decided) + done_here)
                return {"state": "cancelled"}
            bar.set_postfix_str(f"{layer.name.split('.', 1)[-1]} trials={self.trials}")
            threshold = self.metric.threshold(base_value, current)
            chosen, value = self.decide(layer, decs[layer.name], threshold)
            if chosen is not None:
                self.ranks[layer.name] = rank_for_budget(BETA_GRID[chosen], layer.d_in, layer.d_out)
                current = value
            done_here += 1
            index = len(decided) + done_here
            rank = self.ranks.get(layer.name)
            run.append_trace({
                "kind": "decision", "index": index - 1, **self._layer_fields(layer),
                "beta": None if chosen is None else BETA_GRID[chosen], "rank": rank,
                "params_kept": layer.params if rank is None else rank * (layer.d_in + layer.d_out),
                "params_full": layer.params, "value": current,
            })
            eta = (time.perf_counter() - started) / done_here * (len(self.layers) - index)
            run.write_status(layers_done=index, trials_done=self.trials, eta_s=eta, current_layer=layer.name)
            if index % self.config.snapshot_every == 0 and index < len(self.layers):
                self.snapshot(index, current)
            if self.reached_stop() and index < len(self.layers):
                budget = overall_budget(self.all_layers, self.ranks)
                run.mark_cancelled(layers_done=index, stopped_at_budget=budget, message=(
                    f"stopped at overall budget {budget:.4f} <= {self.stop_at_budget} after {index} layers "
                    "(these decisions are final): resume with the same command to finish"))
                return {"state": "cancelled", "overall_budget": budget}
        self.snapshot(len(self.layers), current)
        result = {"ranks": self.ranks, "overall_budget": overall_budget(self.all_layers, self.ranks),
                  "params": count_parameters(self.model), "base_params": base_params, "base_metric": base_value,
                  "final_metric": current, "trials": len(run.read_trace()) - len(self.layers),
                  "heldout": {"metric": self.config.metric.name, "higher_is_better": self.metric.higher_is_better,
                              "base": heldout_base, "final": self.heldout(base=False)}}
        shutil.rmtree(run.path / "prefix", ignore_errors=True)
        run.mark_done(result, layers_done=len(self.layers))
        return result


def check_search_request(config: SearchConfig, device: str | None) -> None:
    """SfsdError (one line) for a search that cannot run, before any model is loaded."""
    from sfsd.compress import check_compress_request

    check_compress_request(config.method, None, config.calibration)  # e.g. a hub source offline, before loading
    check_placement(device)
    if config.metric.suite == "paper":
        from sfsd.data.hub import require_hub_split
        from sfsd.data.paper_tasks import PAPER_TRAIN

        require_hub_split(PAPER_TRAIN[config.metric.task], f"search on --suite paper {config.metric.task}",
                          "use --suite offline, the pack's search split")


def run_layer_search(config: SearchConfig, root: Path | None = None, device: str | None = None,
                     progress: bool = True, stop_at_budget: float | None = None) -> Run:
    """Run (or resume, or simply return a finished) Algorithm 1 search of a checked request
    (`check_search_request`); the run's id is derived from `config`.

    `stop_at_budget` stops a search (state cancelled, resumable) once its overall budget is at or below
    it; a run already there is returned as it is. It is not part of the run's id: the decisions do not
    depend on it."""
    run, model, tokenizer = create_run(config, root, device)
    if run.status()["state"] == "done" or budget_reached(run, adapter_for(model).layers(), stop_at_budget):
        return run
    with run.lock():
        run.mark_running()
        SurgicalSearch(config, run, model, tokenizer, progress, stop_at_budget).run()
    return run


def decided_budget(run: Run, all_layers: list[LinearLayer]) -> float:
    """The overall budget (App. B, over `all_layers`, the model's layers) of a run's decisions so far."""
    return overall_budget(all_layers, decided_ranks(run.decisions()))


def budget_reached(run: Run, all_layers: list[LinearLayer], stop_at_budget: float | None) -> bool:
    return stop_at_budget is not None and decided_budget(run, all_layers) <= stop_at_budget


def materialize(run: Run, out: str | Path, device: str | None = None, overwrite: bool = False) -> Path:
    """Build the run's final compressed model and save it in the engine's Hugging Face format."""
    from sfsd.compress import low_rank_specs, save_compressed

    result = run.result()
    if result is None:
        raise SfsdError(f"run {run.id} has not finished: resume it first (`sfsd search` with the same flags)")
    model, tokenizer, ranks = model_at_step(run, len(run.decisions()), device)
    mark_compressed(model, run.config["method"], low_rank_specs(model, ranks),
                    {"protocol": "search", "run_id": run.id, "overall_budget": result["overall_budget"],
                     # what the model was fitted to, so that evaluation can refuse leaks (sfsd.data.leakage)
                     "calibration": run.config.get("calibration"), "search": run.config.get("metric")},
                    run.config.get("factors", TWO_FACTOR))
    return save_compressed(model, tokenizer, out, overwrite=overwrite)


def model_at_step(run: Run, step: int, device: str | None = None) -> tuple[nn.Module, Any, dict[str, int]]:
    """The partially compressed model after the first `step` decisions of a run (fully defined by the trace)."""
    decided = run.decisions()
    if not 0 <= step <= len(decided):
        raise SfsdError(f"run {run.id} has {len(decided)} decided layers: choose a step between 0 and {len(decided)}")
    config = SearchConfig.from_dict(run.config)
    ranks = decided_ranks(decided[:step])
    if config.calibration_stream != OPEN_LOOP and ranks:
        return (*built_with_stream(config, ranks, device), ranks)
    model, tokenizer = load_model(config.model, device, config.dtype)
    decs = cached_decompositions(model, tokenizer, config, search_layers(model, config))
    apply_ranks(model, decs, ranks, config.factors)
    return model, tokenizer, ranks


def built_with_stream(config: SearchConfig, ranks: dict[str, int], device: str | None = None,
                      progress: bool = False) -> tuple[nn.Module, Any]:
    """The base model compressed at `ranks` with the config's calibration stream (`sfsd.compress`): closed-loop
    and anchored statistics depend on every upstream rank, so a target-budget search allocates on open-loop
    trials and builds its final model this way (its decompositions are cached under the stream's own key)."""
    from sfsd.compress import compress

    model, tokenizer = load_model(config.model, device, config.dtype)
    compress(model, tokenizer, config.method, ranks=ranks, calibration=config.calibration, progress=progress,
             device=device if isinstance(device, str) else None, factors=config.factors,
             calibration_stream=config.calibration_stream)
    return model, tokenizer


def evaluate_steps(run: Run, steps: list[int], tasks: list[str], limit: int | None = 100,
                   device: str | None = None) -> None:
    """Evaluate snapshots after the fact (the eval split of `tasks`), cached, added to the run's evaluations."""
    from sfsd.evaluate import evaluate_tasks

    done = {(e.get("step"), e.get("task"), e.get("limit")) for e in run.read_evaluations()}
    for step in steps:
        todo = [task for task in tasks if (step, task, limit) not in done]
        if not todo:
            continue
        model, tokenizer, ranks = model_at_step(run, step, device)
        key = compressed_model_key(run.config, ranks)
        summary = evaluate_tasks(model, tokenizer, todo, split="eval", limit=limit, model_key=key).summary
        for row in summary.itertuples():
            run.append_evaluation({"kind": "task", "task": row.task, "split": "eval", "limit": limit, "step": step,
                                   "params": count_parameters(model),
                                   "metrics": {"acc": row.acc, "acc_norm": row.acc_norm, "n": int(row.n)},
                                   "lm_eval_version": row.lm_eval_version})
