"""Scale: peak memory and time per block of `sfsd compress` on LLaMA-7B-shaped synthetic models.

Each case writes a random model with `sfsd synth` (LLaMA-7B's block: hidden 4096, intermediate 11008,
32 heads; the default model's 49k vocabulary, untied head) of 1, 2 and 4 blocks, then runs `sfsd compress`
through the command line in a fresh process (private cache: nothing is resumed) and reads that process's
peak resident set (ru_maxrss) and, where CUDA is present, torch.cuda.max_memory_allocated. Time per block
and memory per block are the slopes of a least-squares line through the depths; the projection to
LLaMA-7B (32 blocks), 13B (40) and 70B (80) adds the target's weights to the overhead measured here.

    python -m bench.scale                                  # 1, 2, 4 blocks; float32 and bfloat16
    python -m bench.scale --blocks 1,2 --dtypes float32    # a shorter measurement
    python -m bench.scale --quick                          # tiny widths (smoke test)
    python -m bench.scale --hidden 1024 --intermediate 2752 --heads 8   # a quarter of 7B's width
    python -m bench.scale --blocks 4 --name scale-4        # one more depth, in its own results file
    python -m bench.scale --combine scale,scale-4          # one table from stored results, nothing rerun
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from bench.common import QUICK_NOTE, RESULTS_DIR, init, machine_line, md_table, parser, write_result

GIB = 2**30
BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Published shapes (vocabulary 32000): blocks, hidden, intermediate, heads, kv heads.
TARGETS = {"LLaMA-7B": (32, 4096, 11008, 32, 32), "LLaMA-13B": (40, 5120, 13824, 40, 40),
           "LLaMA-2-70B": (80, 8192, 28672, 64, 8)}


def block_params(hidden: int, intermediate: int, heads: int, kv_heads: int) -> int:
    kv = hidden * (hidden // heads) * kv_heads
    return 2 * hidden * hidden + 2 * kv + 3 * hidden * intermediate + 2 * hidden


def block_stats_bytes(hidden: int, intermediate: int) -> int:
    """float64 sum x x^T of a block's three input groups of d = hidden and one of d = intermediate."""
    return 8 * (3 * hidden * hidden + intermediate * intermediate)


def slope(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (slope, intercept)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0
    return b, my - b * mx


def run_case(shape: dict, blocks: int, dtype: str, args, work: Path) -> dict:
    from sfsd.memory import measure_command

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "SFSD_CACHE_DIR": str(work / "cache")}
    model = work / f"synth-{blocks}-{dtype}"
    synth = measure_command(["synth", "--hidden", shape["hidden"], "--intermediate", shape["intermediate"],
                             "--heads", shape["heads"], "--kv-heads", shape["kv_heads"], "--blocks", blocks,
                             "--dtype", dtype, "--out", model], env=env)
    if synth["code"] != 0:
        raise SystemExit(f"sfsd synth failed: {synth['stderr'][-500:]}")
    argv = ["compress", "--model", model, "--dtype", dtype, "--method", args.method, "--beta", args.beta,
            "--calib-source", "random", "--calib-samples", args.calib_samples, "--calib-seq-len",
            args.calib_seq_len, "--batch-size", args.batch_size, "--out", work / f"out-{blocks}-{dtype}"]
    if args.device:
        argv += ["--device", args.device]
    print(f"sfsd {' '.join(map(str, argv))}", flush=True)
    result = measure_command(argv, env=env)
    shutil.rmtree(work / "cache" / "decompositions", ignore_errors=True)
    shutil.rmtree(model, ignore_errors=True)
    shutil.rmtree(work / f"out-{blocks}-{dtype}", ignore_errors=True)
    if result["code"] != 0:
        print(result["stderr"][-3000:], file=sys.stderr)
        return {"blocks": blocks, "dtype": dtype, "failed": result["stderr"].strip().splitlines()[-1:]}
    print(f"  {blocks} blocks {dtype}: peak RSS {result['peak_rss_bytes'] / GIB:.2f} GiB, "
          f"{result['seconds']:.0f} s", flush=True)
    return {"blocks": blocks, "dtype": dtype, "peak_rss_bytes": result["peak_rss_bytes"],
            "cuda_peak_bytes": result.get("cuda_peak_bytes"), "seconds": result["seconds"]}


