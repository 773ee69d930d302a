"""`sfsd search` (run or resume a surgical search) and `sfsd materialize` (save its model)."""

from __future__ import annotations

import argparse

import pandas as pd

from sfsd import options
from sfsd.cli.common import add_calibration_flags, add_dispatch_flags, placement_from_args
from sfsd.errors import SfsdError
from sfsd.options import add_config_flags, add_flags
from sfsd.options import config_from_args as config_from_args_of


def register(subparsers: argparse._SubParsersAction) -> None:
    from sfsd.search import SearchConfig

    p = subparsers.add_parser("search", help="surgical rank search (Algorithm 1), resumable",
                              description="Find per-layer ranks that keep a metric; run again to resume.")
    add_flags(p, options.DEVICE)
    add_config_flags(p, SearchConfig, exclude=["calibration." + f for f in CALIBRATION_FIELDS])
    add_flags(p, options.STOP_AT_BUDGET, options.QUIET)
    add_dispatch_flags(p)
    add_calibration_flags(p)
    p.set_defaults(func=run)

    m = subparsers.add_parser("materialize", help="save the compressed model of a finished search run")
    m.add_argument("run_id")
    add_flags(m, options.OUT_FOLDER, options.OVERWRITE, options.DEVICE)
    add_dispatch_flags(m)
    m.set_defaults(func=run_materialize)
    register_uniform(subparsers)
    register_snapshot_eval(subparsers)


CALIBRATION_FIELDS = ("source", "samples", "seq_len", "seed")  # in their own help group (add_calibration_flags)


def config_from_args(args: argparse.Namespace):
    from sfsd.search import SearchConfig

    return config_from_args_of(SearchConfig, args)


def run(args: argparse.Namespace) -> int:
    from sfsd.search import run_search
    from sfsd.search.heldout import describe_heldout

    config = config_from_args(args)
    stop = args.stop_at_budget
    if stop is not None and (config.target_budget is not None or not 0 < stop <= 1):
        raise SfsdError("--stop-at-budget takes a budget in (0, 1] and no --target-budget: choose one of them")
    run_ = run_search(config, device=placement_from_args(args), progress=not args.quiet, stop_at_budget=stop)
    status, result = run_.status(), run_.result()
    print(f"run {run_.id}: {status['state']}")
    if status["state"] == "stopped" and stop is not None and status["stopped_at_budget"] <= stop:
        print(status["message"])
        return 0
    if result:
        if "target_budget" in result:
            inner = result["allocation"].get("trials_in_runs")
            trials = f"{result['trials']} trials" if inner is None else f"{inner} trials in its Algorithm 1 runs"
            factors = result.get("factors", "two-factor")
            strategy = result["strategy"] + ("" if factors == "two-factor" else f" in {factors} factors")
            print(f"strategy {strategy}: target {result['target_budget']}, allocated in "
                  f"{result['allocation_seconds']:.1f} s with {trials}")
            if "trial_budget" in result["allocation"]:
                print(refinement_line(run_.config, result["allocation"]))
        from sfsd.cli.runs import metric_text

        print(f"overall budget {result['overall_budget']:.4f}, params {result['params']:,} of "
              f"{result['base_params']:,}, metric {metric_text(run_.config, result['final_metric'])} "
              f"(base {metric_text(run_.config, result['base_metric'])})")
        print(f"held-out check: {describe_heldout(result)}")
        print(f"save the model with: sfsd materialize {run_.id} --out cache/models/{run_.id}")
    return 0 if status["state"] == "done" else 1


def refinement_line(config: dict, details: dict) -> str:
    """What the refined strategy did: its trials against their budget and the search metric it predicted and got."""
    from sfsd.cli.runs import metric_text

    return (f"refined: {details['trials']} trials of at most {details['trial_budget']} (3 per layer), "
            f"{len(details['moved'])} layers moved; search metric {metric_text(config, details['start_metric'])} "
            f"at the sensitivity allocation, predicted {metric_text(config, details['predicted_metric'])}, "
            f"measured {metric_text(config, details['refined_metric'])}; kept the {details['kept']} allocation")


