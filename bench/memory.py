"""Memory: peak resident set of a full surgical search of the default model, run in a subprocess.

The search runs from scratch in a private cache (calibration statistics and decompositions are computed,
not read from an earlier run; the data pack and the converted model are shared) and a fresh run root.
The parent reads the child's peak from resource.getrusage(RUSAGE_CHILDREN).ru_maxrss after it exits,
and samples the child's resident set with psutil twice a second to say in which phase the peak fell
(set-up: load, calibration, decompositions, base value, prefix; search: the trials).

    python -m bench.memory                  # smollm2-135m, all blocks, ppl on 8 x 128 tokens
    python -m bench.memory --first-block 24 # a shorter search
    python -m bench.memory --quick          # tiny random LLaMA (smoke test)
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    QUICK_NOTE,
    REPO_ROOT,
    RESULTS_DIR,
    init,
    machine_line,
    md_table,
    parser,
    tiny_model_dir,
    use_private_cache,
    write_result,
)


def child(config_json: str, root: str, device: str) -> int:
    import psutil
    import transformers  # noqa: F401

    from sfsd.search import SearchConfig, run_search

    after_imports = psutil.Process().memory_info().rss

    config = SearchConfig.from_dict(json.loads(config_json))
    run = run_search(config, root=Path(root), device=device, progress=False)
    result = run.result() or {}
    print(json.dumps({"run_id": run.id, "overall_budget": result.get("overall_budget"),
                      "trials": result.get("trials"), "layers": len(run.decisions()),
                      "rss_after_imports": after_imports}))
    return 0


def sample(process, root: Path, interval: float = 0.5) -> tuple[list[tuple[float, str, int]], int]:
    """(time, phase, rss) samples of a running child until it exits; returns them and the exit code."""
    import psutil

    samples = []
    start = time.perf_counter()
    handle = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            rss = handle.memory_info().rss
        except psutil.Error:
            break
        phase = "search" if any(root.glob("*/trace.jsonl")) else "set-up"
        samples.append((time.perf_counter() - start, phase, rss))
        time.sleep(interval)
    return samples, process.wait()


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--first-block", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=0.05)
    p.add_argument("--reuse-decompositions", action="store_true",
                   help="keep the private cache's decompositions from an earlier run (peak of the search alone)")
    p.add_argument("--child-config", help=_hidden())
    p.add_argument("--child-root", help=_hidden())
    args = p.parse_args(argv)
    started = init(args)
    if args.child_config:
        return child(args.child_config, args.child_root, args.device or "cpu")

    import torch

    from sfsd.compress import CalibrationSpec
    from sfsd.models import DEFAULT_MODEL
    from sfsd.paths import runs_dir
    from sfsd.search import MetricSpec, SearchConfig

    real_runs = runs_dir()  # before the switch to the private cache
    cache = use_private_cache("memory-quick" if args.quick else "memory")
    if args.quick:
        model_name = str(tiny_model_dir())
        metric = MetricSpec(name="ppl", tolerance=args.tolerance, samples=4, seq_len=32, batch_size=4)
        calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
    else:
        model_name = DEFAULT_MODEL
        metric = MetricSpec(name="ppl", tolerance=args.tolerance, samples=8, seq_len=128, batch_size=8)
        calibration = CalibrationSpec()
    config = SearchConfig(model=model_name, metric=metric, calibration=calibration, first_block=args.first_block)
    if not args.reuse_decompositions:
        shutil.rmtree(cache / "decompositions", ignore_errors=True)
    device = args.device or "cpu"
    (RESULTS_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(dir=RESULTS_DIR / "tmp", prefix="memory-runs-"))
    command = [sys.executable, "-m", "bench.memory", "--child-config", json.dumps(config.to_dict()),
               "--child-root", str(root), "--device", device, "--threads", str(torch.get_num_threads())]
    print(f"memory: full search of {model_name} from block {args.first_block} in a subprocess "
          f"(fresh decompositions: {not args.reuse_decompositions})", flush=True)
    start = time.perf_counter()
    kept = None
    try:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=os.environ.copy(), stdout=subprocess.PIPE, text=True)
        samples, code = sample(process, root)
        out = process.stdout.read() if process.stdout else ""
        if code == 0 and not args.quick:
            kept = keep_run(root, real_runs)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the search subprocess failed with exit code {code}")
    summary = json.loads(out.strip().splitlines()[-1])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
    by_phase = {}
    for _, phase, rss in samples:
        by_phase[phase] = max(by_phase.get(phase, 0), rss)
    from sfsd.models import resolve_model

    params = _param_bytes(resolve_model(model_name))
    gib = 2**30
    rows = [["peak resident set (ru_maxrss of the child)", peak / gib],
            *[[f"sampled peak during {phase}", value / gib] for phase, value in by_phase.items()],
            ["resident set after imports (torch, transformers, sfsd)", summary["rss_after_imports"] / gib],
            ["peak above that", (peak - summary["rss_after_imports"]) / gib],
            ["model parameters (fp32 bytes)", params / gib]]
    table = md_table(["quantity", "GiB"], rows)
    notes = [
        f"Search: `{model_name.rsplit('/', 1)[-1]}`, feature space, blocks {args.first_block}.., ppl metric on "
        f"{metric.samples} x {metric.seq_len} tokens, tolerance {metric.tolerance}, calibration "
        f"{calibration.source} {calibration.samples} x {calibration.seq_len}; {summary['layers']} layers decided, "
        f"{summary['trials']} trials, overall budget {summary['overall_budget']:.4f}; {seconds:.0f} s on {device}.",
        "Fresh decompositions: " + ("no (reused)" if args.reuse_decompositions else
                                    "yes (calibration and decompositions inside the measured process)") + ".",
        *([f"The finished run is kept in the run store as `{kept}` (the dashboard and `bench.quality` read it)."]
          if kept else []),
        "Samples: psutil RSS of the child every 0.5 s; the phase is 'search' once the run's trace exists.",
        f"Machine: {machine_line()}.",
    ]
    markdown = table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    data = {"title": "Memory of a full search", "model": model_name, "first_block": args.first_block,
            "peak_rss_bytes": peak, "peak_by_phase": by_phase, "param_bytes": params, "seconds": seconds,
            "run": summary, "samples": samples[:: max(1, len(samples) // 400)],
            "note": QUICK_NOTE if args.quick else None}
    write_result("memory", args, data, markdown, started)
    return 0


def keep_run(root: Path, store: Path) -> str | None:
    """Copy the finished run into the real run store unless a run with that id is already there: the
    same config gives the same id as `sfsd search`, so the hour it took is not spent again."""
    for folder in root.iterdir():
        if folder.is_dir() and (folder / "trace.jsonl").exists() and not (store / folder.name).exists():
            store.mkdir(parents=True, exist_ok=True)
            staging = store / f".{folder.name}.copying"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(folder, staging, ignore=shutil.ignore_patterns("lock", "prefix"))
            staging.rename(store / folder.name)
            return folder.name
    return None


def _param_bytes(folder: str) -> int:
    from safetensors import safe_open

    total = 0
    for file in Path(folder).glob("*.safetensors"):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                sl = handle.get_slice(key)
                count = 1
                for dim in sl.get_shape():
                    count *= dim
                total += count * 4
    return total


def _hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
