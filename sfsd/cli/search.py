"""`sfsd search` (run or resume a surgical search) and `sfsd materialize` (save its model)."""

from __future__ import annotations

import argparse

import pandas as pd

from sfsd.cli.common import add_calibration_flags, add_dispatch_flags, add_model_flags, placement_from_args
from sfsd.decompose import METHODS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("search", help="surgical rank search (Algorithm 1), resumable",
                              description="Find per-layer ranks that keep a metric; run again to resume.")
    add_model_flags(p)
    p.add_argument("--method", default="feature", choices=list(METHODS), help="decomposition (default: feature)")
    p.add_argument("--metric", default="ppl", help="ppl or task (default: ppl)")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="ppl: relative increase allowed; task: accuracy drop allowed (default: 0.05)")
    p.add_argument("--compounding", action="store_true", help="threshold from the last accepted value")
    p.add_argument("--task", help="task metric: offline task (boolq, piqa, openbookqa, commonsenseqa, siqa) or, "
                   "with --suite paper, boolq, piqa, hellaswag, arc_easy, arc_challenge")
    p.add_argument("--suite", default="offline", choices=["offline", "paper"],
                   help="task metric: offline (the pack's search split) or paper (a seeded 20%% of the hub task's "
                   "train split, never evaluated; needs the hub) (default: %(default)s)")
    p.add_argument("--acc-norm", action="store_true", help="task metric: use normalised accuracy")
    p.add_argument("--limit", type=int, help="task metric: first N documents of the search split")
    p.add_argument("--search-samples", type=int, default=32,
                   help="ppl metric: windows of search text (default: 32, i.e. 4,096 tokens at --search-seq-len 128; "
                   "fewer over-fit the search text: README, search size and held-out change)")
    p.add_argument("--search-seq-len", type=int, default=128, help="ppl metric: tokens per window (default: 128)")
    p.add_argument("--search-batch-size", type=int, default=8)
    p.add_argument("--strategy", default=None,
                   help="per-layer walk: linear (the paper, default) or bisect; with --target-budget: uniform, "
                        "spectrum (default), sensitivity or alg1")
    p.add_argument("--target-budget", type=float, default=None,
                   help="overall budget B in (0, 1] to reach (within 0.5%%) with an allocation --strategy")
    p.add_argument("--alg1-bisections", type=int, default=None,
                   help="with --strategy alg1: bisections of the tolerance after doubling it (default: 5)")
    p.add_argument("--alg1-growth", type=float, default=None,
                   help="with alg1: factor the tolerance grows by until a run reaches B (default: 2)")
    p.add_argument("--stop-at-budget", type=float, default=None,
                   help="Algorithm 1 walk: stop (resumably) once the overall budget is at or below this; the "
                        "decisions so far are the finished run's (not part of the run's id)")
    p.add_argument("--engine", default="fast", help="fast (prefix cache) or reference (full model per trial)")
    p.add_argument("--first-block", type=int, default=0, help="blocks below this one are never touched")
    p.add_argument("--roles", help="comma-separated roles to search (default: all)")
    p.add_argument("--snapshot-every", type=int, default=10, help="decided layers between snapshots")
    p.add_argument("--snapshot-tasks", default="", help="comma-separated tasks evaluated at each snapshot")
    p.add_argument("--snapshot-limit", type=int, default=100, help="documents per snapshot task")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_dispatch_flags(p)
    add_calibration_flags(p)
    p.set_defaults(func=run)

    m = subparsers.add_parser("materialize", help="save the compressed model of a finished search run")
    m.add_argument("run_id")
    m.add_argument("--out", required=True, help="output folder (Hugging Face format)")
    m.add_argument("--overwrite", action="store_true")
    m.add_argument("--device", default=None)
    add_dispatch_flags(m)
    m.set_defaults(func=run_materialize)
    register_uniform(subparsers)
    register_snapshot_eval(subparsers)


def config_from_args(args: argparse.Namespace):
    from sfsd.compress import CalibrationSpec
    from sfsd.search import MetricSpec, SearchConfig

    metric = MetricSpec(args.metric, args.tolerance, args.compounding, args.task, args.acc_norm, args.limit,
                        args.search_samples, args.search_seq_len, args.search_batch_size, args.suite)
    calibration = CalibrationSpec(args.calib_source, args.calib_samples, args.calib_seq_len, args.seed)
    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    strategy = args.strategy or ("linear" if args.target_budget is None else "spectrum")
    return SearchConfig(args.model, args.method, metric, strategy, args.first_block,
                        split(args.roles) if args.roles else None, calibration, args.snapshot_every,
                        split(args.snapshot_tasks), args.snapshot_limit, args.engine, args.dtype,
                        args.target_budget, args.alg1_bisections, args.alg1_growth)


