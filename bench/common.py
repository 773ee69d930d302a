"""Shared pieces of the benchmarks: machine and versions, alternated timing, results files, tiny models.

Method (every script): machines are shared and noisy, so a speed figure is always the ratio of two
things measured in the same process, alternating them (A B A B ...) over several repetitions. Each
repetition gives one paired ratio; the quoted figure is the median of those ratios. Absolute times are
printed too, but only the ratios are claims.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# After the switches above (transformers reads them when sfsd imports it); run_all imports it from here.
from sfsd.cache import versions  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
QUICK_NOTE = "quick mode (smoke test on a tiny model): the numbers below are not claims"


# ---------------------------------------------------------------- arguments


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes on a tiny random model: checks the script end to end in about a minute")
    p.add_argument("--repeats", type=int, default=None, help="alternated repetitions (default: 5, quick: 2)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: CPU, and CUDA too when available)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice; quick: 1, which on a busy shared machine "
                        "avoids threads waiting for each other at every small operation)")
    return p


def init(args: argparse.Namespace) -> float:
    """Apply --threads (quick mode: 1) and the CLI's malloc setting; return the start time of the benchmark."""
    import torch

    from sfsd.runtime import keep_freed_memory

    keep_freed_memory()  # as `sfsd` does, so that the benchmarks measure what users run

    threads = args.threads if args.threads is not None else (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    return time.perf_counter()


def repeats(args: argparse.Namespace, full: int = 5, quick: int = 2) -> int:
    return args.repeats if args.repeats is not None else (quick if args.quick else full)


# ---------------------------------------------------------------- machine and versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


# ---------------------------------------------------------------- timing


def sync(device: Any = None) -> None:
    import torch

    if device is not None and str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def alternate(cases: dict[str, Callable[[], Any]], repeats: int, warmup: int = 0,
              log: Callable[[str], None] | None = print) -> dict[str, list[Any]]:
    """Run the cases in turn (A B C A B C ...) `repeats` times; each case returns its seconds (a float)
    or a dict with at least "seconds". Returns the per-repetition results of each case."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    results: dict[str, list[Any]] = {name: [] for name in cases}
    for rep in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            value = fn()
            if value is None:
                value = time.perf_counter() - start
            results[name].append(value)
            if log:
                seconds = value["seconds"] if isinstance(value, dict) else value
                log(f"  rep {rep + 1}/{repeats} {name}: {seconds:.3f} s")
    return results


def seconds_of(values: Sequence[Any], key: str = "seconds") -> list[float]:
    return [v[key] if isinstance(v, dict) else float(v) for v in values]


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """numerator[i] / denominator[i] for each repetition (both measured back to back)."""
    return [n / d for n, d in zip(numerator, denominator, strict=True) if d > 0]


def median(values: Sequence[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: Sequence[float]) -> list[float] | None:
    """[min, max] of the values (how noisy the repetitions were)."""
    values = [v for v in values if v is not None]
    return [min(values), max(values)] if values else None


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, Any]:
    ratios = paired_ratios(numerator, denominator)
    return {"median": median(ratios), "range": spread(ratios), "ratios": ratios}


# ---------------------------------------------------------------- output


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, float) for v in value):
        return f"{fmt(value[0], digits)}–{fmt(value[1], digits)}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "—"
        if abs(value) >= 1e6:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(v if isinstance(v, str) else fmt(v) for v in row) + " |")
    return "\n".join(lines)


def write_result(name: str, args: argparse.Namespace, data: dict[str, Any], markdown: str,
                 started: float) -> Path:
    """bench/results/<name>[-quick].json (machine, versions, date, numbers, the Markdown) and print the table."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick" if args.quick else name
    header = f"### {data.get('title', name)}\n\n"
    if args.quick:
        header += f"_{QUICK_NOTE}._\n\n"
    body = header + markdown.strip() + "\n"
    payload = {
        "benchmark": name,
        "quick": bool(args.quick),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(),
        "argv": sys.argv[1:],
        "wall_seconds": time.perf_counter() - started,
        **data,
        "markdown": body,
    }
    path = RESULTS_DIR / f"{stem}.json"
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print()
    print(body)
    print(f"(written {path.relative_to(REPO_ROOT)}; {payload['wall_seconds']:.0f} s)")
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def machine_line(info: dict[str, Any] | None = None) -> str:
    info = info or machine()
    load = info.get("load_average")
    text = (f"{info['cpu']}, {info['cores_usable']} usable cores, torch threads {info['torch_threads']}")
    if load:
        text += f", load average {load[0]:.1f} at the start"
    return text


# ---------------------------------------------------------------- caches and tiny models


def use_private_cache(name: str) -> Path:
    """Point sfsd's cache at a private folder (runs, decompositions, evals, models) that shares the real
    data pack and the converted default model. Quick mode uses this so it never touches cache/runs."""
    from sfsd.paths import data_dir, models_dir

    pack, models = data_dir(), models_dir()  # the real ones, before the switch
    root = RESULTS_DIR / "cache" / name
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "data").exists():
        (root / "data").symlink_to(pack)
    (root / "models").mkdir(exist_ok=True)
    default = root / "models" / "smollm2-135m"
    if not default.exists() and (models / "smollm2-135m").exists():
        default.symlink_to(models / "smollm2-135m")
    os.environ["SFSD_CACHE_DIR"] = str(root)
    return root


def tiny_model_dir(blocks: int = 4, hidden: int = 64, intermediate: int = 96) -> Path:
    """A randomly initialised tiny LLaMA with the default model's real tokenizer (built once)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sfsd.models import DEFAULT_MODEL, resolve_model

    folder = RESULTS_DIR / "cache" / f"tiny-llama-{blocks}x{hidden}x{intermediate}"
    if (folder / "config.json").exists():
        return folder
    tokenizer_source = resolve_model(DEFAULT_MODEL)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=blocks, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=4096, pad_token_id=2, bos_token_id=1, eos_token_id=2)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tiny-"))
    LlamaForCausalLM(config).save_pretrained(tmp)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(tmp)
    os.replace(tmp, folder)
    return folder


def scaled_blocks(paper_blocks: int, num_blocks: int, paper_total: int = 32) -> int:
    """The paper's block count (of 32) scaled to this model: round(paper / 32 * blocks)."""
    return max(1, min(num_blocks, round(paper_blocks / paper_total * num_blocks)))
