"""`sfsd synth`: a random model folder of any published shape (memory and time before a download)."""

from __future__ import annotations

import argparse
import time

from sfsd import options
from sfsd.options import add_flags
from sfsd.synth import SYNTH_ARCHS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="write a random-initialised model of a given shape",
        description="Write a seeded random model (safetensors, with the default model's tokenizer), e.g. "
                    "LLaMA-7B's shape: --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --blocks 32.")
    add_flags(p, options.SYNTH_ARCH.with_choices(SYNTH_ARCHS), options.HIDDEN, options.INTERMEDIATE, options.HEADS,
              options.KV_HEADS, options.BLOCKS, options.WEIGHT_DTYPE, options.WEIGHT_SEED, options.OUT_FOLDER,
              options.OVERWRITE)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfsd.models import parse_dtype
    from sfsd.synth import synthesize

    dtype = parse_dtype(args.dtype, allow_auto=False)
    start = time.perf_counter()
    out = synthesize(args.out, args.arch, args.hidden, args.intermediate, args.heads, args.kv_heads or args.heads,
                     args.blocks, dtype, args.seed, args.overwrite)
    print(f"wrote {out} ({args.arch}, {args.blocks} blocks of hidden {args.hidden}, {args.dtype}) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
