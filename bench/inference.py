"""Inference: tokens per second of compressed models at overall budgets of about 90 %, 80 % and 50 % against
the base model (same batch and sequence length; forward passes that score every position, as evaluation
and the search do), and the peak memory of each.

The compressed models apply one beta to every layer of every block (feature space, so their overall budget
is about beta) and are saved and loaded as Hugging Face folders, as a user would deploy them: q/k/v and
gate/up with shared first factors (one GEMM per input group, `sfsd.decompose.fusion`). The ~50 % model also
runs with its groups undone ("~50% unfused": one first GEMM per layer, as saved before), so that what the
shared GEMM gains is measured in the same alternation. Two more ~50 % models store their thin layers as compact
factors (`--factors compact`, Eq. ID: r pivot columns of the first factor fixed to the identity, r (d1 + d2 - r)
weights, not fused): "50% compact" at beta 0.5 counted in that format (the same budget, higher ranks) and
"50% compact, same ranks" at the ranks of the two-factor ~50 % model (fewer weights and MACs). Their
decompositions come from one small calibration (64 x 128 tokens of wiki; speed does not depend on it).

Speed: the models run in turn (base, 90 %, 80 %, 50 %, base, ...) for several repetitions; speed-up =
median of the per-repetition ratios base time / model time; ideal = base MACs / model MACs (torch's flop
counter), and "of ideal" = speed-up / ideal.

Memory: each model is loaded and run in its own subprocess. On CPU the figures are resident set sizes
relative to the subprocess after its imports: after loading, and the peak of one forward pass (the peak is
reset through /proc/self/clear_refs after a tiny warm-up forward, so one-time lazy initialisation of torch
is not mistaken for activations); on CUDA, torch.cuda.max_memory_allocated. (tracemalloc does not see
torch's allocations, and an in-process RSS delta is polluted by the models loaded before.)

    python -m bench.inference            # smollm2-135m, batch 8 x 128 tokens, CPU (and CUDA if present)
    python -m bench.inference --quick    # tiny random LLaMA (smoke test)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    QUICK_NOTE,
    REPO_ROOT,
    alternate,
    fmt,
    init,
    machine_line,
    md_table,
    median,
    parser,
    ratio_summary,
    repeats,
    seconds_of,
    sync,
    tiny_model_dir,
    use_private_cache,
    write_result,
)

BETAS = (0.9, 0.8, 0.5)
FULL_CALIBRATION = dict(source="wiki", samples=64,
                        seq_len=128)  # CalibrationSpec of the full-size models (bench.profile_hotspots too)
TARGET_50 = 1.6  # a 50 %-budget model should run >= 1.6x the base model's tokens/s on CPU (issue 15)
UNFUSED = "50% unfused"  # the ~50 % model with its shared first factors undone
COMPACT = "50% compact"  # beta 0.5 counted in compact factors: the same budget, higher ranks
SAME_RANKS = "50% compact, same ranks"  # the two-factor ~50 % model's ranks, stored compact
# model name -> (beta, the factor format saved, the format whose Eq. 3 gives the ranks)
VARIANTS = {**{f"{beta:.0%}": (beta, "two-factor", "two-factor") for beta in BETAS},
            COMPACT: (0.5, "compact", "compact"), SAME_RANKS: (0.5, "compact", "two-factor")}


def _folder_name(base: str, beta: float, factors: str, rank_factors: str) -> str:
    suffix = {"two-factor": "", "compact": "-compact"}[factors] + ("-sameranks" if factors != rank_factors else "")
    return f"bench-inference-{base}-feature-b{int(beta * 100)}{suffix}"


def build_models(model_name: str, calibration, quick: bool) -> dict[str, Path]:
    """Base folder and one compressed folder per variant (built once, reused)."""
    from sfsd.compress import Compressor, save_compressed
    from sfsd.decompose import uniform_ranks
    from sfsd.models import load_model, resolve_model
    from sfsd.paths import models_dir

    base_dir = Path(resolve_model(model_name))
    folders = {"base": base_dir}
    todo = {}
    for name, variant in VARIANTS.items():
        folder = models_dir() / _folder_name(base_dir.name, *variant)
        folders[name] = folder
        if not (folder / "config.json").exists():
            todo[folder] = variant
        elif "sfsd_fused" not in json.loads((folder / "config.json").read_text()):
            _upgrade(folder)
    if todo:
        model, tokenizer = load_model(str(base_dir), "cpu")
        start = time.perf_counter()
        shared = Compressor(model, tokenizer, "feature", calibration, progress=not quick)
        decs = shared.decompose()
        print(f"  decompositions of {len(decs)} layers in {time.perf_counter() - start:.1f} s", flush=True)
        for folder, (beta, factors, rank_factors) in todo.items():
            copy_ = copy.deepcopy(model)
            compressor = Compressor(copy_, tokenizer, "feature", calibration, progress=False, factors=factors)
            compressor.decompositions = decs
            blocks = compressor.adapter.num_blocks
            ranks = uniform_ranks(compressor.layers, beta, blocks, blocks, rank_factors)
            compressor.apply(ranks, {"protocol": "uniform", "beta": beta, "last_blocks": blocks})
            save_compressed(copy_, tokenizer, folder, overwrite=True)
            del copy_
    return folders


def _upgrade(folder: Path) -> None:
    """Re-save a folder built before shared first factors existed in today's format (the same weights:
    sfsd's loader stacks the first factors of each group)."""
    from sfsd.compress import save_compressed
    from sfsd.models import load_model

    model, tokenizer = load_model(str(folder), "cpu")
    save_compressed(model, tokenizer, folder, overwrite=True)


