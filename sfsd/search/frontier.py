"""The budget-quality frontier: one target-budget run per (strategy, budget), each final model evaluated
on the eval split, and the base model as a `uniform` run of method "none". The base config's factor format
(`--factors compact`) goes to every point: its runs (other ids) are lines of their own, "<strategy> compact".

Every point is a run, so a killed frontier started again continues where it stopped: finished runs are
reused (and said so), interrupted ones resume, evaluations already stored are not repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from sfsd import options
from sfsd.accounting import count_parameters, measure_macs
from sfsd.decompose import TWO_FACTOR
from sfsd.errors import SfsdError
from sfsd.evaluate.intervals import format_ppl
from sfsd.evaluate.keys import compressed_model_key
from sfsd.runs import Run, run_id_for
from sfsd.search.config import SearchConfig
from sfsd.search.entry import run_search
from sfsd.search.surgical import model_at_step
from sfsd.search.uniform import UniformConfig, run_uniform

MACS_SEQ_LEN = 128  # MACs of one forward pass over this many tokens, as the uniform runs record them


@dataclass(kw_only=True)
class FrontierConfig:
    """What `sfsd frontier` runs beside its base search config: the points and how each is evaluated."""

    strategies: list[str] = options.STRATEGIES.field()
    budgets: list[float] = options.BUDGETS.field()
    baselines: list[str] = options.BASELINES.field()
    ppl_seq_lens: list[int] = options.PPL_SEQ_LENS.field([128, 2048])  # the paper's length and the field's
    ppl_tokens: int | None = options.PPL_TOKENS.field()
    tasks: list[str] = options.TASKS.field()
    limit: int | None = options.LIMIT.field()
    alg1_bisections: int | None = options.ALG1_BISECTIONS.field()
    alg1_growth: float | None = options.ALG1_GROWTH.field()


def frontier_configs(base: SearchConfig, strategies: Sequence[str], budgets: Sequence[float],
                     alg1_bisections: int | None = None, alg1_growth: float | None = None) -> list[SearchConfig]:
    """One config per point; every request is checked before any run starts."""
    if not strategies or not budgets:
        raise SfsdError("a frontier needs at least one strategy and one budget: e.g. --strategies spectrum "
                        "--budgets 0.9,0.8")
    return [replace(base, strategy=strategy, target_budget=budget,
                    alg1_bisections=alg1_bisections if strategy == "alg1" else None,
                    alg1_growth=alg1_growth if strategy == "alg1" else None)
            for strategy in strategies for budget in budgets]


def run_frontier(base: SearchConfig, strategies: Sequence[str], budgets: Sequence[float],
                 seq_lens: Sequence[int] = (128, 2048), ppl_tokens: int | None = options.PPL_TOKENS.default,
                 tasks: Sequence[str] = (), limit: int | None = options.LIMIT.default, root: Path | None = None,
                 device: str | None = None, progress: bool = True, say: Callable[[str], None] = print,
                 alg1_bisections: int | None = None, alg1_growth: float | None = None,
                 baselines: Sequence[str] = ()) -> list[Run]:
    """Run (or reuse) every point and the base model, evaluate them; the runs in request order (the
    baselines' uniform runs last)."""
    configs = frontier_configs(base, strategies, budgets, alg1_bisections, alg1_growth)
    evaluation = dict(calibration=base.calibration, tasks=list(tasks), limit=limit, ppl_seq_lens=list(seq_lens),
                      ppl_tokens=ppl_tokens)
    blocks = _num_blocks(base.model) if baselines else 0
    baseline_configs = [UniformConfig(model=base.model, method=method, beta=budget, last_blocks=blocks, **evaluation)
                        for method in baselines for budget in budgets]  # checked before anything runs
    base_run = run_uniform(UniformConfig(model=base.model, method="none", beta=1.0, last_blocks=0, **evaluation),
                           root, device, progress)
    say(f"base model: run {base_run.id}")
    runs = []
    for config in configs:
        point = f"{strategy_label(config.strategy, config.factors)} @ {config.target_budget}"
        run_id = run_id_for(config.to_dict())
        folder = (Path(root) if root is not None else None)
        try:
            existing = Run.open(run_id, folder).status()["state"]
        except SfsdError:
            existing = None
        if existing == "done":
            say(f"{point}: reusing run {run_id}")
        elif existing is not None:
            say(f"{point}: resuming run {run_id} ({existing})")
        else:
            say(f"{point}: new run {run_id}")
        run = run_search(config, root, device, progress)
        evaluate_point(run, seq_lens, ppl_tokens, tasks, limit, device, progress)
        result = run.result()
        say(f"{point}: overall budget {result['overall_budget']:.4f}, {ppl_line(run)}")
        runs.append(run)
    for config in baseline_configs:
        run = run_uniform(config, root, device, progress)
        result = run.result()
        say(f"{config.method} @ {config.beta}: run {run.id}, parameter-equivalent budget "
            f"{result['overall_budget']:.4f}, {ppl_line(run)}")
        runs.append(run)
    return runs


def ppl_line(run: Run) -> str:
    """A run's eval perplexities for a progress line: 'ppl@128 57.93 [55.12, 61.04] (128 windows), ...' (the
    95% bootstrap interval over windows; none for evaluations recorded before it was kept)."""
    return ", ".join(f"ppl@{m['seq_len']} {format_ppl(m['ppl'], m.get('ppl_low'), m.get('ppl_high'))}"
                     + (f" ({m['n_windows']} windows)" if m.get("n_windows") else "")
                     for m in (e["metrics"] for e in run.read_evaluations() if e.get("kind") == "ppl"))


def strategy_label(strategy: str, factors: str = TWO_FACTOR) -> str:
    """A point's strategy as its line is named: compact factors make a line of their own ("spectrum compact")."""
    return strategy if factors == TWO_FACTOR else f"{strategy} {factors}"


def _num_blocks(model: str) -> int:
    """The model's number of decoder blocks, from its config alone."""
    from transformers import AutoConfig

    from sfsd.models import resolve_model

    return int(AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers)


def evaluate_point(run: Run, seq_lens: Sequence[int], ppl_tokens: int | None, tasks: Sequence[str],
                   limit: int | None, device: str | None = None, progress: bool = True) -> None:
    """Eval-split perplexity (and tasks) of a finished run's final model, each stored once in the run."""
    from sfsd.evaluate import evaluate_tasks, perplexity
    from sfsd.evaluate.perplexity import run_metrics

    done = {(e.get("kind"), e.get("task"), e.get("limit"), (e.get("metrics") or {}).get("seq_len"))
            for e in run.read_evaluations() if e.get("split") == "eval"}
    todo_ppl = [n for n in seq_lens if ("ppl", "wiki", ppl_tokens, n) not in done]
    todo_tasks = [t for t in tasks if ("task", t, limit, None) not in done]
    if not todo_ppl and not todo_tasks:
        return
    step = len(run.decisions())
    model, tokenizer, ranks = model_at_step(run, step, device)
    key, params = compressed_model_key(run.config, ranks), count_parameters(model)
    macs = measure_macs(model, MACS_SEQ_LEN)  # the Frontier page's other x axis
    for seq_len in todo_ppl:
        res = perplexity(model, tokenizer, split="eval", seq_len=seq_len, max_tokens=ppl_tokens, model_key=key,
                         progress=progress)
        run.append_evaluation({"kind": "ppl", "task": "wiki", "split": "eval", "limit": ppl_tokens, "step": step,
                               "params": params, "macs": macs, "macs_seq_len": MACS_SEQ_LEN,
                               "metrics": run_metrics(res)})
    for task in todo_tasks:
        row = evaluate_tasks(model, tokenizer, [task], split="eval", limit=limit, model_key=key).summary.iloc[0]
        run.append_evaluation({"kind": "task", "task": task, "split": "eval", "limit": limit, "step": step,
                               "params": params, "lm_eval_version": row["lm_eval_version"],
                               "metrics": {"acc": row["acc"], "acc_norm": row["acc_norm"], "n": int(row["n"])}})
