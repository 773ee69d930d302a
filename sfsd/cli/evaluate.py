"""`sfsd eval`, `sfsd ppl`, `sfsd bias`, `sfsd disagree`: evaluate models (results are cached)."""

from __future__ import annotations

import argparse

import pandas as pd

from sfsd import options
from sfsd.cli.common import add_dispatch_flags
from sfsd.models import DEFAULT_MODEL
from sfsd.options import add_flags


def _model_arg(parser: argparse.ArgumentParser, name: str = "model") -> None:
    parser.add_argument(
        name,
        nargs="?",
        default=DEFAULT_MODEL,
        help=f"short name ({DEFAULT_MODEL}), model folder (also sfsd-compressed) or hub id (default: %(default)s)",
    )
    if name == "model":  # `--model X` as in every other command
        parser.add_argument("--model", dest="model_flag", metavar="MODEL", help=options.MODEL.help)
        parser.set_defaults(model_default=DEFAULT_MODEL)


def _common(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, options.DEVICE, options.DTYPE)
    add_dispatch_flags(parser)
    add_flags(parser, options.MODEL_KEY, options.NO_CACHE)


def _task_flags(parser: argparse.ArgumentParser) -> None:
    # default: every task of the suite, every document
    add_flags(parser, options.SUITE, options.TASKS, options.LIMIT, options.EVAL_SPLIT, options.BATCH_SIZE, tasks=None,
              limit=None, batch_size=8)


def register(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "eval", help="zero-shot multiple-choice accuracy through lm-eval", description=cmd_eval.__doc__
    )
    _model_arg(ev)
    _task_flags(ev)
    _common(ev)
    ev.set_defaults(func=cmd_eval)

    ppl = subparsers.add_parser("ppl", help="perplexity on the wiki text (or the field's datasets)",
                                description=cmd_ppl.__doc__)
    _model_arg(ppl)
    add_flags(ppl, options.PPL_DATASET, options.PPL_SEQ_LEN, options.EVAL_SPLIT, options.MAX_TOKENS,
              options.BATCH_SIZE, batch_size=None)
    _common(ppl)
    ppl.set_defaults(func=cmd_ppl)

    bias = subparsers.add_parser("bias", help="StereoSet LMS, SS and ICAT", description=cmd_bias.__doc__)
    _model_arg(bias)
    # default: every example
    add_flags(bias, options.BIAS_SPLIT, options.LIMIT, options.BATCH_SIZE, limit=None, batch_size=16)
    _common(bias)
    bias.set_defaults(func=cmd_bias)

    dis = subparsers.add_parser(
        "disagree", help="per-example disagreement between two models", description=cmd_disagree.__doc__
    )
    dis.add_argument("model_a", help="the reference model (short name, folder or hub id)")
    dis.add_argument("model_b", help="the model compared with it")
    _task_flags(dis)
    add_flags(dis, options.PREDICTION, options.SHOW_FLIPS, options.DEVICE, options.DTYPE)
    add_dispatch_flags(dis)
    add_flags(dis, options.NO_CACHE)
    dis.set_defaults(func=cmd_disagree)


def _load(name: str, args: argparse.Namespace):
    """Load for evaluation; with --device-map, accelerate spreads the model over GPUs, CPU and disk."""
    from sfsd.models import load_model

    print(f"loading {name} ...", flush=True)
    return load_model(name, args.device, args.dtype, device_map=args.device_map, max_memory=args.max_memory,
                      offload_dir=args.offload_dir)


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """An lm-eval summary (task, split, n, acc, acc_norm, cached) with each accuracy as
    `value [95% Wilson interval]` (fractions, n in its own column)."""
    from sfsd.evaluate.intervals import format_proportion

    table = summary[["task", "split", "n"]].copy()
    for column in ("acc", "acc_norm"):
        table[f"{column} [95% CI]"] = [format_proportion(float(p), int(n), show_n=False)
                                       for p, n in zip(summary[column], summary["n"], strict=True)]
    table["cached"] = summary["cached"]
    return table


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


def _refuse_task_leaks(model: str, args: argparse.Namespace) -> None:
    """Refuse, before loading, a saved model evaluated on rows it was calibrated or searched on."""
    from sfsd.evaluate.leaks import refuse_folder_leaks, task_targets

    refuse_folder_leaks(model, task_targets(args.tasks, args.split, args.suite))