def throughput(folders: dict[str, Path], device: str, batch: int, seq_len: int, reps: int,
               target_seconds: float) -> dict[str, Any]:
    import torch

    from sfsd.accounting import count_parameters, measure_macs
    from sfsd.compress import describe
    from sfsd.decompose.fusion import unfuse_shared_inputs
    from sfsd.models import load_model

    models, info = {}, {}
    for name, folder in folders.items():
        model, _ = load_model(str(folder), device)
        models[name] = model
        described = describe(model, macs=False)
        info[name] = {"folder": str(folder), "params": count_parameters(model),
                      "overall_budget": described["overall_budget"], "macs": measure_macs(model, seq_len)}
    if "50%" in models:
        models[UNFUSED] = copy.deepcopy(models["50%"])
        unfuse_shared_inputs(models[UNFUSED])
        info[UNFUSED] = {**info["50%"], "macs": measure_macs(models[UNFUSED], seq_len)}
    vocab = models["base"].config.vocab_size
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0)).to(device)

    @torch.no_grad()
    def forward(model) -> None:
        model(input_ids=ids, use_cache=False)

    # Iterations per sample: enough for about `target_seconds` on the base model (after one warm-up).
    for model in models.values():
        forward(model)
    sync(device)
    start = time.perf_counter()
    forward(models["base"])
    sync(device)
    one = time.perf_counter() - start
    iters = max(1, round(target_seconds / max(one, 1e-6)))

    def case(model):
        def run() -> float:
            sync(device)
            start = time.perf_counter()
            for _ in range(iters):
                forward(model)
            sync(device)
            return time.perf_counter() - start

        return run

    print(f"  {device}: {iters} forward(s) of {batch} x {seq_len} tokens per sample, {reps} repetitions", flush=True)
    times = alternate({name: case(model) for name, model in models.items()}, reps)
    tokens = batch * seq_len * iters
    base_times = seconds_of(times["base"])
    out = {}
    for name, values in times.items():
        secs = seconds_of(values)
        speed = ratio_summary(base_times, secs)
        ideal = info["base"]["macs"] / info[name]["macs"]
        out[name] = {**info[name], "seconds": secs, "tokens_per_s": tokens / median(secs),
                     "speedup": speed, "ideal": ideal, "of_ideal": speed["median"] / ideal}
    del models
    return {"iters": iters, "tokens_per_sample": tokens, "models": out}


