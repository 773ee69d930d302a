"""Search speed: the fast engine (prefix replay) against the reference loop (full model per trial) on the
same layers, metric and data, linear and bisect, alternated, each run in a fresh run root.

The decompositions are computed once before the timing (they are cached under <cache>/decompositions,
keyed by model, method, calibration and layers, and every run reuses them), so the timed part is the
search itself: model load, metric batches, base evaluation, prefix build (fast engine) and the trials.
Both the end-to-end time of `run_search` and the sum of the trials' own seconds are reported.

    python -m bench.search_speed                  # smollm2-135m, blocks 28..29, ppl on 8 x 128 tokens
    python -m bench.search_speed --quick          # tiny random LLaMA (smoke test)
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from typing import Any

from bench.common import (
    QUICK_NOTE,
    RESULTS_DIR,
    alternate,
    init,
    machine_line,
    md_table,
    median,
    parser,
    ratio_summary,
    repeats,
    seconds_of,
    spread,
    tiny_model_dir,
    use_private_cache,
    write_result,
)

TARGET_LINEAR = 3.0  # fast/linear must be >= 3x faster than the reference loop, with identical decisions


def search_config(model, engine, strategy, first_block, metric, calibration):
    from sfsd.search import SearchConfig

    return SearchConfig(model=model, method="feature", metric=metric, strategy=strategy, first_block=first_block,
                        calibration=calibration, engine=engine)


def one_search(config, device) -> dict[str, Any]:
    """One search from scratch in a private run root; returns its wall time, trial time and decisions."""
    from sfsd.search import run_search

    (RESULTS_DIR / "tmp").mkdir(parents=True, exist_ok=True)
    root = tempfile.mkdtemp(dir=RESULTS_DIR / "tmp", prefix="runs-")
    try:
        start = time.perf_counter()
        run = run_search(config, root=root, device=device, progress=False)
        wall = time.perf_counter() - start
        trials = run.trials()
        result = run.result() or {}
        return {
            "seconds": wall,
            "trial_seconds": sum(t["seconds"] for t in trials),
            "trials": len(trials),
            "trial_blocks": [t["block"] for t in trials],
            "decisions": [(d["layer"], d["rank"]) for d in run.decisions()],
            "overall_budget": result.get("overall_budget"),
            "final_metric": result.get("final_metric"),
            "base_metric": result.get("base_metric"),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def macs_model(model_dir: str, seq_len: int) -> dict[str, Any]:
    """Per-token MACs of each block (its linear layers plus causal attention, intact model) and of the head."""
    from transformers import AutoConfig

    from sfsd.models import resolve_model

    config = AutoConfig.from_pretrained(resolve_model(model_dir))
    hidden, inter = config.hidden_size, config.intermediate_size
    heads, kv = config.num_attention_heads, getattr(config, "num_key_value_heads", config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    linear = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + 3 * hidden * inter
    attention = heads * head_dim * seq_len  # QK^T and AV, causal: about half of 2 * seq_len each
    return {"block": linear + attention, "blocks": config.num_hidden_layers, "head": config.vocab_size * hidden}


def ideal_speedup(costs: dict[str, Any], fast_blocks: list[int], reference_trials: int) -> float:
    """Reference MACs / fast MACs over the whole search, counting only forward passes: the reference runs
    the full model for the base value and each trial; the fast engine runs it for the base value and the
    prefix build, then blocks >= b (plus the head) for a trial in block b."""
    n, block, head = costs["blocks"], costs["block"], costs["head"]
    full = n * block + head
    reference = (reference_trials + 1) * full
    fast = 2 * full + sum((n - b) * block + head for b in fast_blocks)
    return reference / fast


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--first-block", type=int, default=None, help="default 28, the last 2 blocks (quick: 2)")
    p.add_argument("--tolerance", type=float, default=0.05)
    args = p.parse_args(argv)
    started = init(args)

    import torch

    from sfsd.compress import CalibrationSpec
    from sfsd.models import DEFAULT_MODEL, load_model
    from sfsd.search import MetricSpec
    from sfsd.search.surgical import cached_decompositions, search_layers

    if args.quick:
        use_private_cache("search_speed")
        model_name = str(tiny_model_dir())
        metric = MetricSpec(name="ppl", tolerance=args.tolerance, samples=4, seq_len=32, batch_size=4)
        calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
        first_block = 2 if args.first_block is None else args.first_block  # the last 2 of 4 blocks
    else:
        model_name = DEFAULT_MODEL
        metric = MetricSpec(name="ppl", tolerance=args.tolerance, samples=8, seq_len=128, batch_size=8)
        calibration = CalibrationSpec()
        # The last 2 blocks (14 layers) keep the reference loop, the slow side, to about 5 min per repetition
        # on a 2-core CPU; the whole-model bound is printed next to the result.
        first_block = 28 if args.first_block is None else args.first_block
    reps = repeats(args, full=3, quick=2)
    device = args.device or "cpu"

    configs = {
        "fast/linear": search_config(model_name, "fast", "linear", first_block, metric, calibration),
        "reference/linear": search_config(model_name, "reference", "linear", first_block, metric, calibration),
        "fast/bisect": search_config(model_name, "fast", "bisect", first_block, metric, calibration),
    }
    # Decompose once (cached for every run below): not part of the timing.
    model, tokenizer = load_model(model_name, device)
    layers = search_layers(model, configs["fast/linear"])
    start = time.perf_counter()
    cached_decompositions(model, tokenizer, configs["fast/linear"], layers, progress=not args.quick)
    decompose_seconds = time.perf_counter() - start
    del model
    print(f"search speed: {model_name}, {len(layers)} layers from block {first_block}, {metric.samples} x "
          f"{metric.seq_len} tokens, tolerance {metric.tolerance}; decompositions ready in {decompose_seconds:.1f} s"
          f" (cached); {reps} alternated repetitions on {device}", flush=True)

    results = alternate({name: (lambda c=config: one_search(c, device)) for name, config in configs.items()},
                        reps)

    fast, ref, bis = results["fast/linear"], results["reference/linear"], results["fast/bisect"]
    identical = all(f["decisions"] == r["decisions"] for f, r in zip(fast, ref, strict=True))
    linear_dec, bisect_dec = dict(fast[0]["decisions"]), dict(bis[0]["decisions"])
    differ = [name for name in linear_dec if linear_dec[name] != bisect_dec.get(name)]
    share_differ = len(differ) / len(linear_dec) if linear_dec else None
    wall = {name: seconds_of(values) for name, values in results.items()}
    trial = {name: seconds_of(values, "trial_seconds") for name, values in results.items()}
    speedups = {
        "fast/linear vs reference": (ratio_summary(wall["reference/linear"], wall["fast/linear"]),
                                     ratio_summary(trial["reference/linear"], trial["fast/linear"])),
        "fast/bisect vs reference": (ratio_summary(wall["reference/linear"], wall["fast/bisect"]),
                                     ratio_summary(trial["reference/linear"], trial["fast/bisect"])),
        "fast/bisect vs fast/linear": (ratio_summary(wall["fast/linear"], wall["fast/bisect"]),
                                       ratio_summary(trial["fast/linear"], trial["fast/bisect"])),
    }
    costs = macs_model(model_name, metric.seq_len)
    ideal_linear = ideal_speedup(costs, fast[0]["trial_blocks"], ref[0]["trials"])
    ideal_bisect = ideal_speedup(costs, bis[0]["trial_blocks"], ref[0]["trials"])
    # The same bound for a search of every block with this run's trials per block (the speed-up shrinks
    # towards the first blocks, where a trial runs nearly the whole model).
    per_block = round(len(fast[0]["trial_blocks"]) / (costs["blocks"] - first_block))
    every_block = [b for b in range(costs["blocks"]) for _ in range(per_block)]
    ideal_all_blocks = ideal_speedup(costs, every_block, len(every_block))
    ideals = {"fast/linear vs reference": ideal_linear, "fast/bisect vs reference": ideal_bisect,
              "fast/bisect vs fast/linear": ideal_bisect / ideal_linear}

    rows_runs = [[name, values[0]["trials"], median(wall[name]), spread(wall[name]), median(trial[name]),
                  values[0]["overall_budget"], values[0]["final_metric"]] for name, values in results.items()]
    table_runs = md_table(["run", "trials", "wall s (median)", "wall s range", "trials s (median)",
                           "overall budget", "final ppl"], rows_runs)
    rows_speed = [[name, s_wall["median"], s_wall["range"], s_trial["median"], ideals[name]]
                  for name, (s_wall, s_trial) in speedups.items()]
    table_speed = md_table(["speed-up", "end to end (median)", "range", "trials only (median)",
                            "MAC bound"], rows_speed)

    linear_speedup = speedups["fast/linear vs reference"][0]["median"]
    bisect_speedup = speedups["fast/bisect vs reference"][0]["median"]
    verdicts = [
        f"identical decisions fast vs reference (every repetition): **{'yes' if identical else 'NO'}**",
        f"target fast/linear >= {TARGET_LINEAR:.0f}x the reference: "
        f"**{'met' if linear_speedup >= TARGET_LINEAR else 'NOT met'}**"
        f" ({linear_speedup:.2f}x end to end; the forward-pass MAC bound of this setting is {ideal_linear:.2f}x)",
        f"target bisect faster still: **{'met' if bisect_speedup > linear_speedup else 'NOT met'}** "
        f"({bisect_speedup:.2f}x vs reference)",
        f"MAC bound of fast/linear for a search of all {costs['blocks']} blocks at {per_block} trials per block: "
        f"{ideal_all_blocks:.2f}x",
        f"bisect decided differently from linear on {len(differ)} of {len(linear_dec)} layers "
        f"({share_differ:.0%}); budget {bis[0]['overall_budget']:.4f} vs {fast[0]['overall_budget']:.4f}",
    ]
    if linear_speedup < TARGET_LINEAR and ideal_linear < TARGET_LINEAR:
        verdicts.append(
            f"the {TARGET_LINEAR:.0f}x target is out of reach by arithmetic here: a trial in block b still runs "
            f"blocks b..{costs['blocks'] - 1} and the {costs['head']:,}-MAC/token head (vocabulary x hidden), "
            f"against {costs['block']:,} MACs/token per block; see `python -m bench.profile_hotspots search`")
    markdown = "\n\n".join([
        table_speed, table_runs,
        "\n".join(f"- {v}" for v in verdicts),
        (f"- Setting: `{model_name.rsplit('/', 1)[-1]}`, {len(layers)} layers (blocks {first_block}.."
         f"{costs['blocks'] - 1}), feature space, ppl metric on {metric.samples} x {metric.seq_len} tokens, "
         f"tolerance {metric.tolerance}, {device}. Each run starts from an empty run root; decompositions "
         f"computed once beforehand ({decompose_seconds:.0f} s, not timed). {reps} repetitions alternated "
         "fast/linear, reference/linear, fast/bisect; speed-up = median of the per-repetition ratios. "
         "'Trials only' sums the trials' own seconds (excludes load, base value and prefix build). "
         "MAC bound = reference MACs / fast MACs of the forward passes each engine makes.\n"
         f"- Machine: {machine_line()}."),
    ])
    data = {"title": "Search speed (fast engine vs reference loop)", "model": model_name,
            "first_block": first_block, "layers": len(layers), "metric": vars(metric) | {},
            "decompose_seconds": decompose_seconds, "repeats": reps, "device": device,
            "identical_decisions": identical, "mac_bound_all_blocks": ideal_all_blocks,
            "bisect_differs": differ, "bisect_share_differ": share_differ,
            "speedups": {k: {"end_to_end": a, "trials_only": b, "mac_bound": ideals[k]}
                         for k, (a, b) in speedups.items()},
            "runs": {k: [{x: y for x, y in v.items() if x not in ("decisions", "trial_blocks")} for v in vals]
                     for k, vals in results.items()},
            "targets": {"linear_speedup": TARGET_LINEAR, "met": linear_speedup >= TARGET_LINEAR,
                        "bisect_faster": bisect_speedup > linear_speedup},
            "note": QUICK_NOTE if args.quick else None}
    write_result("search_speed", args, data, markdown, started)
    del torch
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
