"""Calibration: tokens per second of the statistics pass (`collect_statistics` over every decomposable layer)
against a plain forward pass of the same backbone (`model.base_model`) on the same tokens and batches
(ideal 1.0, target within 1.3x), and the time of all decompositions (`Compressor.decompose` after
`collect`) against the calibration pass that feeds them.

Ratio: the passes alternate (feature-space statistics, plain, input-side statistics, ...) on 64 x 128
calibration tokens; the figure is the median of the per-repetition ratios. The headline is the pass the
feature-space methods run (each group on the side `choose_sides` picks: down_proj's output Gram); the
input-side pass (all groups on the input side: what ASVD and SVD-LLM need) is shown beside it.
Decompositions: one full-size calibration (the paper's 512 x 128 mix) per side the methods asked need,
through `Compressor.collect`, then `Compressor.decompose` for each method.

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


def gram_macs(dim: int) -> float:
    """Multiply-adds per token of one dim-wide Gram as `add_gram` computes it on CPU (blocks on and above
    the diagonal only)."""
    from sfsd.calibration.statistics import GRAM_BLOCK

    parts = max(1, min(8, dim // GRAM_BLOCK))
    return dim * dim * (parts + 1) / (2 * parts)


def mac_ratio(layers, sides: dict | None = None) -> float:
    """Per token: MACs of the statistics (each entry's Gram: d_in for an input-side group, d_out for an
    output-side layer) over the MACs of the layers themselves (d_in x d_out each); attention and norms
    left out."""
    from sfsd.calibration import statistics_entries

    gram = sum(gram_macs(dim) for _, dim in statistics_entries(layers, sides or {}).values())
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
    from sfsd.calibration import choose_sides, collect_statistics
    from sfsd.compress import CalibrationSpec, Compressor, calibration_tokens
    from sfsd.decompose import get_method
    from sfsd.models import DEFAULT_MODEL, load_model

    if args.quick:
        use_private_cache("calibration")
        model_name = str(tiny_model_dir())
        ratio_spec = CalibrationSpec(source="wiki", samples=16, seq_len=32)
        full_spec, batch_size = CalibrationSpec(source="wiki", samples=32, seq_len=32), 8
    else:
        model_name = DEFAULT_MODEL
        ratio_spec = CalibrationSpec(source="mix", samples=64, seq_len=128)
        full_spec, batch_size = CalibrationSpec(), args.batch_size
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

    feature_sides = choose_sides(layers, output_side_ok=True)
    output_groups = sorted({layer.role for layer in layers if feature_sides[layer.input_group] == "output"})

    def stats_case() -> float:
        start = time.perf_counter()
        collect_statistics(model, adapter, layers, ids, mask, batch_size, progress=False, sides=feature_sides)
        return time.perf_counter() - start

    def input_case() -> float:
        start = time.perf_counter()
        collect_statistics(model, adapter, layers, ids, mask, batch_size, progress=False)
        return time.perf_counter() - start

    def plain_case() -> float:
        start = time.perf_counter()
        plain_pass(model, ids, mask, batch_size)
        return time.perf_counter() - start

    times = alternate({"statistics pass": stats_case, "plain forward": plain_case, "input-side pass": input_case},
                      reps, warmup=1)
    stats_s, plain_s = seconds_of(times["statistics pass"]), seconds_of(times["plain forward"])
    input_s = seconds_of(times["input-side pass"])
    ratio = ratio_summary(stats_s, plain_s)
    input_ratio = ratio_summary(input_s, plain_s)
    rows = [[f"statistics pass, feature-space methods ({', '.join(output_groups) or 'no'} on the output side)",
             median(stats_s), tokens / median(stats_s), ratio["median"], ratio["range"]],
            ["statistics pass, input side everywhere (asvd, svdllm)", median(input_s), tokens / median(input_s),
             input_ratio["median"], input_ratio["range"]],
            ["plain forward (model.base_model)", median(plain_s), tokens / median(plain_s), 1.0, None]]
    table = md_table(["pass", "seconds (median)", "tokens/s", "time ratio to plain (median)", "range"], rows)
    met = ratio["median"] <= TARGET
    verdicts = [f"target statistics pass within {TARGET}x of a plain forward (feature-space methods): "
                f"**{'met' if met else 'NOT met'}** ({ratio['median']:.2f}x; input side everywhere "
                f"{input_ratio['median']:.2f}x)"]

    r = mac_ratio(layers, feature_sides)
    r_in = mac_ratio(layers)
    widest = max(layer.d_in for layer in layers)
    factor = gram_precision_factor(widest, min(tokens, 2048), reps)
    bound = 1 + r  # each batch's Gram is a float32 GEMM, like the layers' own
    verdicts.append(
        f"arithmetic: the statistics (one Gram per entry: a shared-input group's x^T x, or an output-side "
        f"layer's y^T y; only the 192-wide column blocks on and above the diagonal are multiplied; each "
        f"batch's in float32, summed in float64) cost {r:.2f}x the layers' own MACs per token on the "
        f"feature-space path ({r_in:.2f}x with every group on the input side), so about {bound:.2f}x "
        f"({1 + r_in:.2f}x) is what this design can reach (a {widest}-wide float64 x^T x takes "
        f"{factor['median']:.2f}x a float32 one here)")
    full = None
    if not args.no_full:
        full = {"calibration": vars(full_spec) | {}, "calibration_s": {}, "methods": {}}
        decomp_rows = []
        collected: dict[bool, object] = {}  # output_side_ok -> the Compressor holding that side's statistics
        for method in methods:
            side_ok = get_method(method).output_statistics
            if side_ok not in collected:
                first = Compressor(model, tokenizer, method, full_spec, batch_size=batch_size,
                                   progress=not args.quick)
                first.collect()
                collected[side_ok] = first
                full["calibration_s"]["feature-space" if side_ok else "input side"] = first.timings["calibration_s"]
            calib_s = collected[side_ok].timings["calibration_s"]
            other = Compressor(model, tokenizer, method, full_spec, batch_size=batch_size, progress=not args.quick)
            other.stats = collected[side_ok].stats  # share the statistics: only the decompositions are timed
            start = time.perf_counter()
            other.decompose()
            seconds = time.perf_counter() - start
            full["methods"][method] = seconds
            decomp_rows.append([method, len(layers), seconds, seconds / len(layers), seconds / calib_s])
            del other
        passes = ", ".join(f"{side} statistics {s:.1f} s" for side, s in full["calibration_s"].items())
        table += (f"\n\nFull-size calibration ({full_spec.source}, {full_spec.samples} x {full_spec.seq_len} "
                  f"tokens, statistics of all {len(layers)} layers, tokenisation included): {passes}.\n\n")
        table += md_table(["method", "layers", "decompose s", "s / layer", "ratio to its calibration pass"],
                          decomp_rows)
    notes = [
        f"Model `{model_name.rsplit('/', 1)[-1]}`, {len(layers)} layers in {groups} shared-input groups (q/k/v "
        "and gate/up share one; a group whose output Grams cost less than its input Gram keeps those for the "
        "feature-space methods), statistics summed in float64 on the model's device. Ratio pass: "
        f"{ratio_spec.source}, {ids.shape[0]} x {ids.shape[1]} tokens, batch {batch_size}, one warm-up of each, "
        f"then {reps} repetitions alternated; ratio = median of per-repetition (statistics time / plain time).",
        f"Machine: {machine_line()}.",
    ]
    markdown = table + "\n\n" + "\n".join(f"- {v}" for v in verdicts + notes)
    data = {"title": "Calibration pass and decompositions", "model": model_name, "device": device,
            "ratio_tokens": tokens, "repeats": reps, "batch_size": batch_size,
            "seconds": {"statistics": stats_s, "plain": plain_s, "input_side": input_s}, "ratio": ratio,
            "input_side_ratio": input_ratio, "target": TARGET, "met": met,
            "output_side_roles": output_groups, "gram_mac_ratio": r, "input_side_gram_mac_ratio": r_in,
            "float64_over_float32": factor, "expected_ratio": bound,
            "full": full, "note": QUICK_NOTE if args.quick else None}
    write_result("calibration", args, data, markdown, started)
    del torch
    return 0


if __name__ == "__main__":
    sys.exit(main())
