"""Calibration: tokens per second of the statistics pass (`collect_statistics` over every decomposable layer)
against a plain forward pass of the same backbone (`model.base_model`) on the same tokens and batches
(ideal 1.0, target within 1.3x), and the time of all decompositions (`Compressor.decompose` after
`collect`) against the calibration pass that feeds them.

Ratio: the two passes alternate (stats, plain, stats, plain, ...) on 64 x 128 calibration tokens; the
figure is the median of the per-repetition ratios. Decompositions: one full-size calibration (the
paper's 512 x 128 mix) through `Compressor.collect`, then `Compressor.decompose` for each method asked.

    python -m bench.calibration                    # smollm2-135m
    python -m bench.calibration --methods feature,svdllm
    python -m bench.calibration --quick            # tiny random LLaMA (smoke test)
"""

from __future__ import annotations

import sys
import time

from bench.common import (
    QUICK_NOTE,
    alternate,
    init,
    machine_line,
    md_table,
    median,
    parser,
    ratio_summary,
    repeats,
    seconds_of,
    tiny_model_dir,
    use_private_cache,
    write_result,
)

TARGET = 1.3


def plain_pass(model, input_ids, attention_mask, batch_size: int) -> None:
    """What collect_statistics does, without the hooks: the backbone over the same batches."""
    import torch

    device = next(model.parameters()).device
    backbone = getattr(model, "base_model", model)
    with torch.no_grad():
        for start in range(0, input_ids.shape[0], batch_size):
            ids = input_ids[start : start + batch_size].to(device)
            mask = attention_mask[start : start + batch_size].to(device)
            mask.bool()
            backbone(input_ids=ids, attention_mask=mask, use_cache=False)


def mac_ratio(layers) -> float:
    """Per token: MACs of the statistics (x x^T of each shared-input group, d_in^2) over the MACs of the
    layers themselves (d_in x d_out each); attention and norms left out."""
    groups = {}
    for layer in layers:
        groups[layer.input_group] = layer.d_in
    gram = sum(d * d for d in groups.values())
    forward = sum(layer.d_in * layer.d_out for layer in layers)
    return gram / forward


def output_side_mac_ratio(layers) -> float:
    """`mac_ratio` if each group kept the cheaper of its input Gram (d_in^2) and its members' output Grams
    (sum of d_out^2), which is all the feature-space methods need: down_proj's output is 576 wide, its
    input 1536."""
    groups: dict[str, list] = {}
    for layer in layers:
        groups.setdefault(layer.input_group, []).append(layer)
    gram = sum(min(g[0].d_in ** 2, sum(layer.d_out ** 2 for layer in g)) for g in groups.values())
    return gram / sum(layer.d_in * layer.d_out for layer in layers)


