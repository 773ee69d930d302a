"""Perplexity carries a 95% bootstrap interval over windows: the interval itself, the engine that keeps each
window's NLL (and its cache, old entries included), the run records and every place that shows a perplexity."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sfsd.evaluate import EvalCache, _pack, perplexity
from sfsd.evaluate.intervals import PPL_BOOTSTRAP_RESAMPLES, PPL_BOOTSTRAP_SEED, format_ppl, ppl_bootstrap_interval

FIXTURES = Path(__file__).parent / "fixtures" / "evaluate"
CELL = re.compile(r"([\d,.]+) \[([\d,.]+), ([\d,.]+)\]")


# ---------------------------------------------------------------- the interval


def test_interval_equals_a_hand_computed_bootstrap():
    nll = [30.0, 45.0, 38.0, 52.0, 41.0]
    scored = 10
    rng = np.random.default_rng(PPL_BOOTSTRAP_SEED)
    ppls = []
    for _ in range(PPL_BOOTSTRAP_RESAMPLES):  # one resample: 5 windows drawn with replacement
        picked = [nll[i] for i in rng.integers(0, len(nll), size=len(nll))]
        ppls.append(math.exp(sum(picked) / (len(nll) * scored)))
    expected = np.percentile(ppls, [2.5, 97.5])
    assert ppl_bootstrap_interval(nll, scored) == pytest.approx(tuple(expected), rel=1e-12)


def test_interval_of_three_windows_reaches_the_extreme_resamples():
    # 3 windows: 27 equally likely resamples, and "all three the lowest window" alone has probability 1/27 > 2.5%,
    # so the exact 2.5th percentile is exp(min / scored) and the 97.5th exp(max / scored)
    nll = [20.0, 26.0, 35.0]
    low, high = ppl_bootstrap_interval(nll, 5)
    assert (low, high) == pytest.approx((math.exp(20.0 / 5), math.exp(35.0 / 5)))


def test_interval_contains_the_point_narrows_with_windows_and_is_reproducible():
    rng = np.random.default_rng(7)
    scored = 127
    few = list(rng.normal(3.5 * scored, 40.0, size=16))
    many = list(rng.normal(3.5 * scored, 40.0, size=256))
    for nll in (few, many):
        point = math.exp(sum(nll) / (len(nll) * scored))
        low, high = ppl_bootstrap_interval(nll, scored)
        assert low < point < high
    width = [np.subtract(*ppl_bootstrap_interval(nll, scored)[::-1]) for nll in (few, many)]
    assert width[1] < width[0] / 2  # 16 times the windows: about a quarter of the width
    assert ppl_bootstrap_interval(many, scored) == ppl_bootstrap_interval(list(many), scored)  # fixed seed
    assert ppl_bootstrap_interval(many, scored, seed=1) != ppl_bootstrap_interval(many, scored)
    assert all(math.isnan(x) for x in ppl_bootstrap_interval([40.0], scored))  # one window: no interval


def test_format_ppl():
    assert format_ppl(57.93, 55.118, 61.04) == "57.93 [55.12, 61.04]"
    assert format_ppl(371565.2, 350000.0, 390123.4) == "371,565 [350,000, 390,123]"
    assert format_ppl(57.93) == format_ppl(57.93, None, None) == "57.93"  # a result stored without its interval
    assert format_ppl(None) == format_ppl(float("nan")) == "—"


# ---------------------------------------------------------------- the engine and its cache


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(config).eval()


def test_perplexity_keeps_each_window_and_its_interval(model, tokenizer, cache):
    result = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES, progress=False)
    ids = tokenizer(_pack.wiki_text("eval", FIXTURES))["input_ids"]
    nll = []
    with torch.no_grad():
        for i in range(result["n_windows"]):
            window = torch.tensor([ids[16 * i : 16 * (i + 1)]])
            nll.append(15 * float(model(window, labels=window).loss))  # the mean over 15 scored tokens, summed
    assert result["window_nll"] == pytest.approx(nll, rel=1e-4)
    assert result["ppl"] == pytest.approx(math.exp(sum(nll) / (15 * len(nll))), rel=1e-4)
    assert (result["ppl_low"], result["ppl_high"]) == pytest.approx(ppl_bootstrap_interval(nll, 15), rel=1e-4)
    assert result["ppl_low"] < result["ppl"] < result["ppl_high"]
    (entry,) = (cache / "evals" / "ppl").iterdir()
    stored = pd.read_parquet(entry / "records.parquet")
    assert stored["nll"].tolist() == result["window_nll"]
    again = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES, progress=False)
    assert again["cached"] and not result["cached"]
    for name in ("ppl", "ppl_low", "ppl_high", "window_nll", "n_windows", "n_tokens", "seq_len"):
        assert again[name] == result[name], name


def test_cache_entry_without_windows_is_served_without_interval(model, tokenizer, cache):
    """An entry written before the windows were kept (meta.json only) keeps its value, has no interval, and
    is not recomputed: users have hours of such results."""
    first = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES, progress=False)
    (entry,) = (cache / "evals" / "ppl").iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    (entry / "records.parquet").unlink()
    meta["records"] = None
    meta["result"]["ppl"] = 123.0  # the old entry's own number, so that serving it (not recomputing) shows
    (entry / "meta.json").write_text(json.dumps(meta))
    calls = []
    handle = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        old = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES, progress=False)
    finally:
        handle.remove()
    assert calls == [] and old["cached"]
    assert old["ppl"] == 123.0 and old["ppl_low"] is None and old["ppl_high"] is None and old["window_nll"] is None
    assert (old["n_windows"], old["n_tokens"]) == (first["n_windows"], first["n_tokens"])
    assert EvalCache().load("ppl", entry.name) is not None


def test_cache_entry_with_the_wrong_windows_is_recomputed(model, tokenizer, cache):
    first = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES, progress=False)
    (entry,) = (cache / "evals" / "ppl").iterdir()
    meta = json.loads((entry / "meta.json").read_text())
    meta["result"]["n_windows"] += 1  # the records no longer hold one NLL per window
    (entry / "meta.json").write_text(json.dumps(meta))
    again = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES, progress=False)
    assert not again["cached"] and again["ppl_low"] == first["ppl_low"]


# ---------------------------------------------------------------- runs record it


def test_heldout_check_records_the_interval(model, tokenizer):
    from sfsd.search.heldout import HELDOUT_TOKENS, heldout_value

    held = heldout_value(model, tokenizer, {"name": "ppl", "seq_len": 16}, model_key="tiny-0")
    assert held["n"] == HELDOUT_TOKENS and held["n_windows"] == HELDOUT_TOKENS // 16 and held["seq_len"] == 16
    assert held["low"] < held["value"] < held["high"]


def test_describe_heldout_shows_intervals_and_says_when_there_are_none():
    from sfsd.search.heldout import describe_heldout

    def result(low_high: dict) -> dict:
        return {"base_metric": 30.0, "final_metric": 31.5,
                "heldout": {"metric": "ppl", "higher_is_better": False,
                            "base": {"value": 40.0, "n": 16384, "seq_len": 128, **low_high},
                            "final": {"value": 44.0, "n": 16384, "seq_len": 128,
                                      **{k: v * 1.1 for k, v in low_high.items()}}}}

    text = describe_heldout(result({"low": 38.0, "high": 42.0}))
    assert "ppl 44.00 [41.80, 46.20] vs base 40.00 [38.00, 42.00]" in text
    assert "16,384 tokens, 128-token windows, 95% bootstrap over windows" in text and "eval split +10.0%" in text
    old = describe_heldout(result({}))  # a run recorded before the interval was kept
    assert "ppl 44.00 vs base 40.00" in old and "no interval" in old
    assert describe_heldout(result({}), values=False) == "search split +5.0%, eval split +10.0% (16,384 tokens)"


def test_uniform_run_records_the_interval_and_table1_shows_it(default_model_dir, tmp_path):
    from conftest import save_tiny_llama

    from sfsd.dashboard import data
    from sfsd.dashboard.frontier import display_table
    from sfsd.runs.frontier import frontier_frame
    from sfsd.search.uniform import UniformConfig, run_uniform

    folder = save_tiny_llama(tmp_path / "tiny", default_model_dir, 2)
    run = run_uniform(UniformConfig(model=str(folder), method="none", tasks=[], ppl_seq_lens=[16], ppl_tokens=512),
                      progress=False)
    (record,) = [e for e in run.read_evaluations() if e["kind"] == "ppl"]
    metrics = record["metrics"]
    assert (metrics["seq_len"], metrics["n_tokens"], metrics["n_windows"]) == (16, 512, 32)
    assert metrics["ppl_low"] < metrics["ppl"] < metrics["ppl_high"]
    rows = data.uniform_frame()
    table = data.table1_text(rows)
    header = "ppl @16 tokens [95% CI] n=32 windows"
    value, low, high = (float(x.replace(",", "")) for x in CELL.fullmatch(table[header].iloc[0]).groups())
    # a random model's perplexity is about its vocabulary (49,152): whole numbers shown
    assert (value, low, high) == pytest.approx((metrics["ppl"], metrics["ppl_low"], metrics["ppl_high"]), abs=0.5)
    points = frontier_frame()  # the base model is a frontier point too
    assert display_table(points)[header].iloc[0] == table[header].iloc[0]
    from sfsd.dashboard.report import build_report

    report = build_report(data.load_run(run.id), pd.DataFrame())
    assert f"<td>{table[header].iloc[0]}</td>" in report and header in report  # Table 1 in the report
    assert "bootstrap over the windows" in report  # and what the interval is


# ---------------------------------------------------------------- what is shown


def test_table_cells_and_error_bars_of_rows_with_and_without_an_interval():
    from sfsd.dashboard import data, plots

    rows = pd.DataFrame([
        {"method": "base", "state": "done", "params": 134.5e6, "macs": 1e9, "overall_budget": 1.0,
         "ppl@128": 20.0, "low:ppl@128": 19.5, "high:ppl@128": 20.61, "tokens:ppl@128": 16384},
        {"method": "weight", "state": "done", "params": 111e6, "macs": 8e8, "overall_budget": 0.8,  # an old run
         "ppl@128": 371565.0, "low:ppl@128": None, "high:ppl@128": None, "tokens:ppl@128": 8192},
    ])
    table = data.table1_text(rows)
    assert list(table["ppl @128 tokens [95% CI]"]) == ["20.00 [19.50, 20.61] (n=128 windows)",
                                                       "371,565 (no CI) (n=64 windows)"]  # the rows' n differ
    figure = plots.perplexity_bars(rows)
    assert figure.layout.yaxis.type == "log"
    assert figure.data[0].error_y.array == pytest.approx((0.61,)) and figure.data[0].error_y.arrayminus == (0.5,)
    assert figure.data[1].error_y.array is None  # no interval, no error bar
    assert figure.data[0].customdata == ("20.00 [19.50, 20.61]",)


def test_frontier_points_carry_error_bars_and_hover_intervals():
    from sfsd.dashboard.frontier import display_table, frontier_figure

    frame = pd.DataFrame({"model": "m", "strategy": ["base", "uniform", "uniform"], "run_id": ["a", "b", "c"],
                          "method": ["none", "feature", "feature"], "overall_budget": [1.0, 0.8, 0.5],
                          "ppl@128": [31.06, 190.0, 950.0], "low:ppl@128": [30.0, 180.0, None],
                          "high:ppl@128": [32.0, 1200.0, None], "tokens:ppl@128": [2048] * 3,
                          "target": [1.0, 0.8, 0.5], "macs": [1, 1, 1], "tolerance": [None] * 3})
    figure = frontier_figure(frame, "ppl@128")
    (trace,) = figure.data
    assert trace.error_y.array == (None, 1010.0) and trace.error_y.arrayminus == (None, 10.0)  # by budget
    assert [cells[3] for cells in trace.customdata] == ["950.00 (no CI)", "190.00 [180.00, 1,200]"]
    assert 10 ** figure.layout.yaxis.range[1] >= 1200.0  # the error bar fits the log axis
    assert "31.06 [30.00, 32.00]" in figure.layout.annotations[0].text
    table = display_table(frame)
    assert list(table["ppl @128 tokens [95% CI] n=16 windows"]) == ["31.06 [30.00, 32.00]", "190.00 [180.00, 1,200]",
                                                                      "950.00 (no CI)"]
    assert not [c for c in table.columns if c.startswith(("low:", "high:", "tokens:"))]


def test_evaluations_text_shows_the_interval_of_each_perplexity():
    from sfsd.dashboard import data

    evaluations = pd.DataFrame([
        {"kind": "ppl", "task": "wiki", "ppl": 20.0, "ppl_low": 19.5, "ppl_high": 20.6, "seq_len": 128.0,
         "n_tokens": 16384.0},
        {"kind": "task", "task": "piqa", "acc": 0.6, "acc_norm": 0.4, "n": 5.0},
        {"kind": "ppl", "task": "wiki", "ppl": 21.0, "seq_len": 64.0, "n_tokens": 16384.0},
    ])
    text = data.evaluations_text(evaluations)
    assert list(text["ppl [95% CI]"]) == ["20.00 [19.50, 20.60]", "—", "21.00 (no CI)"]
    assert "ppl_low" not in text and list(text["n_tokens"]) == ["16,384", "—", "16,384"]


# ---------------------------------------------------------------- the tokens kept per tokenizer and text


def test_text_tokens_kept_per_tokenizer_and_text_equal_a_fresh_tokenization(default_model_dir):
    from transformers import AutoTokenizer

    from sfsd.data import wiki_text
    from sfsd.data.sequences import text_ids
    from sfsd.evaluate.perplexity import _tokens_key, text_tokens, tokenize_text

    tokenizer = AutoTokenizer.from_pretrained(default_model_dir)
    text = wiki_text("search")[:4000]
    kept = text_tokens(tokenizer, text)
    assert torch.equal(kept, tokenize_text(tokenizer, text))
    kept[0] = -1  # a copy: changing it leaves what is kept as it was
    assert torch.equal(text_tokens(tokenizer, text), tokenize_text(tokenizer, text))
    assert torch.equal(text_tokens(tokenizer, text, with_specials=False), text_ids(tokenizer, text))
    assert not torch.equal(text_tokens(tokenizer, text[1:]), kept)
    before = _tokens_key(tokenizer, text, True)
    tokenizer.add_tokens(["qqzzxx"])  # another vocabulary: another key, and the new token is used
    assert _tokens_key(tokenizer, text, True) != before
    assert torch.equal(text_tokens(tokenizer, text + " qqzzxx"), tokenize_text(tokenizer, text + " qqzzxx"))
    assert int(text_tokens(tokenizer, " qqzzxx", with_specials=False)[-1]) == len(tokenizer) - 1
