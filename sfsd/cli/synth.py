"""`sfsd synth`: a random model folder of any published shape (memory and time before a download)."""

from __future__ import annotations

import argparse
import time

from sfsd.synth import SYNTH_ARCHS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "synth", help="write a random-initialised model of a given shape",
        description="Write a seeded random model (safetensors, with the default model's tokenizer), e.g. "
                    "LLaMA-7B's shape: --hidden 4096 --intermediate 11008 --heads 32 --kv-heads 32 --blocks 32.")
    p.add_argument("--arch", default="llama", choices=SYNTH_ARCHS, help="architecture (default: %(default)s)")
    p.add_argument("--hidden", type=int, required=True, help="hidden size")
    p.add_argument("--intermediate", type=int, required=True, help="MLP intermediate size")
    p.add_argument("--heads", type=int, required=True, help="attention heads")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads (default: --heads)")
    p.add_argument("--blocks", type=int, required=True, help="decoder blocks")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
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
