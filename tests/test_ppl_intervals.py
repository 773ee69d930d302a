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
