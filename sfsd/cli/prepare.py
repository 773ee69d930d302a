"""`sfsd prepare`: make the offline default model and the benchmark pack ready (once)."""

from __future__ import annotations

import argparse

from sfsd import options
from sfsd.models import BUNDLED
from sfsd.options import add_flags


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("prepare", help="convert the bundled default model and fetch the offline data pack")
    add_flags(p, options.PREPARE_MODEL.with_choices(BUNDLED))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sfsd.data import ensure_pack
    from sfsd.models import resolve_model

    print(f"model {args.model}: {resolve_model(args.model)}")
    print(f"offline data pack: {ensure_pack()}")
    return 0
