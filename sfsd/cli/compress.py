"""`sfsd compress` and `sfsd info`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from sfsd import options
from sfsd.cli.common import add_calibration_flags, add_dispatch_flags, add_model_flags, fmt_int, read_ranks
from sfsd.options import add_flags, config_from_args


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("compress", help="decompose a model's linear layers and save it",
                              description="Compress a causal LM with the uniform protocol or explicit ranks.")
    add_model_flags(p)
    add_dispatch_flags(p)
    add_flags(p, options.COMPRESS_METHOD, options.BETA, options.LAST_BLOCKS, options.SLICING, options.FACTORS,
              beta=None, last_blocks=None)
    add_flags(p, options.RANKS, options.OUT_FOLDER, options.OVERWRITE, options.MAC_SEQ_LEN)
    add_calibration_flags(p)
    add_flags(p, options.CALIBRATION_STREAM, options.BATCH_SIZE)
    p.set_defaults(func=run_compress)

    q = subparsers.add_parser("info", help="ranks, parameters, budget and MACs of a model folder")
    q.add_argument("model", help="a folder saved by `sfsd compress`, or any model")
    add_flags(q, options.MAC_SEQ_LEN, options.LAYER_TABLE, options.DEVICE, options.DTYPE)
    q.set_defaults(func=run_info)


def run_compress(args: argparse.Namespace) -> int:
    from sfsd.compress import CalibrationSpec, check_compress_request, compress, save_compressed
    from sfsd.errors import SfsdError
    from sfsd.models import load_model, parse_dtype, pick_device

    parse_dtype(args.dtype)
    if sum(x is not None for x in (args.beta, args.ranks, args.slicing)) != 1:
        raise SfsdError("give one budget: --beta (with --last-blocks), or --ranks FILE, or --slicing (slicegpt)")
    ranks = read_ranks(args.ranks) if args.ranks else None
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise SfsdError(f"{out} already exists: choose another --out or pass --overwrite")
    calibration = config_from_args(CalibrationSpec, args)
    check_compress_request(args.method, args.beta, calibration, args.slicing, args.factors)
    if args.calibration_stream != options.OPEN_LOOP:
        from sfsd.closed_loop import check_stream

        check_stream(args.calibration_stream, args.method)
    start = time.perf_counter()
    # The model stays on the host; its blocks visit the compute device one at a time (sequential onloading).
    compute = pick_device(args.device)
    if args.device_map:  # accelerate places the blocks; each is compressed where its hooks run it
        model, tokenizer = load_model(args.model, compute, args.dtype, device_map=args.device_map,
                                      max_memory=args.max_memory, offload_dir=args.offload_dir)
        compute = None
    else:
        model, tokenizer = load_model(args.model, "cpu", args.dtype, compute_device=compute,
                                      max_memory=args.max_memory, offload_dir=args.offload_dir)
    compress(model, tokenizer, args.method, beta=args.beta, last_blocks=args.last_blocks, ranks=ranks,
             calibration=calibration, batch_size=args.batch_size, seq_len=args.seq_len, device=compute,
             slicing=args.slicing, factors=args.factors, calibration_stream=args.calibration_stream)
    save_compressed(model, tokenizer, out, overwrite=args.overwrite)
    print(f"saved {out} in {time.perf_counter() - start:.1f} s")
    _print_info(model, args.seq_len, layers=False)
    return 0


def run_info(args: argparse.Namespace) -> int:
    from sfsd.models import load_model

    model, _ = load_model(args.model, args.device, args.dtype)
    _print_info(model, args.seq_len, args.layers)
    return 0


def _print_info(model, seq_len: int, layers: bool) -> None:
    from sfsd.compress import describe

    info = describe(model, seq_len)
    base = (getattr(model.config, "sfsd", None) or {}).get("base", {})
    rows = [
        ("architecture", f"{info['model_type']} ({info['blocks']} blocks; roles {', '.join(info['roles'])})"),
        ("method", info["method"] or "none (original model)"),
        ("factor format", info["factors"]),
        ("layers decomposed", f"{info['layers_decomposed']} of {info['layers_total']}"),
        ("overall budget (App. B)" if not getattr(model.config, "sfsd_sliced", None) else
         "overall budget (parameter-equivalent)", f"{info['overall_budget']:.4f}"),
        ("params (with embeddings)", _vs(info["params"], base.get("params"))),
        ("params of linear layers", _vs(info["params_linear"], info["params_linear_full"])),
        (f"MACs per sequence of {seq_len}", _vs(info["macs"], base.get("macs", {}).get(str(seq_len)))),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    table = info["table"]
    if layers:
        with pd.option_context("display.max_rows", None, "display.width", 160):
            print(table.drop(columns=["name"]).to_string(index=False))
    elif info["layers_decomposed"]:
        narrowed = "params_weights" in table  # pruned or sliced: real narrower layers, no rank
        grid = table.assign(kept=(100 * table["beta"]).round(1)).pivot(
            index="block", columns="role", values="kept" if narrowed else "rank")[info["roles"]]
        decomposed = table.loc[~table["intact"], "block"].unique()
        print("\n% of each layer's weights kept, per block:" if narrowed else "\nranks per block (decomposed blocks):")
        print(grid.loc[sorted(decomposed)].to_string())


def _vs(value: float, reference: float | None) -> str:
    if not reference:
        return fmt_int(value)
    return f"{fmt_int(value)} of {fmt_int(reference)} ({100 * value / reference:.1f}%)"
