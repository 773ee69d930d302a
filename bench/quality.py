"""Table 1 of the paper on the default model: uniform compression at two budgets for every method, the
base model, and perplexity-guided surgical searches at two tolerances, all evaluated the same way.

Uniform rows come from `sfsd.search.uniform.run_uniform` (stored, cached runs under the run store: a
second invocation only reads them). Search rows run (or reuse) `run_search` with the ppl metric, build
the run's model with `materialize` into `<cache>/models/bench-<run id>` and evaluate it with the same
tasks, document limit and perplexity settings.

    python -m bench.quality            # full: smollm2-135m, paper calibration (mix, 512 x 128)
    python -m bench.quality --quick    # tiny random LLaMA, a few documents (smoke test)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.common import (
    QUICK_NOTE,
    init,
    machine_line,
    md_table,
    parser,
    scaled_blocks,
    tiny_model_dir,
    use_private_cache,
    write_result,
)

# The paper (32 blocks): last 12 at beta 0.46 (~80 %), last 24 at beta 0.33 (~50 %).
PAPER_BUDGETS = [("~80%", 0.46, 12), ("~50%", 0.33, 24)]


def ppl_by_seq_len(evaluations: list[dict]) -> dict[int, dict]:
    out = {}
    for record in evaluations:
        if record.get("kind") == "ppl":
            metrics = record["metrics"]
            out[int(metrics["seq_len"])] = metrics
    return out


def task_accuracy(evaluations: list[dict]) -> dict[str, dict]:
    return {r["task"]: r["metrics"] for r in evaluations if r.get("kind") == "task"}


def row_of(label: str, method: str, blocks: Any, beta: Any, result: dict, tasks_acc: dict[str, dict],
           ppl: dict[int, dict], tasks: list[str], seq_lens: list[int], source: str) -> dict:
    accs = [tasks_acc.get(t, {}).get("acc") for t in tasks]
    known = [a for a in accs if a is not None]
    return {
        "label": label, "method": method, "last_blocks": blocks, "beta": beta,
        "overall_budget": result.get("overall_budget"), "params": result.get("params"),
        "macs_128": result.get("macs"),
        "ppl": {str(s): ppl.get(s, {}).get("ppl") for s in seq_lens},
        "ppl_tokens": {str(s): ppl.get(s, {}).get("n_tokens") for s in seq_lens},
        "acc": dict(zip(tasks, accs, strict=True)),
        "acc_norm": {t: tasks_acc.get(t, {}).get("acc_norm") for t in tasks},
        "n_docs": {t: tasks_acc.get(t, {}).get("n") for t in tasks},
        "avg_acc": sum(known) / len(known) if len(known) == len(tasks) and known else None,
        "source": source,
    }


def acc_cell(acc: float | None, n: int | None) -> str:
    """'0.350 [0.264, 0.447]': accuracy with its 95% Wilson interval (n is in the column header)."""
    from sfsd.evaluate.intervals import wilson_interval

    if acc is None or not n:
        return "—"
    low, high = wilson_interval(acc * n, n)
    return f"{acc:.3f} [{low:.3f}, {high:.3f}]"


def uniform_row(config, label: str, tasks, seq_lens, progress: bool) -> dict:
    from sfsd.search.uniform import run_uniform

    start = time.perf_counter()
    run = run_uniform(config, progress=progress)
    print(f"  {label} {config.method}: run {run.id} ({time.perf_counter() - start:.1f} s)", flush=True)
    evaluations = run.read_evaluations()
    method = "none (base)" if config.method == "none" else config.method
    return row_of(label, method, None if config.method == "none" else config.last_blocks,
                  None if config.method == "none" else config.beta, run.result() or {},
                  task_accuracy(evaluations), ppl_by_seq_len(evaluations), tasks, seq_lens, run.id)


def search_row(model: str, tolerance: float, metric_kwargs: dict, calibration, tasks, limit, seq_lens,
               ppl_tokens, progress: bool) -> dict:
    """Run (or reuse) a ppl-guided search, materialize its model and evaluate it like the uniform runs."""
    from sfsd.accounting import count_parameters, measure_macs
    from sfsd.decompose import overall_budget
    from sfsd.errors import SfsdError
    from sfsd.evaluate import evaluate_tasks, perplexity
    from sfsd.models import load_model
    from sfsd.paths import models_dir
    from sfsd.search import MetricSpec, SearchConfig, materialize, run_search

    label = f"search ppl +{tolerance:.0%}"
    config = SearchConfig(model=model, method="feature",
                          metric=MetricSpec(name="ppl", tolerance=tolerance, **metric_kwargs),
                          calibration=calibration)
    start = time.perf_counter()
    try:
        run = run_search(config, progress=progress)
    except SfsdError as exc:  # e.g. the same search is running in another process
        print(f"  {label}: not available ({exc})", flush=True)
        return {"label": label, "method": "feature (search)", "error": str(exc)}
    result = run.result()
    if result is None:
        return {"label": label, "method": "feature (search)", "error": f"run {run.id} did not finish"}
    print(f"  {label}: run {run.id} ({time.perf_counter() - start:.1f} s)", flush=True)
    folder = models_dir() / f"bench-{run.id}"
    if not (folder / "config.json").exists():
        materialize(run, folder, overwrite=True)
    compressed, tokenizer = load_model(str(folder))
    key = f"bench-materialized-{run.id}"
    results = evaluate_tasks(compressed, tokenizer, tasks, split="eval", limit=limit, model_key=key)
    accs = {row.task: {"acc": row.acc, "acc_norm": row.acc_norm, "n": int(row.n)}
            for row in results.summary.itertuples()}
    ppl = {s: perplexity(compressed, tokenizer, split="eval", seq_len=s, max_tokens=ppl_tokens, model_key=key,
                         progress=progress) for s in seq_lens}
    from sfsd.adapters import adapter_for

    info = {"overall_budget": overall_budget(adapter_for(compressed).layers(), result["ranks"]),
            "params": count_parameters(compressed), "macs": measure_macs(compressed, 128)}
    row = row_of(label, "feature (search)", None, None, info, accs, ppl, tasks, seq_lens, run.id)
    row["search"] = {"tolerance": tolerance, "base_metric": result["base_metric"],
                     "final_metric": result["final_metric"], "trials": result["trials"],
                     "layers_decomposed": len(result["ranks"])}
    return row


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=None, help="documents per task (default 100; quick 2)")
    p.add_argument("--ppl-tokens", type=int, default=None,
                   help="first tokens of the wiki eval split for perplexity (default 16384; quick 256)")
    p.add_argument("--tolerances", default="0.05,0.10", help="ppl tolerances of the search rows")
    p.add_argument("--no-search", action="store_true", help="only the uniform rows")
    p.add_argument("--methods", default=None,
                   help="comma-separated (default: every method; quick: weight,feature,llm-pruner)")
    p.add_argument("--tasks", default=None, help="comma-separated offline tasks (default: all five; quick: boolq,piqa)")
    args = p.parse_args(argv)
    started = init(args)

    from transformers import AutoConfig

    from sfsd.compress import CalibrationSpec
    from sfsd.data import OFFLINE_TASKS
    from sfsd.decompose import METHODS
    from sfsd.models import DEFAULT_MODEL, resolve_model
    from sfsd.search.uniform import UniformConfig

    tasks = list(OFFLINE_TASKS) if not args.quick else ["boolq", "piqa"]
    if args.tasks:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if args.quick:
        use_private_cache("quality")
        model = str(tiny_model_dir())
        calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
        limit, seq_lens, ppl_tokens = args.limit or 2, [32, 128], args.ppl_tokens or 256
        metric_kwargs = {"samples": 4, "seq_len": 32, "batch_size": 4}
    else:
        model = DEFAULT_MODEL
        calibration = CalibrationSpec()  # the paper's: mix, 512 x 128
        limit, seq_lens, ppl_tokens = args.limit or 100, [128, 2048], args.ppl_tokens or 16384
        metric_kwargs = {"samples": 8, "seq_len": 128, "batch_size": 8}
    chosen = args.methods or ("weight,feature,llm-pruner" if args.quick else ",".join(METHODS))
    methods = [m.strip() for m in chosen.split(",") if m.strip()]
    num_blocks = AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers
    budgets = [(label, beta, scaled_blocks(blocks, num_blocks)) for label, beta, blocks in PAPER_BUDGETS]
    progress = not args.quick

    def uniform(method: str, beta: float = 0.46, blocks: int = 12) -> UniformConfig:
        return UniformConfig(model=model, method=method, beta=beta, last_blocks=blocks, calibration=calibration,
                             tasks=tasks, limit=limit, ppl_seq_lens=seq_lens, ppl_tokens=ppl_tokens)

    print(f"quality: {model}, {num_blocks} blocks, budgets {budgets}, limit {limit}, ppl {seq_lens} "
          f"on {ppl_tokens} tokens", flush=True)
    rows = [uniform_row(uniform("none"), "base", tasks, seq_lens, progress)]
    for label, beta, blocks in budgets:
        for method in methods:
            rows.append(uniform_row(uniform(method, beta, blocks), label, tasks, seq_lens, progress))
    if not args.no_search:
        for tolerance in [float(t) for t in args.tolerances.split(",") if t.strip()]:
            rows.append(search_row(model, tolerance, metric_kwargs, calibration, tasks, limit, seq_lens,
                                   ppl_tokens, progress))

    headers = ["budget", "method", "last blocks", "beta", "overall budget", "params", "MACs (seq 128)",
               *[f"ppl@{s}" for s in seq_lens], *[f"{t} (n={limit})" for t in tasks], "avg acc"]
    table = []
    for row in rows:
        if "error" in row:
            table.append([row["label"], row["method"], *["—"] * (len(headers) - 3), "—"])
            continue
        table.append([row["label"], row["method"], row["last_blocks"], row["beta"], row["overall_budget"],
                      row["params"], row["macs_128"], *[row["ppl"][str(s)] for s in seq_lens],
                      *[acc_cell(row["acc"][t], row["n_docs"][t]) for t in tasks], row["avg_acc"]])
    calib = f"{calibration.source}, {calibration.samples} x {calibration.seq_len} tokens"
    notes = [
        f"Model `{Path(model).name}` ({num_blocks} blocks); the paper's last 12 / 24 of 32 blocks scaled to "
        f"{budgets[0][2]} / {budgets[1][2]} of {num_blocks}; overall budget = Appendix B share of the decomposable "
        "layers' parameters kept. Calibration: " + calib + ".",
        f"Accuracy: `acc` of lm-eval on the eval split of the offline pack, first {limit} documents per task, "
        "with its 95% Wilson interval (`acc_norm` is in the JSON); the average over tasks has no interval "
        "and moves by several points at random at this n. "
        "MACs of one forward pass over 128 tokens (torch flop counter).",
        f"Perplexity on the wiki eval split, first {ppl_tokens} tokens, non-overlapping windows of "
        + " and ".join(str(s) for s in seq_lens) + f" tokens (ppl@{seq_lens[-1]} therefore rests on only "
        f"{max(1, ppl_tokens // seq_lens[-1])} windows).",
        f"Search rows: feature space, Algorithm 1 (linear), ppl on {metric_kwargs['samples']} x "
        f"{metric_kwargs['seq_len']} tokens of the wiki search split "
        "within +tolerance of the base model, all blocks; evaluated after `materialize`.",
    ]
    errors = [f"{r['label']}: {r['error']}" for r in rows if "error" in r]
    markdown = md_table(headers, table) + "\n\n" + "\n".join(f"- {n}" for n in notes)
    if errors:
        markdown += "\n" + "\n".join(f"- not measured: {e}" for e in errors)
    markdown += f"\n- Machine: {machine_line()}."
    data = {"title": "Quality (Table 1 protocol)", "model": model, "num_blocks": num_blocks,
            "budgets": budgets, "limit": limit, "ppl_seq_lens": seq_lens, "ppl_tokens": ppl_tokens,
            "calibration": calib, "rows": rows, "note": QUICK_NOTE if args.quick else None}
    # a run of chosen methods gets a file of its own: it must not replace the table of every method
    write_result("quality" if not args.methods else f"quality-{'-'.join(methods)}", args, data, markdown, started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