def projections(shape: dict, dtype: str, cases: list[dict], beta: float) -> list[list]:
    """Host peak of a target = its weights in `dtype` + the overhead measured here (scaled by statistics)
    + the thin layers of its other blocks."""
    ok = [c for c in cases if c["dtype"] == dtype and "peak_rss_bytes" in c]
    if len(ok) < 2:
        return []
    per_block_measured, _ = slope([c["blocks"] for c in ok], [c["peak_rss_bytes"] for c in ok])
    per_second, _ = slope([c["blocks"] for c in ok], [c["seconds"] for c in ok])
    vocab = 49152
    params = lambda n: n * block_params(shape["hidden"], shape["intermediate"], shape["heads"],  # noqa: E731
                                        shape["kv_heads"]) + 2 * vocab * shape["hidden"] + shape["hidden"]
    overhead = ok[0]["peak_rss_bytes"] - params(ok[0]["blocks"]) * BYTES[dtype]
    own_stats = block_stats_bytes(shape["hidden"], shape["intermediate"])
    rows = []
    for name, (blocks, hidden, inter, heads, kv) in TARGETS.items():
        weights = (blocks * block_params(hidden, inter, heads, kv) + 2 * 32000 * hidden + hidden) * BYTES[dtype]
        # Each further block adds its thin replacement (beta of its weights, Eq. 3) while the original's
        # pages stay mapped (the safetensors file is memory-mapped); the overhead holds the first block's.
        thin = beta * block_params(hidden, inter, heads, kv) * BYTES[dtype] * (blocks - 1)
        scaled = overhead - own_stats + block_stats_bytes(hidden, inter) + thin
        device_block = block_params(hidden, inter, heads, kv) * BYTES[dtype] + block_stats_bytes(hidden, inter)
        # Eigendecompositions and SVDs dominate at large widths and grow with the cube of the width.
        width_ratio = ((hidden * inter) / (shape["hidden"] * shape["intermediate"])) ** 1.5
        rows.append([name, dtype, blocks, weights / GIB, (weights + scaled) / GIB, device_block / GIB,
                     per_second * blocks * width_ratio / 3600])
    rows.append(["(measured per block)", dtype, 1, block_params(shape["hidden"], shape["intermediate"],
                 shape["heads"], shape["kv_heads"]) * BYTES[dtype] / GIB, per_block_measured / GIB, None, None])
    return rows


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--blocks", default="1,2,4", help="depths to measure (default: %(default)s)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="default: %(default)s")
    p.add_argument("--method", default="feature")
    p.add_argument("--beta", default="0.5")
    p.add_argument("--calib-samples", type=int, default=32)
    p.add_argument("--calib-seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--hidden", type=int, default=4096, help="width (default: LLaMA-7B's %(default)s)")
    p.add_argument("--intermediate", type=int, default=11008, help="default: %(default)s")
    p.add_argument("--heads", type=int, default=32, help="default: %(default)s (head dim 128)")
    p.add_argument("--name", default="scale", help="results file bench/results/NAME.json (default: %(default)s)")
    p.add_argument("--combine", help="comma-separated results names: tabulate their cases together, run nothing")
    args = p.parse_args(argv)
    started = init(args)
    shape = ({"hidden": 256, "intermediate": 688, "heads": 8, "kv_heads": 8} if args.quick else
             {"hidden": args.hidden, "intermediate": args.intermediate, "heads": args.heads, "kv_heads": args.heads})
    if args.quick:
        args.calib_samples, args.calib_seq_len = 8, 32
    depths = [int(b) for b in args.blocks.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    cases, sources = [], []
    if args.combine:  # the cases of earlier invocations (each ran alone), nothing measured now
        for name in args.combine.split(","):
            stored = json.loads((RESULTS_DIR / f"{name.strip()}.json").read_text())
            cases += stored["cases"]
            shape = stored["shape"]
            sources.append({"name": name.strip(), **{k: stored.get(k) for k in ("date", "argv", "wall_seconds",
                                                                                 "machine")}})
        dtypes = list(dict.fromkeys(c["dtype"] for c in cases))
        cases.sort(key=lambda c: (dtypes.index(c["dtype"]), c["blocks"]))
    else:
        with tempfile.TemporaryDirectory(prefix="sfsd-scale-") as tmp:
            for dtype in dtypes:
                for blocks in depths:
                    cases.append(run_case(shape, blocks, dtype, args, Path(tmp)))
    gib = lambda v: None if v is None else v / GIB  # noqa: E731
    measured = md_table(["blocks", "dtype", "peak RSS (GiB)", "CUDA peak (GiB)", "compress (s)", "s per block"],
                        [[c["blocks"], c["dtype"], gib(c.get("peak_rss_bytes")), gib(c.get("cuda_peak_bytes")),
                          c.get("seconds"), None if "seconds" not in c else c["seconds"] / c["blocks"]]
                         for c in cases])
    projected = [row for dtype in dtypes for row in projections(shape, dtype, cases, float(args.beta))]
    projection = md_table(["model", "dtype", "blocks", "weights (GiB)", "projected host peak (GiB)",
                           "one block + statistics on the device (GiB)", "projected hours on this CPU"],
                          projected) if projected else "(fewer than two depths measured: no projection)"
    notes = [
        f"Shape: hidden {shape['hidden']}, intermediate {shape['intermediate']}, {shape['heads']} heads "
        f"({shape['kv_heads']} KV); vocabulary 49152, untied head. Method {args.method}, beta {args.beta}, every "
        f"block decomposed; calibration: random tokens, {args.calib_samples} x {args.calib_seq_len} (small, "
        f"to fit the time; the paper uses 512 x 128), batch {args.batch_size}.",
        "Peak RSS: ru_maxrss of the `sfsd compress` process (imports, loading, calibration, decompositions, "
        "saving). CUDA peak: torch.cuda.max_memory_allocated, only where CUDA is present.",
        "Projection: the target's weights (vocabulary 32000) in the dtype + the overhead measured at the "
        "smallest depth (runtime, calibration states, one block's statistics, rescaled to the target's "
        f"statistics size) + the thin layers of every further block (beta {args.beta} of its weights: the "
        "original's pages stay mapped from the safetensors file, clean pages the kernel can drop); "
        "hours: the measured seconds per block scaled by the cube of the width ratio "
        "((hidden x intermediate)^1.5: the eigendecompositions dominate), on this CPU; a rough guide only.",
        f"Machine: {machine_line()} (shared with other developers' jobs while it ran).",
    ]
    markdown = measured + "\n\n" + projection + "\n\n" + "\n".join(f"- {n}" for n in notes)
    if args.combine:
        notes.append("Measured by " + "; ".join(
            f"`python -m bench.scale {' '.join(src['argv'] or [])}` ({src['name']}.json, {src['date']}, "
            f"{src['wall_seconds'] or 0:.0f} s)" for src in sources)
            + "; the machine line above is of this tabulation, each source's own is in its JSON.")
        markdown = measured + "\n\n" + projection + "\n\n" + "\n".join(f"- {n}" for n in notes)
    write_result(args.name, args, {"title": "Scale: compress memory and time per block", "shape": shape,
                                 "cases": cases, "projection": projected, "sources": sources,
                                 "note": QUICK_NOTE if args.quick else None}, markdown, started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
