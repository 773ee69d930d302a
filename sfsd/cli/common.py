"""Flags and helpers shared by several commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfsd.errors import SfsdError
from sfsd.models import DEFAULT_MODEL


def add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"short name ({DEFAULT_MODEL}), local folder or hub id (default: %(default)s)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available)")
    add_dtype_flag(parser)


def add_dispatch_flags(parser: argparse.ArgumentParser) -> None:
    """accelerate's big-model loading, for models larger than the device."""
    parser.add_argument("--device-map", default=None, choices=["auto", "sequential", "balanced"],
                        help="spread the model over the GPUs, the CPU and disk with accelerate")
    parser.add_argument("--max-memory", default=None, help="with --device-map: e.g. 0=20GiB,cpu=60GiB")
    parser.add_argument("--offload-dir", default=None, help="with --device-map: folder for weights put on disk")


def placement_from_args(args: argparse.Namespace):
    """The --device and dispatch flags of a command as one Placement (a plain device when no map is given)."""
    from sfsd.models import Placement

    if getattr(args, "device_map", None) is None and not getattr(args, "max_memory", None) \
            and not getattr(args, "offload_dir", None):
        return args.device
    return Placement(args.device, args.device_map, args.max_memory, args.offload_dir)


def add_dtype_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dtype", default="auto",
                        help="auto, float32, bfloat16 or float16 (default: auto = the checkpoint's dtype on CUDA, "
                             "float32 on CPU)")


def add_calibration_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("calibration")
    group.add_argument("--calib-source", default="mix",
                       help="offline: mix (equal share of each pack task), wiki, a task name, random; "
                       "with the hub: paper-mix (the six paper tasks' train splits), wikitext2, c4 "
                       "(default: %(default)s)")
    group.add_argument("--calib-samples", type=int, default=512, help="number of sequences (default: 512)")
    group.add_argument("--calib-seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    group.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default: 0)")
    group.add_argument("--batch-size", type=int, default=16, help="calibration batch size (default: 16)")


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