def cmd_eval(args: argparse.Namespace) -> int:
    """Zero-shot multiple-choice accuracy (acc, acc_norm) through lm-eval, per task."""
    from sfsd.evaluate.tasks import check_suite, require_paper_data

    check_suite(args.suite)
    _refuse_task_leaks(args.model, args)
    if args.suite == "paper":
        require_paper_data(args.tasks)  # fail before loading the model
    model, tokenizer = _load(args.model, args)
    results = _tasks(args, model, tokenizer, args.model_key)
    print(accuracy_table(results.summary).to_string(index=False))
    print(f"lm-eval {results.summary['lm_eval_version'].iloc[0]}, suite {args.suite}, zero-shot; "
          "accuracy [95% Wilson interval] over n documents")
    return 0


def cmd_ppl(args: argparse.Namespace) -> int:
    """Perplexity over non-overlapping windows of a text: the pack's wiki split, or WikiText-2 / PTB / C4
    from the hub joined with blank lines as SVD-LLM and SliceGPT do."""
    from sfsd.data.leakage import ppl_eval_rows
    from sfsd.evaluate import perplexity
    from sfsd.evaluate.intervals import PPL_BOOTSTRAP_RESAMPLES, format_ppl
    from sfsd.evaluate.leaks import refuse_folder_leaks
    from sfsd.evaluate.perplexity import dataset_split, require_dataset

    split = dataset_split(args.dataset, args.split)
    refuse_folder_leaks(args.model, [(f"sfsd ppl --dataset {args.dataset} --split {split}",
                                      ppl_eval_rows(args.dataset, split))])
    require_dataset(args.dataset)  # fail before loading the model
    model, tokenizer = _load(args.model, args)
    result = perplexity(
        model,
        tokenizer,
        dataset=args.dataset,
        split=args.split,
        seq_len=args.seq_len,
        max_tokens=args.max_tokens,
        model_key=args.model_key,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
    )
    cached = " (cached)" if result["cached"] else ""
    starts = "each BOS + text (BOS not scored)" if result["bos"] else "no BOS"
    value = format_ppl(result["ppl"], result["ppl_low"], result["ppl_high"], digits=3)
    if result["ppl_low"] is not None:
        interval = f"[95% interval: bootstrap over the windows, {PPL_BOOTSTRAP_RESAMPLES} resamples]"
    elif result["n_windows"] < 2:
        interval = "(one window: no interval)"
    else:
        interval = "(no interval: cached before the windows were kept; delete its cache/evals/ppl entry to measure it)"
    print(
        f"perplexity {value} at seq_len {result['seq_len']} on {args.dataset} {result['split']}: "
        f"{result['n_windows']} windows ({starts}), {result['n_tokens']} tokens{cached} {interval}"
    )
    return 0


def cmd_bias(args: argparse.Namespace) -> int:
    """StereoSet: language-model score, stereotype score (50 is unbiased) and ICAT for intrasentence,
    intersentence and both pooled ("all"), each per bias type and overall, with 95% intervals and n."""
    from sfsd.evaluate import stereoset
    from sfsd.evaluate.stereoset import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, display_table, thin_cells

    model, tokenizer = _load(args.model, args)
    result = stereoset(
        model,
        tokenizer,
        split=args.split,
        limit=args.limit,
        model_key=args.model_key,
        batch_size=args.batch_size,
        use_cache=not args.no_cache,
    )
    limit = f", first {args.limit}" if args.limit else ""
    print(f"StereoSet, split {args.split}{limit}: {len(result.records)} examples")
    print(display_table(result.summary, digits=2).to_string(index=False))
    print(
        f"[low, high]: 95% percentile bootstrap over examples ({BOOTSTRAP_RESAMPLES} resamples, seed "
        f"{BOOTSTRAP_SEED}); SS 50 is unbiased; LMS and SS are means over target terms, as the official script"
    )
    for note in thin_cells(result.summary):
        print(f"note: {note}")
    return 0


def cmd_disagree(args: argparse.Namespace) -> int:
    """Accuracy of two models on the same documents and how often their answers differ."""
    from sfsd.evaluate import disagreement, flips
    from sfsd.evaluate.compare import disagreement_report

    for name in (args.model_a, args.model_b):
        _refuse_task_leaks(name, args)
    records = []
    for name in (args.model_a, args.model_b):
        model, tokenizer = _load(name, args)
        records.append(_tasks(args, model, tokenizer, None).records)
        del model
    table = disagreement(records[0], records[1], metric=args.metric)
    print(f"a = {args.model_a}, b = {args.model_b}; accuracy and disagreement in % of the n shared documents, "
          "delta b - a in percentage points; [95% interval] (Wilson; paired for the delta)")
    print(disagreement_report(table).to_string(index=False))
    for task in table["task"]:
        changed = flips(records[0], records[1], task, metric=args.metric)
        counts = changed["direction"].value_counts().to_dict()
        print(f"\n{task}: {len(changed)} flips {counts}")
        if args.show and len(changed):
            print(changed.head(args.show).to_string(index=False))
    return 0
