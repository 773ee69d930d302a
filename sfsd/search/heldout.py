"""The held-out check of a search: its metric on the eval split, which the search never sees.

A search keeps its metric within the tolerance on the *search* split by construction; whether the budget
holds on unseen data is a separate measurement. Every finished search records both, side by side:
- `ppl`: wiki perplexity of the eval split at the search's sequence length over the first
  HELDOUT_TOKENS tokens (the search split is a different part of the text), with its tokens, windows and
  95% bootstrap interval over windows (`low`, `high`; absent from runs recorded before it was kept);
- `task`: accuracy (acc or acc_norm, as searched) on the task's whole eval split (`--suite paper`:
  lm-eval's own evaluation split of the task), with n and a 95% Wilson interval.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from sfsd.evaluate.intervals import format_ppl, format_proportion, wilson_interval

HELDOUT_TOKENS = 16_384  # the eval-split perplexity budget of bench.quality (128 windows of 128 tokens)
HELDOUT_DOCUMENTS: int | None = None  # task metric: every document of the eval split (tests/conftest.py lowers both)


def heldout_value(model: nn.Module, tokenizer: Any, metric: dict, model_key: str | None = None,
                  progress: bool = False) -> dict:
    """The search metric on the eval split: {value, split, n (tokens or documents), ...}."""
    if metric["name"] == "ppl":
        from sfsd.evaluate import perplexity

        res = perplexity(model, tokenizer, split="eval", seq_len=metric["seq_len"], max_tokens=HELDOUT_TOKENS,
                         model_key=model_key, progress=progress)
        return {"value": res["ppl"], "split": "eval", "seq_len": res["seq_len"], "n": res["n_tokens"],
                "n_windows": res["n_windows"], "bos": res["bos"], "low": res["ppl_low"], "high": res["ppl_high"]}
    from sfsd.evaluate import evaluate_tasks

    suite = metric.get("suite", "offline")  # paper: lm-eval's own task (validation; ARC: test)
    row = evaluate_tasks(model, tokenizer, [metric["task"]], split="eval", limit=HELDOUT_DOCUMENTS, suite=suite,
                         model_key=model_key).summary.iloc[0]
    value = float(row["acc_norm" if metric.get("use_norm") else "acc"])
    n = int(row["n"])
    low, high = wilson_interval(value * n, n)
    return {"value": value, "split": "eval", "task": metric["task"], "n": n, "low": low, "high": high}


def relative_change(base: float, final: float, higher_is_better: bool) -> float:
    """Perplexity: final / base - 1 (as the tolerance); accuracy: final - base (points as a fraction)."""
    return final - base if higher_is_better else final / base - 1.0


def heldout_summary(result: dict | None) -> dict | None:
    """Search-split and eval-split change of a finished run, for tables and titles; None if not recorded."""
    held = (result or {}).get("heldout")
    if not held:
        return None
    higher = held.get("higher_is_better", False)
    return {
        "search_change": relative_change(result["base_metric"], result["final_metric"], higher),
        "eval_change": relative_change(held["base"]["value"], held["final"]["value"], higher),
        "eval_base": held["base"]["value"], "eval_final": held["final"]["value"], "n": held["final"]["n"],
        "metric": held["metric"], "higher_is_better": higher,
    }


def describe_heldout(result: dict | None, values: bool = True) -> str:
    """'search split +4.9%, eval split +31.0%: ppl 40.56 [39.12, 42.01] vs base 31.06 [30.01, 32.12] (16,384
    tokens, 128-token windows, 95% bootstrap over windows)', or the accuracy form in points with Wilson intervals.
    A run recorded before perplexity intervals were kept shows its values and says it has none. `values=False`:
    the changes alone, 'search split +4.9%, eval split +31.0% (16,384 tokens)' (a chart's subtitle)."""
    s = heldout_summary(result)
    if s is None:
        return "eval split: not measured"
    held = result["heldout"]
    if s["higher_is_better"]:
        changes = f"search split {s['search_change'] * 100:+.1f} pts, eval split {s['eval_change'] * 100:+.1f} pts"
        if not values:
            return f"{changes} (n={s['n']:,})"
        accs = " vs base ".join(format_proportion(held[k]["value"], held[k]["n"], show_n=False)
                                for k in ("final", "base"))
        return f"{changes}: acc {accs} (n={s['n']:,}, 95% Wilson)"
    changes = f"search split {s['search_change'] * 100:+.1f}%, eval split {s['eval_change'] * 100:+.1f}%"
    if not values:
        return f"{changes} ({s['n']:,} tokens)"
    ppls = " vs base ".join(format_ppl(held[k]["value"], held[k].get("low"), held[k].get("high"))
                            for k in ("final", "base"))
    windows = f", {held['final']['seq_len']}-token windows" if held["final"].get("seq_len") else ""
    shown = all(held[k].get("low") is not None for k in ("final", "base"))
    how = "95% bootstrap over windows" if shown else "no interval: measured before perplexity intervals were kept"
    return f"{changes}: ppl {ppls} ({s['n']:,} tokens{windows}, {how})"
