"""Flags and helpers shared by several commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfsd import options
from sfsd.errors import SfsdError
from sfsd.options import add_config_flags, add_flags


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    add_flags(parser, options.MODEL, options.DEVICE, options.DTYPE)


def add_dispatch_flags(parser: argparse.ArgumentParser) -> None:
    """accelerate's big-model loading, for models larger than the device."""
    add_flags(parser, *options.PLACEMENT[1:])


def placement_from_args(args: argparse.Namespace):
    """The --device and dispatch flags of a command as one Placement (a plain device when no map is given)."""
    from sfsd.models import Placement

    if getattr(args, "device_map", None) is None and not getattr(args, "max_memory", None) \
            and not getattr(args, "offload_dir", None):
        return args.device
    return Placement(args.device, args.device_map, args.max_memory, args.offload_dir)


def add_calibration_flags(parser: argparse.ArgumentParser) -> None:
    from sfsd.compress import CalibrationSpec

    add_config_flags(parser.add_argument_group("calibration"), CalibrationSpec)


def split_list(text: str) -> list[str]:
    """A comma-separated flag's items."""
    return [t.strip() for t in text.split(",") if t.strip()]


def read_ranks(path: str) -> dict[str, int]:
    """A JSON file mapping full module names to ranks."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError as exc:
        raise SfsdError(f"ranks file {path} does not exist: pass a JSON file of {{module name: rank}}") from exc
    except json.JSONDecodeError as exc:
        raise SfsdError(f"ranks file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if not isinstance(data, dict):
        raise SfsdError(f"ranks file {path} must hold a JSON object {{module name: rank}}")
    return data


def fmt_int(value: float) -> str:
    return f"{value / 1e6:,.2f}M" if value >= 1e6 else f"{value:,.0f}"
