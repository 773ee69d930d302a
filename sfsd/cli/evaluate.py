"""`sfsd eval`, `sfsd ppl`, `sfsd bias`, `sfsd disagree`: evaluate models (results are cached)."""

from __future__ import annotations

import argparse

import pandas as pd

from sfsd.cli.common import add_dtype_flag
from sfsd.models import DEFAULT_MODEL


def _model_arg(parser: argparse.ArgumentParser, name: str = "model") -> None:
    parser.add_argument(
        name,
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"short name ({DEFAULT_MODEL}), model folder (also sfsd-compressed) or hub id (default: %(default)s)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_dtype_flag(parser)
    parser.add_argument(
        "--model-key",
        default=None,
        help="name for the weights in the cache key (default: a sha256 fingerprint of the weights)",
    )
    parser.add_argument("--no-cache", action="store_true", help="recompute even if a stored result exists")


def _task_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--suite", default="offline", choices=["offline", "paper"], help="offline pack or lm-eval's hub tasks"
    )
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: the whole suite)")
    parser.add_argument("--split", default="eval", choices=["calib", "search", "eval"], help="pack split")
    parser.add_argument("--limit", type=int, default=None, help="first N documents per task (default: all)")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval batch size (default: %(default)s)")


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "eval", help="zero-shot multiple-choice accuracy through lm-eval", description=cmd_eval.__doc__
    )
    _model_arg(ev)
    _task_flags(ev)
    _common(ev)
    ev.set_defaults(func=cmd_eval)

    ppl = subparsers.add_parser("ppl", help="perplexity on the wiki text", description=cmd_ppl.__doc__)
    _model_arg(ppl)
    ppl.add_argument("--seq-len", type=int, default=128, help="window length in tokens (default: %(default)s)")
    ppl.add_argument("--split", default="eval", choices=["calib", "search", "eval"], help="pack split")
    ppl.add_argument("--max-tokens", type=int, default=None, help="use only the first N tokens of the text")
    ppl.add_argument("--batch-size", type=int, default=None, help="windows per forward pass")
    _common(ppl)
    ppl.set_defaults(func=cmd_ppl)

    bias = subparsers.add_parser("bias", help="StereoSet LMS, SS and ICAT", description=cmd_bias.__doc__)
    _model_arg(bias)
    bias.add_argument("--split", default="eval", choices=["calib", "search", "eval"], help="pack split")
    bias.add_argument("--limit", type=int, default=None, help="first N examples (default: all)")
    bias.add_argument("--batch-size", type=int, default=16, help="sentences per forward pass")
    _common(bias)
    bias.set_defaults(func=cmd_bias)

    dis = subparsers.add_parser(
        "disagree", help="per-example disagreement between two models", description=cmd_disagree.__doc__
    )
    dis.add_argument("model_a", help="the reference model (short name, folder or hub id)")
    dis.add_argument("model_b", help="the model compared with it")
    _task_flags(dis)
    dis.add_argument("--metric", default="acc", choices=["acc", "acc_norm"], help="which prediction to compare")
    dis.add_argument("--show", type=int, default=5, help="flipped examples to print per task (default: 5)")
    dis.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_dtype_flag(dis)
    dis.add_argument("--no-cache", action="store_true", help="recompute even if a stored result exists")
    dis.set_defaults(func=cmd_disagree)


def _load(name: str, device: str | None, dtype: str = "auto"):
    from sfsd.models import load_model

    print(f"loading {name} ...", flush=True)
    return load_model(name, device, dtype)


def _table(frame: pd.DataFrame, columns: list[str]) -> str:
    return frame[columns].to_string(index=False, float_format=lambda x: f"{x:.4f}")


def _tasks(args: argparse.Namespace, model, tokenizer, model_key: str | None):
    from sfsd.evaluate import evaluate_tasks

    return evaluate_tasks(
        model,
        tokenizer,
        tasks=args.tasks,
        split=args.split,
        limit=args.limit,
        suite=args.suite,
        model_key=model_key,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
    )


def cmd_eval(args: argparse.Namespace) -> int:
    """Zero-shot multiple-choice accuracy (acc, acc_norm) through lm-eval, per task."""
    from sfsd.evaluate.tasks import check_suite, require_hub

    if check_suite(args.suite) == "paper":
        require_hub()  # fail before loading the model
    model, tokenizer = _load(args.model, args.device, args.dtype)
    results = _tasks(args, model, tokenizer, args.model_key)
    columns = ["task", "split", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "cached"]
    print(_table(results.summary, columns))
    print(f"lm-eval {results.summary['lm_eval_version'].iloc[0]}, suite {args.suite}, zero-shot")
    return 0


def cmd_ppl(args: argparse.Namespace) -> int:
    """Perplexity over non-overlapping windows of the concatenated wiki text of a split."""
    from sfsd.evaluate import perplexity

    model, tokenizer = _load(args.model, args.device, args.dtype)
    result = perplexity(
        model,
        tokenizer,
        split=args.split,
        seq_len=args.seq_len,
        max_tokens=args.max_tokens,
        model_key=args.model_key,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
    )
    cached = " (cached)" if result["cached"] else ""
    print(
        f"perplexity {result['ppl']:.3f} at seq_len {result['seq_len']} on wiki {result['split']}: "
        f"{result['n_windows']} windows, {result['n_tokens']} tokens{cached}"
    )
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    """StereoSet: language-model score, stereotype score (50 is unbiased) and ICAT per bias type."""
    from sfsd.evaluate import stereoset

    model, tokenizer = _load(args.model, args.device, args.dtype)
    result = stereoset(
        model,
        tokenizer,
        split=args.split,
        limit=args.limit,
        model_key=args.model_key,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
    )
    print(result.summary.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return 0


def cmd_disagree(args: argparse.Namespace) -> int:
    """Accuracy of two models on the same documents and how often their answers differ."""
    from sfsd.evaluate import disagreement, flips

    records = []
    for name in (args.model_a, args.model_b):
        model, tokenizer = _load(name, args.device, args.dtype)
        records.append(_tasks(args, model, tokenizer, None).records)
        del model
    table = disagreement(records[0], records[1], metric=args.metric)
    print(f"a = {args.model_a}, b = {args.model_b}; disagreement in % of shared documents")
    print(_table(table, list(table.columns)))
    for task in table["task"]:
        changed = flips(records[0], records[1], task, metric=args.metric)
        counts = changed["direction"].value_counts().to_dict()
        print(f"\n{task}: {len(changed)} flips {counts}")
        if args.show and len(changed):
            print(changed.head(args.show).to_string(index=False))
    return 0