def run(args: argparse.Namespace) -> int:
    from sfsd.errors import SfsdError
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
            print(f"strategy {result['strategy']}: target {result['target_budget']}, allocated in "
                  f"{result['allocation_seconds']:.1f} s with {trials}")
        from sfsd.cli.runs import metric_text

        print(f"overall budget {result['overall_budget']:.4f}, params {result['params']:,} of "
              f"{result['base_params']:,}, metric {metric_text(run_.config, result['final_metric'])} "
              f"(base {metric_text(run_.config, result['base_metric'])})")
        print(f"held-out check: {describe_heldout(result)}")
        print(f"save the model with: sfsd materialize {run_.id} --out cache/models/{run_.id}")
    return 0 if status["state"] == "done" else 1


def run_materialize(args: argparse.Namespace) -> int:
    from sfsd.runs import Run
    from sfsd.search import materialize

    out = materialize(Run.open(args.run_id), args.out, placement_from_args(args), args.overwrite)
    print(f"saved {out}")
    return 0


def config_from_argv(argv: list[str]):
    """The SearchConfig that `sfsd search <argv>` would run (so a launcher can find the run's id)."""
    import argparse as _argparse

    parser = _argparse.ArgumentParser(prog="sfsd")
    register(parser.add_subparsers(dest="command"))
    return config_from_args(parser.parse_args(["search", *argv]))


def register_uniform(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("uniform", help="Table 1 protocol as a stored run: compress last N blocks, evaluate")
    add_model_flags(p)
    p.add_argument("--method", default="feature", choices=[*METHODS, "none"], help="none: the base model")
    p.add_argument("--beta", type=float, default=0.46)
    p.add_argument("--last-blocks", type=int, default=12)
    p.add_argument("--tasks", default="", help="comma-separated offline tasks evaluated on the eval split")
    p.add_argument("--limit", type=int, default=100, help="documents per task (default: 100)")
    p.add_argument("--ppl-seq-lens", default="128", help="perplexity sequence lengths, e.g. 128,2048")
    p.add_argument("--ppl-tokens", type=int, default=16384, help="first tokens of the wiki eval split")
    p.add_argument("--quiet", action="store_true")
    add_dispatch_flags(p)
    add_calibration_flags(p)
    p.set_defaults(func=run_uniform_command)


def uniform_config_from_args(args: argparse.Namespace):
    """The UniformConfig of `sfsd uniform`'s flags (the dashboard derives its run ids from this too)."""
    from sfsd.compress import CalibrationSpec
    from sfsd.search.uniform import UniformConfig

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    seq_lens = [int(s) for s in args.ppl_seq_lens.split(",") if s.strip()]
    return UniformConfig(args.model, args.method, args.beta, args.last_blocks,
                         CalibrationSpec(args.calib_source, args.calib_samples, args.calib_seq_len, args.seed),
                         tasks, args.limit, seq_lens, args.ppl_tokens, args.dtype)


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
    p.add_argument("--tasks", required=True, help="comma-separated offline tasks (eval split)")
    p.add_argument("--limit", type=int, default=100, help="documents per task (default: 100)")
    p.add_argument("--steps", help="comma-separated steps (default: every snapshot of the run)")
    p.add_argument("--device", default=None)
    p.set_defaults(func=run_snapshot_eval)


def run_snapshot_eval(args: argparse.Namespace) -> int:
    from sfsd.runs import Run, evaluations_frame
    from sfsd.search.surgical import evaluate_steps

    run_ = Run.open(args.run_id)
    steps = ([int(s) for s in args.steps.split(",")] if args.steps
             else [int(s["step"]) for s in run_.read_snapshots()])
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    evaluate_steps(run_, steps, tasks, args.limit, args.device)
    frame = evaluations_frame(run_)
    frame = frame[[c for c in ("step", "params", "task", "n", "acc", "acc_norm") if c in frame]]
    print(evaluations_text(frame).to_string(index=False))
    return 0
