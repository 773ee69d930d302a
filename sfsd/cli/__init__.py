"""The `sfsd` command line: one module per command group, user errors as one line."""

from __future__ import annotations

import argparse
import functools
import importlib
import logging
import os
import sys

from sfsd import options
from sfsd.errors import SfsdError
from sfsd.options import add_flags
from sfsd.runtime import keep_freed_memory

# Each module has `register(subparsers)`; a subcommand sets `func(args) -> int`.
COMMAND_MODULES = [
    "sfsd.cli.prepare", "sfsd.cli.compress", "sfsd.cli.data", "sfsd.cli.evaluate", "sfsd.cli.search", "sfsd.cli.runs",
    "sfsd.cli.synth",
    "sfsd.cli.frontier",
]


def build_parser() -> argparse.ArgumentParser:
    # No abbreviations: `sfsd ppl --model X` must not be read as `--model-key X` (and silently score the default).
    parser = argparse.ArgumentParser(prog="sfsd", description="Surgical Feature-Space Decomposition of LLMs",
                                     allow_abbrev=False)
    add_flags(parser, options.VERBOSE)
    subparsers = parser.add_subparsers(dest="command", required=True,
                                       parser_class=functools.partial(argparse.ArgumentParser, allow_abbrev=False))
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # command group not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "model_flag", None) is not None:  # `--model X` where the model is also positional
        if args.model not in (args.model_flag, getattr(args, "model_default", None)):
            parser.error(f"two models given ({args.model} and --model {args.model_flag}): give one")
        args.model = args.model_flag
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _quiet_libraries(args.verbose)
    keep_freed_memory()
    try:
        return int(args.func(args) or 0)
    except SfsdError as exc:
        print(f"sfsd: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        missing = dtype_op_missing(exc)
        if missing is None:
            raise
        print(f"sfsd: error: {missing}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sfsd: interrupted; finished results are kept, partial ones were discarded", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sfsd runs | head`: the reader left; say nothing more, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


def dtype_op_missing(exc: RuntimeError) -> str | None:
    """torch's "X not implemented for 'Half'" (an op this device lacks in that dtype) as a one-line hint."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if "not implemented for" not in first:
        return None
    return f"{first[:160]}: this device has no such operation in that dtype; use --dtype float32 (or run on CUDA)"


def _quiet_libraries(verbose: bool) -> None:
    """transformers' own loading bars and warnings drown our progress; keep them for --verbose."""
    if verbose:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
