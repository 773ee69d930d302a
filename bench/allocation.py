"""Rank allocation at a target budget: the Table-1 protocol (last N blocks at one beta) against the
allocation strategies (uniform, spectrum, sensitivity, alg1) at the same overall budgets, feature space,
eval-split perplexity at two sequence lengths, and the time each strategy takes to allocate.

Every point is a stored run (`sfsd.search.frontier`), so a second invocation only reads them.

    python -m bench.allocation            # full: smollm2-135m, paper calibration, budgets 0.9, 0.8, 0.6
    python -m bench.allocation --quick    # tiny random LLaMA (smoke test: numbers are not claims)
    python -m bench.allocation --strategies uniform,spectrum,sensitivity --search-samples 4   # what fits a 2-core CPU
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import (
    QUICK_NOTE,
    init,
    machine_line,
    md_table,
    parser,
    tiny_model_dir,
    use_private_cache,
    write_result,
)


def protocol_config(model: str, budget: float, num_blocks: int, calibration, seq_lens, ppl_tokens):
    """Table 1's protocol at an overall budget: the last 12 of 32 blocks (scaled) at the beta that gives B,
    or more blocks when that beta would fall below 0.1. Ranks round down, so the budget lands near B."""
    from bench.common import scaled_blocks
    from sfsd.search.uniform import UniformConfig

    for paper_blocks in (12, 24, 32):
        blocks = scaled_blocks(paper_blocks, num_blocks)
        beta = 1 - (1 - budget) * num_blocks / blocks
        if beta >= 0.1:
            return UniformConfig(model=model, method="feature", beta=round(beta, 4), last_blocks=blocks,
                                 calibration=calibration, ppl_seq_lens=list(seq_lens), ppl_tokens=ppl_tokens)
    return None


def main(argv: list[str] | None = None) -> int:
    from sfsd.search.allocation import ALLOCATIONS

    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budgets", default="0.9,0.8,0.6", help="overall budgets (default: %(default)s)")
    p.add_argument("--strategies", default=",".join(ALLOCATIONS), help="allocation strategies (default: all)")
    p.add_argument("--ppl-tokens", type=int, default=None, help="eval-split tokens for perplexity (default 16384)")
    p.add_argument("--alg1-bisections", type=int, default=None, help="alg1's tolerance bisections (default: 5)")
    p.add_argument("--alg1-growth", type=float, default=None, help="alg1's tolerance growth factor (default: 2)")
    p.add_argument("--baselines", default="slicegpt",
                   help="whole-model methods at each budget, at the parameters of Eq. 3 at beta = budget on every "
                   "block (default: %(default)s; '' for none)")
    p.add_argument("--stored-only", action="store_true",
                   help="tabulate the points whose runs are finished; list the others as not run (run nothing new)")
    p.add_argument("--search-samples", type=int, default=32,
                   help="search windows of 128 tokens for sensitivity and alg1 (default: %(default)s, sfsd's)")
    args = p.parse_args(argv)
    started = init(args)

    from transformers import AutoConfig

    from sfsd.compress import CalibrationSpec
    from sfsd.errors import SfsdError
    from sfsd.models import DEFAULT_MODEL, resolve_model
    from sfsd.runs import Run, run_id_for
    from sfsd.runs.frontier import frontier_frame
    from sfsd.search import MetricSpec, SearchConfig, run_search
    from sfsd.search.frontier import evaluate_point
    from sfsd.search.uniform import UniformConfig, run_uniform

    if args.quick:
        use_private_cache("allocation")
        model, calibration = str(tiny_model_dir()), CalibrationSpec(source="wiki", samples=16, seq_len=32)
        seq_lens, ppl_tokens = [32, 128], args.ppl_tokens or 1024
        metric = MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=32, batch_size=4)
    else:
        model, calibration = DEFAULT_MODEL, CalibrationSpec()
        seq_lens, ppl_tokens = [128, 2048], args.ppl_tokens or 16384
        metric = MetricSpec(name="ppl", tolerance=0.05, samples=args.search_samples)
    budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    num_blocks = AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers
    progress = not args.quick
    print(f"allocation: {model}, {num_blocks} blocks, budgets {budgets}, ppl {seq_lens} on {ppl_tokens} tokens",
          flush=True)

    def finished(config) -> bool:
        try:
            return Run.open(run_id_for(config.to_dict())).status()["state"] == "done"
        except SfsdError:
            return False

    def ppl_of(run) -> dict[int, float]:
        return {e["metrics"]["seq_len"]: e["metrics"]["ppl"] for e in run.read_evaluations() if e["kind"] == "ppl"}

    # limit 100 (no tasks): the same base run as `sfsd frontier`'s
    base_run = run_uniform(UniformConfig(model=model, method="none", beta=1.0, last_blocks=0, calibration=calibration,
                                         tasks=[], limit=100, ppl_seq_lens=seq_lens, ppl_tokens=ppl_tokens),
                           progress=progress)
    base = ppl_of(base_run)
    rows = [{"budget": "—", "strategy": "base", "overall_budget": 1.0, "ppl": base, "seconds": None,
             "run_id": base_run.id}]
    for budget in budgets:
        config = protocol_config(model, budget, num_blocks, calibration, seq_lens, ppl_tokens)
        if config is not None:
            start = time.perf_counter()
            run = run_uniform(config, progress=progress)
            rows.append({"budget": budget, "strategy": f"Table-1 protocol (last {config.last_blocks}, "
                         f"beta {config.beta})", "overall_budget": run.result()["overall_budget"], "ppl": ppl_of(run),
                         "seconds": run.result().get("compress_seconds", time.perf_counter() - start),
                         "run_id": run.id})
        for strategy in strategies:
            search = SearchConfig(model=model, method="feature", metric=metric, calibration=calibration,
                                  strategy=strategy, target_budget=budget,
                                  alg1_bisections=args.alg1_bisections if strategy == "alg1" else None,
                                  alg1_growth=args.alg1_growth if strategy == "alg1" else None)
            if args.stored_only and not finished(search):
                rows.append({"budget": budget, "strategy": f"{strategy}: not run", "overall_budget": None, "ppl": {},
                             "seconds": None, "run_id": run_id_for(search.to_dict())})
                continue
            run = run_search(search, progress=progress)
            evaluate_point(run, seq_lens, ppl_tokens, [], None, progress=progress)
            result = run.result()
            seconds, trials = result["allocation_seconds"], result["trials"]
            if strategy == "alg1":  # its runs may have been made earlier (reused): count their trials' time
                seconds, trials = alg1_trial_time(result)
            rows.append({"budget": budget, "strategy": strategy, "overall_budget": result["overall_budget"],
                         "ppl": ppl_of(run), "seconds": seconds, "trials": trials, "run_id": run.id})
            print(f"  {budget} {strategy}: run {run.id}, budget {result['overall_budget']:.4f}, "
                  f"ppl {ppl_of(run)}", flush=True)
        for method in [m.strip() for m in args.baselines.split(",") if m.strip()]:
            # the same config as `sfsd frontier --baselines` makes, so the two share the run
            config = UniformConfig(model=model, method=method, beta=budget, last_blocks=num_blocks,
                                   calibration=calibration, tasks=[], limit=100, ppl_seq_lens=seq_lens,
                                   ppl_tokens=ppl_tokens)
            if args.stored_only and not finished(config):
                rows.append({"budget": budget, "strategy": f"{method}: not run", "overall_budget": None, "ppl": {},
                             "seconds": None, "run_id": run_id_for(config.to_dict())})
                continue
            run = run_uniform(config, progress=progress)
            result = run.result()
            rows.append({"budget": budget, "strategy": f"{method} (whole model, same parameters)",
                         "overall_budget": result["overall_budget"], "ppl": ppl_of(run),
                         "seconds": result.get("compress_seconds"), "run_id": run.id})
            print(f"  {budget} {method}: run {run.id}, parameter-equivalent budget {result['overall_budget']:.4f}, "
                  f"ppl {ppl_of(run)}", flush=True)

    headers = ["target", "allocation", "overall budget", *[f"ppl@{s}" for s in seq_lens],
               *[f"x base @{s}" for s in seq_lens], "allocation time (s)"]
    table = [[r["budget"], r["strategy"], r["overall_budget"], *[r["ppl"].get(s) for s in seq_lens],
              *[(r["ppl"].get(s) / base[s]) if r["ppl"].get(s) and base.get(s) else None for s in seq_lens],
              r["seconds"]] for r in rows]
    notes = [
        f"Model `{Path(model).name}` ({num_blocks} blocks), feature space, calibration {calibration.source} "
        f"{calibration.samples} x {calibration.seq_len}; overall budget = Appendix B share of the decomposable "
        "layers' parameters kept (every strategy lands within 0.5% of the target).",
        f"Perplexity on the wiki eval split, first {ppl_tokens} tokens, windows of "
        + " and ".join(str(s) for s in seq_lens) + " tokens; `x base` is the ratio to the base model.",
        f"sensitivity and alg1 use the search metric: ppl on {metric.samples} x {metric.seq_len} tokens of the "
        "wiki search split. Allocation time is what the run recorded for choosing the ranks (sensitivity: "
        "its one pass of trials on the first budget, reused later; alg1: the summed time of the trials of "
        "the Algorithm 1 runs it used, each reused by later budgets that try the same tolerance, whenever "
        "they ran); Table-1 rows: compression time.",
    ]
    markdown = md_table(headers, table) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    if args.stored_only:
        markdown += ("\n- Tabulated from stored runs (`--stored-only`): each time above is what its run recorded "
                     "when it ran; `not run` points are in no run yet.")
    markdown += f"\n- Machine: {machine_line()}."
    frame = frontier_frame(model=model)
    data = {"title": "Allocation at a target budget", "model": model, "budgets": budgets, "rows": rows,
            "frontier_points": len(frame), "note": QUICK_NOTE if args.quick else None}
    write_result("allocation", args, data, markdown, started)
    return 0


def alg1_trial_time(result: dict) -> tuple[float, int]:
    """(seconds, trials) of the trials in the Algorithm 1 runs an alg1 result used, as their traces recorded."""
    from sfsd.runs import Run

    seconds, trials = 0.0, 0
    for run_id in {t["run_id"] for t in result["allocation"]["tolerances"]}:
        records = Run.open(run_id).trials()
        seconds += sum(r.get("seconds") or 0.0 for r in records)
        trials += len(records)
    return seconds, trials


if __name__ == "__main__":
    raise SystemExit(main())