def _hwm() -> int | None:
    """Peak resident set of this process (VmHWM), in bytes."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_hwm() -> bool:
    """Reset the peak resident set to the current one (Linux >= 4.0: write 5 to /proc/self/clear_refs)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child_memory(folder: str, device: str, batch: int, seq_len: int) -> dict[str, Any]:
    """Run in a fresh subprocess: load one model, run one forward, report its memory.

    rss_* are resident set sizes: after the imports (baseline), after loading, and the peak of the measured
    forward (after a tiny warm-up forward, so lazy one-time initialisation is not counted as activations;
    the peak is reset just before it). load_peak is the peak while loading (transient copies included)."""
    import resource

    import psutil
    import torch
    import transformers  # noqa: F401  imported before the baseline is taken

    import sfsd  # noqa: F401
    from sfsd.models import load_model

    process = psutil.Process()
    baseline = process.memory_info().rss
    resettable = _reset_hwm()
    model, _ = load_model(folder, device)
    loaded = process.memory_info().rss
    load_peak = _hwm() if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():
        model(input_ids=torch.zeros(1, 8, dtype=torch.long, device=device), use_cache=False)  # warm-up
    sync(device)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len)).to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        weights_gpu = torch.cuda.memory_allocated()
    before = process.memory_info().rss
    _reset_hwm()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    sync(device)
    peak = _hwm() if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {"param_bytes": param_bytes, "rss_baseline": baseline, "rss_loaded": loaded, "load_peak": load_peak,
              "rss_before_forward": before, "rss_peak": peak, "forward_delta": peak - before,
              "rss_peak_delta": peak - baseline, "peak_reset": resettable}
    if device.startswith("cuda"):
        result |= {"cuda_weights": weights_gpu, "cuda_peak": torch.cuda.max_memory_allocated()}
    return result