def gram_precision_factor(dim: int, tokens: int, reps: int) -> dict:
    """Time of x^T x in float64 over float32 (why the statistics take each batch's x^T x in float32)."""
    import torch

    x32 = torch.randn(tokens, dim)
    x64 = x32.double()
    acc32, acc64 = torch.zeros(dim, dim), torch.zeros(dim, dim, dtype=torch.float64)

    def f64() -> None:
        acc64.addmm_(x64.T, x64)

    def f32() -> None:
        acc32.addmm_(x32.T, x32)

    times = alternate({"float64": f64, "float32": f32}, max(reps, 3), warmup=1, log=None)
    return ratio_summary(seconds_of(times["float64"]), seconds_of(times["float32"]))


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--methods", default="feature", help="methods whose decompositions are timed (comma-separated)")
    p.add_argument("--batch-size", type=int, default=16, help="calibration batch size (default: 16, as compress)")
    p.add_argument("--no-full", action="store_true", help="skip the full-size calibration and decompositions")
    args = p.parse_args(argv)
    started = init(args)

    import torch

    from sfsd.adapters import adapter_for
    from sfsd.calibration import collect_statistics
    from sfsd.compress import CalibrationSpec, Compressor, calibration_tokens
    from sfsd.models import DEFAULT_MODEL, load_model

    if args.quick:
        use_private_cache("calibration")
        model_name = str(tiny_model_dir())
        ratio_spec, full_spec, batch_size = CalibrationSpec("wiki", 16, 32), CalibrationSpec("wiki", 32, 32), 8
    else:
        model_name = DEFAULT_MODEL
        ratio_spec, full_spec, batch_size = CalibrationSpec("mix", 64, 128), CalibrationSpec(), args.batch_size
    reps = repeats(args, full=3, quick=2)
    device = args.device or "cpu"
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    model, tokenizer = load_model(model_name, device)
    adapter = adapter_for(model)
    layers = adapter.layers()
    ids, mask = calibration_tokens(tokenizer, ratio_spec, model.config.vocab_size)
    tokens = int(mask.sum())
    groups = len({layer.input_group for layer in layers})
    print(f"calibration: {model_name}, {len(layers)} layers in {groups} input groups, {ids.shape[0]} x "
          f"{ids.shape[1]} tokens, batch {batch_size}, {reps} repetitions on {device}", flush=True)

    def stats_case() -> float:
        start = time.perf_counter()
        collect_statistics(model, adapter, layers, ids, mask, batch_size, progress=False)
        return time.perf_counter() - start

    def plain_case() -> float:
        start = time.perf_counter()
        plain_pass(model, ids, mask, batch_size)
        return time.perf_counter() - start

    times = alternate({"statistics pass": stats_case, "plain forward": plain_case}, reps, warmup=1)
    stats_s, plain_s = seconds_of(times["statistics pass"]), seconds_of(times["plain forward"])
    ratio = ratio_summary(stats_s, plain_s)
    rows = [["statistics pass (collect_statistics)", median(stats_s), tokens / median(stats_s), ratio["median"],
             ratio["range"]],
            ["plain forward (model.base_model)", median(plain_s), tokens / median(plain_s), 1.0, None]]
    table = md_table(["pass", "seconds (median)", "tokens/s", "time ratio to plain (median)", "range"], rows)
    met = ratio["median"] <= TARGET
    verdicts = [f"target statistics pass within {TARGET}x of a plain forward: **{'met' if met else 'NOT met'}** "
                f"({ratio['median']:.2f}x)"]

    r = mac_ratio(layers)
    widest = max(layer.d_in for layer in layers)
    factor = gram_precision_factor(widest, min(tokens, 2048), reps)
    bound = 1 + r  # each batch's x^T x is a float32 GEMM, like the layers' own
    r_out = output_side_mac_ratio(layers)
    verdicts.append(
        f"arithmetic: the statistics (one x^T x per shared-input group, each batch's in float32, summed in "
        f"float64) cost {r:.2f}x the layers' own MACs per token, so about {bound:.2f}x is what this design can "
        f"reach (in float64 throughout it would be {1 + r * factor['median']:.2f}x: a {widest}-wide float64 "
        f"x^T x takes {factor['median']:.2f}x a float32 one here)"
        + (f"; {TARGET}x is out of reach without changing it: keeping the output Gram where a group's outputs "
           f"are narrower than its input (down_proj), enough for the feature-space methods, would give about "
           f"{1 + r_out:.2f}x (not built)" if bound > TARGET else ""))

    full = None
    if not args.no_full:
        compressor = Compressor(model, tokenizer, "feature", full_spec, batch_size=batch_size,
                                progress=not args.quick)
        compressor.collect()
        calib_s = compressor.timings["calibration_s"]
        full = {"calibration": vars(full_spec) | {}, "calibration_s": calib_s, "methods": {}}
        decomp_rows = []
        for method in methods:
            other = Compressor(model, tokenizer, method, full_spec, batch_size=batch_size, progress=not args.quick)
            other.stats = compressor.stats  # share the statistics: only the decompositions are timed
            start = time.perf_counter()
            other.decompose()
            seconds = time.perf_counter() - start
            full["methods"][method] = seconds
            decomp_rows.append([method, len(layers), seconds, seconds / len(layers), seconds / calib_s])
            del other
        table += (f"\n\nFull-size calibration ({full_spec.source}, {full_spec.samples} x {full_spec.seq_len} "
                  f"tokens, statistics of all {len(layers)} layers, tokenisation included): {calib_s:.1f} s.\n\n")
        table += md_table(["method", "layers", "decompose s", "s / layer", "ratio to the calibration pass"],
                          decomp_rows)
    notes = [
        f"Model `{model_name.rsplit('/', 1)[-1]}`, {len(layers)} layers in {groups} shared-input groups (q/k/v "
        "and gate/up share one), statistics summed in float64 on the model's device. Ratio pass: "
        f"{ratio_spec.source}, {ids.shape[0]} x {ids.shape[1]} tokens, batch {batch_size}, one warm-up of each, "
        f"then {reps} repetitions alternated; ratio = median of per-repetition (statistics time / plain time).",
        f"Machine: {machine_line()}.",
    ]
    markdown = table + "\n\n" + "\n".join(f"- {v}" for v in verdicts + notes)
    data = {"title": "Calibration pass and decompositions", "model": model_name, "device": device,
            "ratio_tokens": tokens, "repeats": reps, "batch_size": batch_size,
            "seconds": {"statistics": stats_s, "plain": plain_s}, "ratio": ratio, "target": TARGET, "met": met,
            "gram_mac_ratio": r, "float64_over_float32": factor, "expected_ratio": bound,
            "output_side_gram_mac_ratio": r_out,
            "full": full, "note": QUICK_NOTE if args.quick else None}
    write_result("calibration", args, data, markdown, started)
    del torch
    return 0


if __name__ == "__main__":
    sys.exit(main())
