"""Profiling evidence for the benchmarks: where the time of the statistics pass and of a search goes.

    python -m bench.profile_hotspots calibration [--quick]   # torch.profiler: stats pass vs plain forward
    python -m bench.profile_hotspots search [--quick]        # cProfile (Python) + torch.profiler (ops) of a search
    python -m bench.profile_hotspots search --py-spy         # also a py-spy speedscope file of the search
    python -m bench.profile_hotspots inference [--quick]     # torch.profiler: base vs ~50 % model forward

Default sizes are small slices of the default model (so they run in a minute or two); --quick uses even
fewer tokens. Output: tables on stdout and bench/results/profile-<target>[.speedscope].json|.txt.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time

from bench.common import REPO_ROOT, RESULTS_DIR, init, use_private_cache


def op_table(prof, rows: int = 15) -> str:
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)


def profile_calibration(args) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.calibration import plain_pass
    from sfsd.adapters import adapter_for
    from sfsd.calibration import choose_sides, collect_statistics
    from sfsd.compress import CalibrationSpec, calibration_tokens
    from sfsd.models import DEFAULT_MODEL, load_model

    samples, seq_len = (4, 64) if args.quick else (16, 128)
    model, tokenizer = load_model(DEFAULT_MODEL, "cpu")
    adapter = adapter_for(model)
    layers = adapter.layers()
    ids, mask = calibration_tokens(tokenizer, CalibrationSpec(source="wiki", samples=samples, seq_len=seq_len),
                                   model.config.vocab_size)
    sides = choose_sides(layers, output_side_ok=True)  # the feature-space methods' pass

    def stats_pass():
        collect_statistics(model, adapter, layers, ids, mask, 16, False, sides)

    stats_pass()  # warm-up
    plain_pass(model, ids, mask, 16)
    out = [f"default model, {samples} x {seq_len} tokens, {len(layers)} layers, torch threads "
           f"{torch.get_num_threads()}"]
    for name, fn in (("statistics pass (feature-space methods)", stats_pass),
                     ("plain forward", lambda: plain_pass(model, ids, mask, 16))):
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            fn()
        out.append(f"\n== {name}: {time.perf_counter() - start:.2f} s (profiled)\n{op_table(prof)}")
    return "\n".join(out)


def search_config(args, engine: str = "fast"):
    from sfsd.compress import CalibrationSpec
    from sfsd.models import DEFAULT_MODEL
    from sfsd.search import MetricSpec, SearchConfig

    samples, seq_len = (2, 64) if args.quick else (8, 128)
    return SearchConfig(model=DEFAULT_MODEL,
                        metric=MetricSpec(name="ppl", tolerance=0.05, samples=samples, seq_len=seq_len,
                                                               batch_size=8),
                        calibration=CalibrationSpec(source="wiki", samples=8,
                                                    seq_len=64), first_block=28, engine=engine)


def profile_search(args) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from sfsd.models import load_model
    from sfsd.search import run_search
    from sfsd.search.surgical import cached_decompositions, search_layers

    config = search_config(args, args.engine)
    model, tokenizer = load_model(config.model, "cpu")
    cached_decompositions(model, tokenizer, config, search_layers(model, config), progress=False)
    del model
    (RESULTS_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    out = [f"default model, blocks 28..29, {config.engine} engine, ppl on {config.metric.samples} x "
           f"{config.metric.seq_len} tokens, torch threads {torch.get_num_threads()} (decompositions cached)"]
    root = tempfile.mkdtemp(dir=RESULTS_DIR / "tmp", prefix="profile-")
    try:
        python = cProfile.Profile()
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            python.enable()
            run = run_search(config, root=root, progress=False)
            python.disable()
        seconds = time.perf_counter() - start
        trials = run.trials()
        out.append(f"{len(trials)} trials, {sum(t['seconds'] for t in trials):.2f} s in trials, {seconds:.2f} s "
                   "in all (profiled)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = io.StringIO()
    stats = pstats.Stats(python, stream=text).sort_stats("cumulative")
    stats.print_stats(r"sfsd|safetensors|_files|fsync", 30)
    out.append("\n== Python (cProfile, cumulative, sfsd frames)\n" + text.getvalue())
    out.append("\n== torch ops (self CPU time)\n" + op_table(prof, 20))
    if args.py_spy:
        target = RESULTS_DIR / "profile-search.speedscope.json"
        command = [str(REPO_ROOT / ".venv" / "bin" / "py-spy"), "record", "-o", str(target), "--format",
                   "speedscope", "--", sys.executable, "-m", "bench.search_speed", "--quick", "--repeats", "1"]
        code = subprocess.call(command, cwd=REPO_ROOT)
        out.append(f"\npy-spy of `bench.search_speed --quick --repeats 1`: {target} (exit {code}); open it at "
                   "https://www.speedscope.app")
    return "\n".join(out)


def profile_inference(args) -> str:
    """Where a forward pass of the base and of the ~50 % model (bench.inference's models) spends its time:
    ops grouped by input shape, so that the uncompressed output head's GEMM shows as its own row."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from bench.inference import FULL_CALIBRATION, build_models
    from sfsd.compress import CalibrationSpec
    from sfsd.models import DEFAULT_MODEL, load_model

    batch, seq_len = (2, 64) if args.quick else (8, 128)
    folders = build_models(DEFAULT_MODEL, CalibrationSpec(**FULL_CALIBRATION), quick=False)
    out = [f"default model, forward of {batch} x {seq_len} tokens (use_cache=False), torch threads "
           f"{torch.get_num_threads()}"]
    for name in ("base", "50%"):
        model, _ = load_model(str(folders[name]), "cpu")
        ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model(input_ids=ids, use_cache=False)  # warm-up
            start = time.perf_counter()
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(3):
                    model(input_ids=ids, use_cache=False)
        seconds = (time.perf_counter() - start) / 3
        table = prof.key_averages(group_by_input_shape=True).table(
            sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=24, max_shapes_column_width=60)
        out.append(f"\n== {name} ({folders[name].name}): {seconds:.3f} s per forward (profiled)\n{table}")
        del model
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("target", choices=["calibration", "search", "inference"])
    p.add_argument("--quick", action="store_true", help="fewer tokens")
    p.add_argument("--engine", default="fast", choices=["fast", "reference"], help="search target: which engine")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--py-spy", action="store_true", help="search target: also record a py-spy speedscope file")
    args = p.parse_args(argv)
    # The CLI's malloc setting and --threads, as in every benchmark (without the malloc setting, first
    # touches of freshly mapped pages dominate the elementwise ops).
    init(args)
    if args.target == "inference":  # reuses bench.inference's saved models in the normal cache
        text = profile_inference(args)
    else:
        use_private_cache("profile")
        text = profile_calibration(args) if args.target == "calibration" else profile_search(args)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"profile-{args.target}{'-' + args.engine if args.target == 'search' else ''}.txt"
    path.write_text(text + "\n")
    print(f"\n(written {path.relative_to(REPO_ROOT)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
