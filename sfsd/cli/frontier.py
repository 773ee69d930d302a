"""`sfsd frontier`: one target-budget run per (strategy, budget), each evaluated on the eval split."""

from __future__ import annotations

import argparse

from sfsd.cli.common import add_calibration_flags, add_dispatch_flags, add_model_flags, placement_from_args
from sfsd.decompose import METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("frontier", help="budget-quality frontier: runs (or reuses) one run per point",
                              description="Allocate ranks at each budget with each strategy, evaluate every final "
                                          "model on the eval split; run again to resume.")
    add_model_flags(p)
    p.add_argument("--method", default="feature", choices=list(METHODS), help="decomposition (default: feature)")
    p.add_argument("--strategies", default="uniform,spectrum,sensitivity,alg1",
                   help="comma-separated allocation strategies (default: %(default)s)")
    p.add_argument("--budgets", default="0.9,0.8,0.6", help="comma-separated overall budgets (default: %(default)s)")
    p.add_argument("--metric", default="ppl", help="search metric of sensitivity and alg1: ppl or task")
    p.add_argument("--tolerance", type=float, default=0.05, help=argparse.SUPPRESS)
    p.add_argument("--task", help="task metric: offline task")
    p.add_argument("--search-samples", type=int, default=32, help="ppl metric: windows of search text (default: 32)")
    p.add_argument("--search-seq-len", type=int, default=128, help="ppl metric: tokens per window (default: 128)")
    p.add_argument("--ppl-seq-lens", default="128,2048", help="eval perplexity sequence lengths (default: %(default)s)")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="first tokens of the wiki eval split")
    p.add_argument("--tasks", default="", help="comma-separated offline tasks evaluated on the eval split")
    p.add_argument("--limit", type=int, default=100, help="documents per task (default: 100)")
    p.add_argument("--alg1-bisections", type=int, default=None,
                   help="alg1: bisections of the tolerance after doubling it (default: 5); fewer Algorithm 1 "
                        "runs, a coarser tolerance, the same landing at the budget")
    p.add_argument("--alg1-growth", type=float, default=None,
                   help="alg1: factor the tolerance grows by until a run reaches the budget (default: 2)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dispatch_flags(p)
    add_calibration_flags(p)
    p.set_defaults(func=run)


def _numbers(text: str, kind, flag: str) -> list:
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError as exc:
        from sfsd.errors import SfsdError

        raise SfsdError(f"{flag} must be comma-separated numbers, got {text!r}") from exc


def run(args: argparse.Namespace) -> int:
    from sfsd.compress import CalibrationSpec
    from sfsd.runs.frontier import frontier_frame
    from sfsd.search import MetricSpec, SearchConfig
    from sfsd.search.frontier import run_frontier

    metric = MetricSpec(args.metric, args.tolerance, task=args.task, samples=args.search_samples,
                        seq_len=args.search_seq_len)
    calibration = CalibrationSpec(args.calib_source, args.calib_samples, args.calib_seq_len, args.seed)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    budgets = _numbers(args.budgets, float, "--budgets")
    base = SearchConfig(args.model, args.method, metric, strategies[0] if strategies else "spectrum",
                        calibration=calibration, dtype=args.dtype, target_budget=budgets[0] if budgets else 1.0)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    runs = run_frontier(base, strategies, budgets, _numbers(args.ppl_seq_lens, int, "--ppl-seq-lens"),
                        args.ppl_tokens, tasks, args.limit, device=placement_from_args(args),
                        progress=not args.quiet, alg1_bisections=args.alg1_bisections, alg1_growth=args.alg1_growth)
    frame = frontier_frame(model=args.model)
    ids = {r.id for r in runs} | set(frame.loc[frame["strategy"] == "base", "run_id"])
    print(frame[frame["run_id"].isin(ids)].drop(columns=["model"]).to_string(index=False))
    return 0
