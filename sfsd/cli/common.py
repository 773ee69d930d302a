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


def read_ranks(source: str) -> dict[str, int]:
    """Per-layer ranks: a JSON file {module name: rank}, or a run's allocation (a run id in the cache, or its
    result.json), so one search's ranks can be built again with another --factors or --calibration-stream."""
    from sfsd.paths import runs_dir

    run_result = runs_dir() / source / "result.json"
    path = run_result if "/" not in source and run_result.is_file() else Path(source)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise SfsdError(f"--ranks {source}: no such file or run: pass a JSON file of {{module name: rank}} or a "
                        "finished run's id") from exc
    except json.JSONDecodeError as exc:
        raise SfsdError(f"ranks file {path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
    if isinstance(data, dict) and isinstance(data.get("ranks"), dict):  # a run's result.json
        data = data["ranks"]
    if not isinstance(data, dict):
        raise SfsdError(f"ranks file {path} must hold a JSON object {{module name: rank}}")
    return data


def fmt_int(value: float) -> str:
    return f"{value / 1e6:,.2f}M" if value >= 1e6 else f"{value:,.0f}"