def memory(folders: dict[str, Path], device: str, batch: int, seq_len: int, threads: int) -> dict[str, Any]:
    out = {}
    for name, folder in folders.items():
        command = [sys.executable, "-m", "bench.inference", "--child", str(folder), "--device", device,
                   "--batch", str(batch), "--seq-len", str(seq_len), "--threads", str(threads)]
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ.copy())
        if done.returncode != 0:
            raise RuntimeError(f"memory child for {name} failed:\n{done.stderr[-2000:]}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


def _memory_cells(mem: dict | None, device: str) -> list:
    """The memory columns of one row (dashes for a variant that has no folder of its own)."""
    if mem is None:
        return [None] * (2 if device.startswith("cuda") else 5)
    cells = [mib(mem["param_bytes"])]
    if device.startswith("cuda"):
        return cells + [mib(mem["cuda_peak"])]
    return cells + [mib(mem["rss_loaded"] - mem["rss_baseline"]), mib(mem["forward_delta"]),
                    mib(mem["rss_peak_delta"]), mib(mem["load_peak"] - mem["rss_baseline"])]


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=None, help="sequences per forward (default 8; quick 2)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 128; quick 32)")
    p.add_argument("--seconds", type=float, default=None, help="target seconds per timed sample (default 2)")
    p.add_argument("--child", help=argparse_hidden())
    args = p.parse_args(argv)
    started = init(args)

    import torch

    if args.child:
        print(json.dumps(child_memory(args.child, args.device or "cpu", args.batch, args.seq_len)))
        return 0

    from sfsd.compress import CalibrationSpec
    from sfsd.models import DEFAULT_MODEL

    if args.quick:
        use_private_cache("inference")
        model_name, calibration = str(tiny_model_dir()), CalibrationSpec(source="wiki", samples=8, seq_len=32)
        batch, seq_len, seconds = args.batch or 2, args.seq_len or 32, args.seconds or 0.2
    else:
        model_name, calibration = DEFAULT_MODEL, CalibrationSpec(**FULL_CALIBRATION)
        batch, seq_len, seconds = args.batch or 8, args.seq_len or 128, args.seconds or 2.0
    reps = repeats(args, full=5, quick=2)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    threads = torch.get_num_threads()

    print(f"inference: {model_name}, budgets {BETAS}, batch {batch} x {seq_len}", flush=True)
    folders = build_models(model_name, calibration, args.quick)
    results = {}
    for device in devices:
        results[device] = {"speed": throughput(folders, device, batch, seq_len, reps, seconds),
                           "memory": memory(folders, device, batch, seq_len, threads)}

    sections, verdicts = [], []
    for device, result in results.items():
        models, mem = result["speed"]["models"], result["memory"]
        rows = []
        for name, m in models.items():
            row = [name if name == "base" else f"~{name}", m["overall_budget"], m["params"], m["macs"],
                   m["tokens_per_s"], m["speedup"]["median"], m["speedup"]["range"], m["ideal"], m["of_ideal"]]
            rows.append(row + _memory_cells(mem.get(name), device))
        headers = ["model", "overall budget", "params", f"MACs (seq {seq_len})", "tokens/s (median)",
                   "speed-up (median)", "range", "ideal (MAC ratio)", "of ideal", "param MiB"]
        headers += (["peak CUDA MiB"] if device.startswith("cuda")
                    else ["loaded RSS MiB", "forward peak +MiB", "peak RSS MiB", "load peak MiB"])
        sections.append(f"**{device}** ({result['speed']['iters']} forward(s) of {batch} x {seq_len} tokens per "
                        f"sample, {reps} alternated repetitions)\n\n" + md_table(headers, rows))
        half = models.get("50%")
        if half and device == "cpu":
            met = half["speedup"]["median"] >= TARGET_50
            verdicts.append(f"target ~50% model >= {TARGET_50}x base tokens/s on CPU: **{'met' if met else 'NOT met'}**"
                            f" ({half['speedup']['median']:.2f}x; ideal {half['ideal']:.2f}x, "
                            f"{half['of_ideal']:.0%} of it)")
        if half and UNFUSED in models:
            gain = ratio_summary(models[UNFUSED]["seconds"], half["seconds"])
            unfused = models[UNFUSED]["speedup"]["median"]
            verdicts.append(f"{device}: shared first factors, ~50% model fused vs unfused: {gain['median']:.3f}x "
                            f"[{fmt(gain['range'])}] (median of paired ratios; unfused: {unfused:.2f}x the base)")
        verdicts += compact_verdicts(device, models)
    notes = [
        f"Model `{Path(model_name).name}`; compressed models: feature space, one beta ({', '.join(map(str, BETAS))}) "
        "on every layer of every block, saved and loaded as Hugging Face folders. Forward passes with "
        "`use_cache=False`, logits for every position (as in scoring and perplexity).",
        "Speed-up = median over repetitions of (base time / model time), measured back to back; ideal = base "
        "MACs / model MACs; 'of ideal' = speed-up / ideal. Tokens/s are absolute and not claims.",
        f"`~{COMPACT}`: beta 0.5 with each thin layer stored compact (Eq. ID, r (d1 + d2 - r) weights; compact "
        f"layers are not fused), so higher ranks at the same budget; `~{SAME_RANKS}`: the ranks of `~50%`, stored "
        "compact (fewer weights and MACs at the same rank).",
        f"`~{UNFUSED}`: the ~50 % model in memory with its shared first factors undone (each of q/k/v and "
        "gate/up runs its own first GEMM), alternated with the others; it has no memory figures of its own.",
        "Memory: one subprocess per model, resident set sizes relative to the process after importing torch, "
        "transformers and sfsd: `loaded RSS` after loading the model; `forward peak +` = the peak during one "
        "forward above the RSS just before it (peak reset through /proc/self/clear_refs after a tiny warm-up "
        "forward, so one-time lazy initialisation is not counted); `peak RSS` = loaded + runtime warm-up + "
        "that peak; `load peak` = the peak while loading (transient copies). `param MiB` = parameter bytes. "
        "CUDA: torch.cuda.max_memory_allocated.",
        f"Machine: {machine_line()}.",
    ]
    markdown = "\n\n".join(sections) + "\n\n" + "\n".join(f"- {v}" for v in verdicts + notes)
    data = {"title": "Inference speed and memory", "model": model_name, "batch": batch, "seq_len": seq_len,
            "betas": list(BETAS), "repeats": reps, "results": results,
            "folders": {k: str(v) for k, v in folders.items()}, "note": QUICK_NOTE if args.quick else None}
    write_result("inference", args, data, markdown, started)
    return 0


def compact_verdicts(device: str, models: dict[str, dict]) -> list[str]:
    """Compact vs two-factor layers, as paired ratios of the same alternation (> 1: compact is faster)."""
    lines = []
    pairs = [(SAME_RANKS, UNFUSED, "same ranks, vs two-factor unfused"),
             (SAME_RANKS, "50%", "same ranks, vs two-factor fused"),
             (COMPACT, "50%", "same budget (higher ranks), vs two-factor fused")]
    for compact, two, what in pairs:
        if compact in models and two in models:
            gain = ratio_summary(models[two]["seconds"], models[compact]["seconds"])
            macs = models[two]["macs"] / models[compact]["macs"]
            lines.append(f"{device}: compact factors, {what}: {gain['median']:.3f}x tokens/s [{fmt(gain['range'])}] "
                         f"(MAC ratio {macs:.3f})")
    return lines


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    sys.exit(main())
