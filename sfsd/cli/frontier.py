"""`sfsd frontier`: one target-budget run per (strategy, budget), each evaluated on the eval split."""

from __future__ import annotations

import argparse

from sfsd import options
from sfsd.cli.common import add_calibration_flags, add_dispatch_flags, placement_from_args
from sfsd.options import add_config_flags, add_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    from sfsd.search import SearchConfig
    from sfsd.search.frontier import FrontierConfig

    p = subparsers.add_parser("frontier", help="budget-quality frontier: runs (or reuses) one run per point",
                              description="Allocate ranks at each budget with each strategy, evaluate every final "
                                          "model on the eval split; run again to resume.")
    add_flags(p, options.DEVICE)
    add_config_flags(p, SearchConfig, only=BASE_FIELDS)
    add_config_flags(p, FrontierConfig)
    add_flags(p, options.QUIET)
    add_dispatch_flags(p)
    add_calibration_flags(p)
    p.set_defaults(func=run)


# the base search config's fields a frontier takes (strategy and target budget vary per point)
BASE_FIELDS = ("model", "method", "dtype", "metric.name", "metric.tolerance", "metric.task", "metric.samples",
               "metric.seq_len", "factors", "calibration_stream")


def run(args: argparse.Namespace) -> int:
    from sfsd.options import config_from_args
    from sfsd.runs.frontier import frontier_frame
    from sfsd.search import SearchConfig
    from sfsd.search.frontier import FrontierConfig, run_frontier

    plan = config_from_args(FrontierConfig, args)
    base = config_from_args(SearchConfig, args, strategy=plan.strategies[0] if plan.strategies else "spectrum",
                            target_budget=plan.budgets[0] if plan.budgets else 1.0)
    runs = run_frontier(base, plan.strategies, plan.budgets, plan.ppl_seq_lens, plan.ppl_tokens, plan.tasks,
                        plan.limit, device=placement_from_args(args), progress=not args.quiet,
                        alg1_bisections=plan.alg1_bisections, alg1_growth=plan.alg1_growth,
                        baselines=plan.baselines)
    frame = frontier_frame(model=args.model)
    ids = {r.id for r in runs} | set(frame.loc[frame["strategy"] == "base", "run_id"])
    print(frame[frame["run_id"].isin(ids)].drop(columns=["model"]).to_string(index=False))
    return 0
