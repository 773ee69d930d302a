"""Does a search's budget hold on unseen data? Search-split versus eval-split change by search size.

A perplexity-guided search keeps the *search*-split perplexity within the tolerance by construction;
with few search tokens it over-fits them. This runs the same search (default model, feature space,
tolerance 0.05, the last 6 blocks, 512 x 128 mix calibration) with different numbers of search tokens
and reports, for each, the search-split change, the eval-split change (the held-out check every search
now records: wiki eval split, first 16,384 tokens, same sequence length), the overall budget and the time.

    python -m bench.search_transfer                         # 1k, 4k, 16k and 31k (all of the search split)
    python -m bench.search_transfer --tokens 1024,4096      # a subset
    python -m bench.search_transfer --quick                 # tiny random LLaMA (smoke test)
"""

from __future__ import annotations

from datetime import datetime

from bench.common import init, machine_line, md_table, parser, tiny_model_dir, use_private_cache, write_result

SEQ_LEN = 128
TOLERANCE = 0.05
SEARCH_SPLIT_TOKENS = 31_744  # 248 windows of 128: all of the wiki search split with the default tokenizer


def search_config(model: str, tokens: int, first_block: int, strategy: str, calibration):
    from sfsd.search import MetricSpec, SearchConfig

    metric = MetricSpec(name="ppl", tolerance=TOLERANCE, samples=max(1, tokens // SEQ_LEN), seq_len=SEQ_LEN)
    return SearchConfig(model=model, method="feature", metric=metric, strategy=strategy, first_block=first_block,
                        calibration=calibration)


def one_point(config) -> dict:
    from sfsd.search import run_search
    from sfsd.search.heldout import heldout_summary

    run = run_search(config, progress=False)  # a finished run is found, not recomputed
    result, status = run.result(), run.status()
    # Wall time from the run's own start and finish stamps, so a reused run reports what it took; a
    # resumed run's stamps cover only its last leg, so the comparable figure is the trials' own time
    # (what grows with the search size), summed from the trace.
    seconds = (datetime.fromisoformat(status["finished"]) - datetime.fromisoformat(status["started"])).total_seconds()
    trial_seconds = sum(t["seconds"] for t in run.trials())
    summary = heldout_summary(result)
    return {"tokens": config.metric.samples * SEQ_LEN, "run_id": run.id, "seconds": seconds,
            "trial_seconds": trial_seconds, "trials": result["trials"], "overall_budget": result["overall_budget"],
            "search_base": result["base_metric"], "search_final": result["final_metric"],
            "search_change": summary["search_change"], "eval_base": summary["eval_base"],
            "eval_final": summary["eval_final"], "eval_change": summary["eval_change"],
            "eval_tokens": summary["n"]}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", default=f"1024,4096,16384,{SEARCH_SPLIT_TOKENS}", help="search sizes in tokens")
    p.add_argument("--strategy", default="linear", help="search strategy (default: linear, as sfsd search)")
    p.add_argument("--last-blocks", type=int, default=6)
    args = p.parse_args()
    started = init(args)
    from sfsd.compress import CalibrationSpec
    from sfsd.models import DEFAULT_MODEL

    if args.quick:
        use_private_cache("search_transfer")
        model, sizes, calibration = str(tiny_model_dir()), [256, 512], CalibrationSpec(source="wiki", samples=16,
                                                                                       seq_len=32)
        first_block = 2
    else:
        from transformers import AutoConfig

        from sfsd.models import resolve_model

        model, calibration = DEFAULT_MODEL, CalibrationSpec()
        sizes = [int(t) for t in args.tokens.split(",")]
        first_block = AutoConfig.from_pretrained(resolve_model(model)).num_hidden_layers - args.last_blocks
    points = []
    for tokens in sizes:
        point = one_point(search_config(model, tokens, first_block, args.strategy, calibration))
        points.append(point)
        print(point, flush=True)
    rows = [[f"{p['tokens']:,}", f"{p['search_change'] * 100:+.1f}%", f"{p['eval_change'] * 100:+.1f}%",
             f"{p['eval_change'] / TOLERANCE:.1f}x", f"{p['overall_budget']:.3f}", p["trials"],
             f"{p['trial_seconds'] / 60:.1f} min", f"{p['seconds'] / 60:.1f} min"] for p in points]
    table = md_table(["search tokens", "search-split ppl change", "eval-split ppl change", "eval change / tolerance",
                      "overall budget", "trials", "trial time", "wall time (last leg)"], rows)
    markdown = (f"`python -m bench.search_transfer {' '.join(__import__('sys').argv[1:])}`; {machine_line()}; "
                f"feature space, tolerance {TOLERANCE}, seq {SEQ_LEN}, blocks >= {first_block}, strategy "
                f"{args.strategy}; eval split: first 16,384 tokens of the wiki eval split. "
                f"Trial time: the trials' own seconds summed from the "
                f"trace (grows with the search size); wall time: the run's start-to-finish stamps of its last "
                f"invocation (includes the decomposition pre-pass and the held-out check; a resumed run's covers only "
                f"its last leg).\n\n{table}")
    write_result("search_transfer", args, {"title": "Search size vs held-out change", "points": points}, markdown,
                 started)


if __name__ == "__main__":
    main()