def run_materialize(args: argparse.Namespace) -> int:
    from sfsd.runs import Run
    from sfsd.search import materialize

    out = materialize(Run.open(args.run_id), args.out, placement_from_args(args), args.overwrite)
    print(f"saved {out}")
    return 0


def config_from_argv(argv: list[str]):
    """The SearchConfig that `sfsd search <argv>` would run."""
    parser = argparse.ArgumentParser(prog="sfsd")
    register(parser.add_subparsers(dest="command"))
    return config_from_args(parser.parse_args(["search", *argv]))


def register_uniform(subparsers: argparse._SubParsersAction) -> None:
    from sfsd.search.uniform import UniformConfig

    p = subparsers.add_parser("uniform", help="Table 1 protocol as a stored run: compress last N blocks, evaluate")
    add_flags(p, options.DEVICE)
    add_config_flags(p, UniformConfig, exclude=["calibration." + f for f in CALIBRATION_FIELDS])
    add_flags(p, options.QUIET)
    add_dispatch_flags(p)
    add_calibration_flags(p)
    p.set_defaults(func=run_uniform_command)


def uniform_config_from_args(args: argparse.Namespace):
    """The UniformConfig of `sfsd uniform`'s flags."""
    from sfsd.search.uniform import UniformConfig

    return config_from_args_of(UniformConfig, args)


def run_uniform_command(args: argparse.Namespace) -> int:
    from sfsd.runs import evaluations_frame
    from sfsd.search.uniform import run_uniform

    config = uniform_config_from_args(args)
    run_ = run_uniform(config, device=placement_from_args(args), progress=not args.quiet)
    result = run_.result() or {}
    print(f"run {run_.id}: params {result.get('params', 0):,}, budget {result.get('overall_budget', 1):.4f}, "
          f"MACs@128 {result.get('macs', 0):,}")
    print(evaluations_text(evaluations_frame(run_)).to_string(index=False))
    return 0


def evaluations_text(frame: pd.DataFrame) -> pd.DataFrame:
    """A run's evaluations with acc and acc_norm as `value [95% Wilson interval]` (fractions; n is a column)."""
    from sfsd.evaluate.intervals import format_proportion

    out = frame.copy()
    if "n" in out:
        out["n"] = [f"{n:.0f}" if pd.notna(n) else "-" for n in pd.to_numeric(out["n"], errors="coerce")]
    for column in ("acc", "acc_norm"):
        if column in out and "n" in out:
            out[column] = [format_proportion(p, int(n), show_n=False) if pd.notna(p) and n != "-" else "-"
                           for p, n in zip(out[column], out["n"], strict=True)]
            out = out.rename(columns={column: f"{column} [95% CI]"})
    return out


def register_snapshot_eval(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("snapshot-eval", help="evaluate a run's snapshots afterwards (accuracy vs params)")
    p.add_argument("run_id")
    add_flags(p, options.TASKS, options.LIMIT, options.SNAPSHOT_STEPS, options.DEVICE)
    p.set_defaults(func=run_snapshot_eval)


def run_snapshot_eval(args: argparse.Namespace) -> int:
    from sfsd.runs import Run, evaluations_frame
    from sfsd.search.surgical import evaluate_steps

    run_ = Run.open(args.run_id)
    steps = args.steps or [int(s["step"]) for s in run_.read_snapshots()]
    if not args.tasks:
        raise SfsdError("snapshot-eval needs --tasks: e.g. --tasks piqa")
    evaluate_steps(run_, steps, args.tasks, args.limit, args.device)
    frame = evaluations_frame(run_)
    frame = frame[[c for c in ("step", "params", "task", "n", "acc", "acc_norm") if c in frame]]
    print(evaluations_text(frame).to_string(index=False))
    return 0
