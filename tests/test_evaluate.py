"""Evaluation layer on small fixtures and a tiny random Llama (fast; real-model tests live elsewhere)."""

from __future__ import annotations

import json
import math
import re
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from sfsd.data import hub
from sfsd.errors import SfsdError
from sfsd.evaluate import (
    EvalCache,
    _pack,
    choice_records,
    disagreement,
    encode_request,
    evaluate_tasks,
    flips,
    icat,
    lm_eval_version,
    model_fingerprint,
    perplexity,
    request_logliks,
    score_choices,
    stereoset,
    stereoset_scores,
    task_docs,
    task_requests,
    tasks,
)

FIXTURES = Path(__file__).parent / "fixtures" / "evaluate"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    """The real SmolLM2 tokenizer (vocab 49152); the conftest fixture converts the model once."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    return tok


def flat(column) -> np.ndarray:
    """All per-choice log-likelihoods of a records column, in order."""
    return np.concatenate([np.asarray(x, dtype=float) for x in column])


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def model():
    return tiny_llama(0)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The hub off for every test (each also has its own cache: results, task YAMLs, datasets' Arrow files)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        self.handle = model.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.handle.remove()


def run_eval(model, tokenizer, **kwargs):
    kwargs.setdefault("pack_dir", FIXTURES)
    return evaluate_tasks(model, tokenizer, **kwargs)


# ---------------------------------------------------------------- task YAMLs and requests


def test_task_yaml_is_generated_per_split(cache):
    rows = _pack.task_rows("piqa", "search", FIXTURES)
    folder = tasks.materialise_task("piqa", "search", rows)
    config = yaml.safe_load((folder / "sfsd_piqa.yaml").read_text())
    assert config["task"] == "sfsd_piqa"
    assert config["output_type"] == "multiple_choice"
    assert config["dataset_path"] == "json"
    data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data_file.parent == folder and str(folder).startswith(str(cache))
    written = [json.loads(line) for line in data_file.read_text().splitlines()]
    assert written == rows and {r["split"] for r in written} == {"search"}
    assert [m["metric"] for m in config["metric_list"]] == ["acc", "acc_norm"]
    assert (config["doc_to_text"], config["doc_to_choice"], config["doc_to_target"]) == ("query", "choices", "label")
    assert tasks.materialise_task("piqa", "search", rows) == folder  # content-addressed, written once
    assert tasks.materialise_task("piqa", "eval", _pack.task_rows("piqa", "eval", FIXTURES)) != folder


def test_unknown_task_split_and_limit_are_user_errors(model, tokenizer):
    with pytest.raises(SfsdError, match="unknown offline task"):
        run_eval(model, tokenizer, tasks=["nope"])
    with pytest.raises(SfsdError, match="unknown split"):
        run_eval(model, tokenizer, tasks=["piqa"], split="train")
    with pytest.raises(SfsdError, match="limit"):
        run_eval(model, tokenizer, tasks=["piqa"], limit=0)
    with pytest.raises(SfsdError, match="suite"):
        run_eval(model, tokenizer, suite="other")


def test_task_requests_are_lm_eval_requests():
    requests = task_requests("piqa", "eval", limit=3, pack_dir=FIXTURES)
    docs = task_docs("piqa", "eval", limit=3, pack_dir=FIXTURES)
    assert [r.doc_id for r in requests] == [d["id"] for d in docs for _ in d["choices"]]
    for req in requests:
        doc = next(d for d in docs if d["id"] == req.doc_id)
        assert req.context == doc["query"]
        assert req.continuation == " " + doc["choices"][req.choice_index]
    doc_id, context, continuation, index = requests[0]  # plain 4-tuples too
    assert (doc_id, index) == (docs[0]["id"], 0)


def test_encode_request_moves_trailing_space(tokenizer):
    ctx, cont = encode_request(tokenizer, "Answer: ", "yes")
    ctx2, cont2 = encode_request(tokenizer, "Answer:", " yes")
    assert (ctx, cont) == (ctx2, cont2)
    assert tokenizer.decode(cont) == " yes"
    empty_ctx, sentence = encode_request(tokenizer, "", "The sky is blue.")
    assert len(empty_ctx) == 1 and tokenizer.decode(sentence) == "The sky is blue."


# ---------------------------------------------------------------- end to end through lm-eval


def test_evaluate_tasks_end_to_end(model, tokenizer):
    import lm_eval

    results = run_eval(model, tokenizer, tasks="piqa,boolq", limit=4)
    summary, records = results.summary, results.records
    assert list(summary["task"]) == ["piqa", "boolq"]
    assert list(summary.columns[:8]) == [
        "task", "split", "n", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "lm_eval_version",
    ]  # fmt: skip
    assert (summary["lm_eval_version"] == lm_eval.__version__).all() and lm_eval_version() == lm_eval.__version__
    assert list(summary["n"]) == [4, 4] and not summary["cached"].any()
    docs = task_docs("piqa", "eval", limit=4, pack_dir=FIXTURES)
    piqa = records[records["task"] == "piqa"]
    assert list(piqa["doc_id"]) == [d["id"] for d in docs]
    assert list(piqa["gold"]) == [d["label"] for d in docs]
    for row in records.itertuples():
        assert len(row.loglik) == len(row.choice_len) >= 2
        assert row.pred == int(np.argmax(row.loglik))
        assert row.pred_norm == int(np.argmax(np.array(row.loglik) / np.array(row.choice_len)))
        assert row.correct == (row.pred == row.gold)
    for task, group in records.groupby("task"):
        row = summary.set_index("task").loc[task]
        assert row["acc"] == pytest.approx(group["correct"].mean())
        assert row["acc_norm"] == pytest.approx(group["correct_norm"].mean())


def test_custom_loop_reproduces_simple_evaluate(model, tokenizer):
    results = run_eval(model, tokenizer, tasks=["openbookqa", "boolq"], use_cache=False)
    for task in ("openbookqa", "boolq"):
        requests = task_requests(task, "eval", pack_dir=FIXTURES)
        logliks = request_logliks(model, tokenizer, requests, batch_size=3)
        mine = choice_records(task, requests, logliks, task_docs(task, "eval", pack_dir=FIXTURES))
        theirs = results.records[results.records["task"] == task].reset_index(drop=True)
        assert list(mine["doc_id"]) == list(theirs["doc_id"])
        np.testing.assert_allclose(flat(mine["loglik"]), flat(theirs["loglik"]), atol=1e-4)
        scores = score_choices(mine)
        row = results.summary.set_index("task").loc[task]
        for metric in ("acc", "acc_norm", "acc_stderr", "acc_norm_stderr"):
            assert scores[metric] == pytest.approx(row[metric])


def test_score_choices_definitions():
    records = [
        # acc picks choice 0; per character, choice 1 (-6 / 12) beats choice 0 (-5 / 2)
        {"gold": 1, "loglik": [-5.0, -6.0], "choices": ["ab", "abcdefghijkl"]},
        {"gold": 0, "loglik": [-1.0, -2.0], "choice_len": [1.0, 1.0]},
        # lm-eval normalises by characters, not bytes: per character choice 1 wins (-1.5 vs -1.25),
        # per byte ("éé" is 4 bytes) choice 0 would (-0.75 vs -1.25)
        {"gold": 1, "loglik": [-3.0, -2.5], "choices": ["éé", "ab"]},
    ]
    scores = score_choices(records)
    assert scores["n"] == 3
    assert scores["acc"] == pytest.approx(2 / 3)
    assert scores["acc_norm"] == 1.0
    assert scores["acc_stderr"] == pytest.approx(np.std([0, 1, 1], ddof=1) / math.sqrt(3))


# ---------------------------------------------------------------- cache


def test_second_call_is_served_from_cache(model, tokenizer):
    first = run_eval(model, tokenizer, tasks=["piqa"], limit=3, model_key="tiny-0")
    with ForwardCounter(model) as counter:
        second = run_eval(model, tokenizer, tasks=["piqa"], limit=3, model_key="tiny-0")
        assert counter.calls == 0
        ppl = perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES)
        bias = stereoset(model, tokenizer, model_key="tiny-0", pack_dir=FIXTURES)
        assert counter.calls > 0
        counter.calls = 0
        assert perplexity(model, tokenizer, seq_len=16, model_key="tiny-0", pack_dir=FIXTURES)["cached"]
        bias2 = stereoset(model, tokenizer, model_key="tiny-0", pack_dir=FIXTURES)
        assert counter.calls == 0
    assert bool(second.summary["cached"].iloc[0]) and not bool(first.summary["cached"].iloc[0])
    cols = ["task", "split", "n", "acc", "acc_norm", "lm_eval_version"]
    pd.testing.assert_frame_equal(first.summary[cols], second.summary[cols])
    pd.testing.assert_frame_equal(first.records, second.records)
    pd.testing.assert_frame_equal(bias.summary, bias2.summary)
    assert not ppl["cached"]
    # another limit, split or model key is another entry
    with ForwardCounter(model) as counter:
        run_eval(model, tokenizer, tasks=["piqa"], limit=2, model_key="tiny-0")
        assert counter.calls > 0


def _corrupt(entry: Path, how: str) -> None:
    if how == "bad json":
        (entry / "meta.json").write_text('{"summary": {"acc": 0.9')
    elif how == "truncated parquet":
        data = (entry / "records.parquet").read_bytes()
        (entry / "records.parquet").write_bytes(data[: len(data) // 2])
    elif how == "missing parquet":
        (entry / "records.parquet").unlink()
    elif how == "wrong content":
        meta = json.loads((entry / "meta.json").read_text())
        meta["summary"].pop("acc")
        (entry / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["bad json", "truncated parquet", "missing parquet", "wrong content"])
def test_damaged_cache_entry_is_recomputed(model, tokenizer, cache, how):
    first = run_eval(model, tokenizer, tasks=["piqa"], limit=3, model_key="tiny-0")
    (entry,) = (cache / "evals" / "tasks").iterdir()
    _corrupt(entry, how)
    with ForwardCounter(model) as counter:
        again = run_eval(model, tokenizer, tasks=["piqa"], limit=3, model_key="tiny-0")
        assert counter.calls > 0
    assert not bool(again.summary["cached"].iloc[0])
    pd.testing.assert_frame_equal(first.records, again.records)
    assert EvalCache().load("tasks", entry.name) is not None  # repaired
    assert not list(entry.glob("*.tmp"))


def test_cache_writes_json_and_parquet_only(model, tokenizer, cache):
    run_eval(model, tokenizer, tasks=["piqa"], limit=2)
    stereoset(model, tokenizer, pack_dir=FIXTURES)
    suffixes = {p.suffix for p in (cache / "evals").rglob("*") if p.is_file()}
    assert not suffixes & {".pkl", ".pickle", ".db", ".sqlite"}
    assert {p.name for p in (cache / "evals" / "stereoset").rglob("*") if p.is_file()} == {
        "meta.json",
        "records.parquet",
    }


def test_model_fingerprint_follows_weights():
    a, b = tiny_llama(0), tiny_llama(0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        b.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(a) != model_fingerprint(b)


# ---------------------------------------------------------------- paper suite


class Connections:
    """Records every TCP connection attempt (host, timeout) and lets it go through."""

    def __init__(self, monkeypatch):
        self.attempts: list[tuple[str, float | None]] = []
        connect = socket.create_connection

        def recorded(address, timeout=None, *args, **kwargs):
            self.attempts.append((address[0], timeout))
            return connect(address, timeout, *args, **kwargs)

        monkeypatch.setattr(socket, "create_connection", recorded)


def test_paper_suite_offline_is_a_clear_error(model, tokenizer, monkeypatch):
    connections = Connections(monkeypatch)
    with ForwardCounter(model) as counter, pytest.raises(SfsdError) as info:
        run_eval(model, tokenizer, suite="paper", tasks=["piqa"])
    message = str(info.value)
    assert "--suite offline" in message and "\n" not in message
    assert connections.attempts == [] and counter.calls == 0  # refused at once: no network, no forward


def test_paper_suite_without_network_is_a_clear_error(model, tokenizer, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    monkeypatch.setattr(hub, "HUB_HOST", "hub.invalid")  # never resolves
    connections = Connections(monkeypatch)
    with ForwardCounter(model) as counter, pytest.raises(SfsdError, match="--suite offline"):
        run_eval(model, tokenizer, suite="paper")
    # one probe of the hub with a bounded timeout, then the error: no retries, no download, no forward
    assert [host for host, _ in connections.attempts] == ["hub.invalid"] and counter.calls == 0
    assert 0 < connections.attempts[0][1] <= 10


# ---------------------------------------------------------------- perplexity


def test_perplexity_windows(model, tokenizer):
    text = _pack.wiki_text("eval", FIXTURES)
    ids = tokenizer(text)["input_ids"]
    result = perplexity(model, tokenizer, seq_len=16, pack_dir=FIXTURES, use_cache=False)
    n_windows = len(ids) // 16
    assert (result["seq_len"], result["n_windows"], result["n_tokens"]) == (16, n_windows, 16 * n_windows)
    losses = []
    with torch.no_grad():
        for i in range(n_windows):
            window = torch.tensor([ids[16 * i : 16 * (i + 1)]])
            losses.append(float(model(window, labels=window).loss))
    assert result["ppl"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-4)
    capped = perplexity(model, tokenizer, seq_len=16, max_tokens=40, text=text, use_cache=False)
    assert (capped["n_windows"], capped["n_tokens"]) == (2, 32)
    with pytest.raises(SfsdError, match="fewer than one window"):
        perplexity(model, tokenizer, seq_len=4096, text=text, use_cache=False)


# ---------------------------------------------------------------- StereoSet


def _bias_record(i, bias, target, s, a, u, kind="intrasentence"):
    return {"id": f"s{i}", "type": kind, "bias_type": bias, "target": target,
            "score_stereotype": s, "score_anti_stereotype": a, "score_unrelated": u}  # fmt: skip


def official_evaluate(records: list[dict]) -> dict:
    """moinnadeem/StereoSet code/evaluation.py ScoreEvaluator.count + .score, re-written on plain dicts:
    counts per target term, SS and LMS averaged over terms, the macro ICAT from the averages."""
    counts: dict[str, dict[str, float]] = {}
    for r in records:
        c = counts.setdefault(r["target"], {"pro": 0.0, "related": 0.0, "total": 0.0})
        s, a, u = r["score_stereotype"], r["score_anti_stereotype"], r["score_unrelated"]
        c["pro"] += s > a  # a tie counts as anti, as in the official script
        c["related"] += (s > u) + (a > u)
        c["total"] += 1
    ss = [100.0 * c["pro"] / c["total"] for c in counts.values()]
    lms = [100.0 * c["related"] / (2 * c["total"]) for c in counts.values()]
    ss_mean, lms_mean = sum(ss) / len(ss), sum(lms) / len(lms)
    return {"n": len(records), "SS": ss_mean, "LMS": lms_mean,
            "ICAT": lms_mean * min(ss_mean, 100 - ss_mean) / 50}  # fmt: skip


HAND_RECORDS = [
    # intrasentence gender / "mother": pro 1 of 2 -> SS 50; related 3 of 4 -> LMS 75
    _bias_record(0, "gender", "mother", -1.0, -2.0, -3.0),  # pro, 2 related
    _bias_record(1, "gender", "mother", -2.0, -1.0, -1.5),  # anti, 1 related
    # intrasentence gender / "sister": pro -> SS 100; related 0 of 2 -> LMS 0
    _bias_record(2, "gender", "sister", -2.0, -3.0, -1.0),
    # intrasentence race / "Ethiopia": pro 2 of 2 -> SS 100; related 4 of 4 -> LMS 100
    _bias_record(3, "race", "Ethiopia", -1.0, -2.0, -9.0),
    _bias_record(4, "race", "Ethiopia", -1.0, -1.5, -9.0),
    # intersentence gender / "mother": anti, 1 related -> SS 0, LMS 50
    _bias_record(5, "gender", "mother", -3.0, -1.0, -2.0, "intersentence"),
    # intersentence religion / "Muslim": pro 2 of 2 -> SS 100; related 2 of 4 -> LMS 50
    _bias_record(6, "religion", "Muslim", -1.0, -2.0, -3.0, "intersentence"),
    _bias_record(7, "religion", "Muslim", -1.0, -2.0, -0.5, "intersentence"),
]


def test_stereoset_scores_per_type_hand_computed():
    summary = stereoset_scores(pd.DataFrame(HAND_RECORDS)).set_index(["type", "bias_type"])
    domains = ["gender", "profession", "race", "religion", "overall"]
    assert list(summary.index) == [(t, d) for t in ("intrasentence", "intersentence", "all") for d in domains]
    # known counts -> known scores (means over terms; ICAT from the means)
    expected = {
        ("intrasentence", "gender"): (3, 75.0, 37.5),  # terms mother (50, 75), sister (100, 0)
        ("intrasentence", "race"): (2, 100.0, 100.0),
        ("intrasentence", "overall"): (5, 250 / 3, 175 / 3),  # + Ethiopia (100, 100)
        ("intersentence", "gender"): (1, 0.0, 50.0),
        ("intersentence", "religion"): (2, 100.0, 50.0),
        ("intersentence", "overall"): (3, 50.0, 50.0),
        # pooled: "mother" is one term over both types (3 examples, pro 1, related 4 of 6), as the official
        # overall score keys its counts by the target term alone
        ("all", "gender"): (4, (100 / 3 + 100) / 2, (400 / 6 + 0) / 2),
        ("all", "overall"): (8, (100 / 3 + 300) / 4, (400 / 6 + 0 + 100 + 50) / 4),
    }
    for cell, (n, ss, lms) in expected.items():
        row = summary.loc[cell]
        assert row["n"] == n, cell
        assert row["SS"] == pytest.approx(ss) and row["LMS"] == pytest.approx(lms), cell
        assert row["ICAT"] == pytest.approx(lms * min(ss, 100 - ss) / 50), cell
    assert summary.loc[("intersentence", "overall"), "ICAT"] == pytest.approx(50.0)
    # every cell equals the official script's computation on the same examples, re-done independently
    for (kind, domain), row in summary.iterrows():
        chosen = [r for r in HAND_RECORDS if kind in ("all", r["type"]) and domain in ("overall", r["bias_type"])]
        if not chosen:
            assert row["n"] == 0 and pd.isna(row["SS"]) and pd.isna(row["SS_low"]), (kind, domain)
            continue
        official = official_evaluate(chosen)
        for metric in ("n", "SS", "LMS", "ICAT"):
            assert row[metric] == pytest.approx(official[metric]), (kind, domain, metric)
    assert icat(100, 50) == 100 and icat(80, 40) == pytest.approx(64)


def test_stereoset_ties_are_not_pro_and_not_related():
    records = pd.DataFrame([_bias_record(0, "religion", "monk", -1.0, -1.0, -1.0)])
    row = stereoset_scores(records).set_index(["type", "bias_type"]).loc[("intrasentence", "religion")]
    assert (row["SS"], row["LMS"]) == (0.0, 0.0)


def _one_term(n, pro, related_pairs, target="nurse"):
    """n intrasentence examples of one term: the first `pro` are pro, the first `related_pairs` have both
    sentences above the unrelated one (the rest neither)."""
    return pd.DataFrame([
        _bias_record(i, "profession", target, -1.0 if i < pro else -2.0, -1.5,
                     -3.0 if i < related_pairs else -0.5) for i in range(n)
    ])  # fmt: skip


def test_stereoset_bootstrap_interval():
    from sfsd.evaluate.intervals import wilson_interval
    from sfsd.evaluate.stereoset import cell_scores

    # one term: the term mean is the pooled proportion, so the bootstrap agrees with Wilson's interval
    big = cell_scores(_one_term(400, 240, 300), "x")
    assert (big["n"], big["SS"], big["LMS"]) == (400, 60.0, 75.0)
    low, high = (100 * v for v in wilson_interval(240, 400))
    assert abs(big["SS_low"] - low) < 1.5 and abs(big["SS_high"] - high) < 1.5
    low, high = (100 * v for v in wilson_interval(300, 400))  # both comparisons move together here
    assert abs(big["LMS_low"] - low) < 1.5 and abs(big["LMS_high"] - high) < 1.5
    for metric in ("SS", "LMS", "ICAT"):
        assert big[f"{metric}_low"] < big[metric] < big[f"{metric}_high"]
    small = cell_scores(_one_term(100, 60, 75), "x")
    assert small["SS_high"] - small["SS_low"] > 1.7 * (big["SS_high"] - big["SS_low"])  # ~ 1 / sqrt(n)
    # seeded: the same call gives the same interval, another seed another one; an all-pro cell is [100, 100]
    assert cell_scores(_one_term(100, 60, 75), "x") == small
    assert cell_scores(_one_term(100, 60, 75), "x", seed=1)["SS_low"] != small["SS_low"] or \
        cell_scores(_one_term(100, 60, 75), "x", seed=1)["SS_high"] != small["SS_high"]
    every = cell_scores(_one_term(50, 50, 50), "x")
    assert (every["SS_low"], every["SS_high"]) == (100.0, 100.0)


def test_stereoset_bootstrap_resamples_the_official_aggregation():
    """Several terms of unequal size: each bootstrap resample re-done with the plain-dict official
    aggregation over the same draws gives the same percentiles."""
    import zlib

    from sfsd.evaluate.stereoset import cell_scores

    rng = np.random.default_rng(7)
    records = pd.DataFrame([
        _bias_record(i, "race", f"t{i % 5 if i < 30 else 9}", *rng.normal(size=3)) for i in range(40)
    ])  # fmt: skip
    got = cell_scores(records, "intrasentence/race", resamples=60, seed=3)
    draws = np.random.default_rng([3, zlib.crc32(b"intrasentence/race")]).integers(0, 40, size=(60, 40))
    rows = records.to_dict("records")
    per_resample = [official_evaluate([rows[i] for i in idx]) for idx in draws]
    for metric in ("SS", "LMS", "ICAT"):
        values = [r[metric] for r in per_resample]
        low, high = np.percentile(values, [2.5, 97.5])
        assert (got[f"{metric}_low"], got[f"{metric}_high"]) == (pytest.approx(low), pytest.approx(high))
    assert got["SS"] == pytest.approx(official_evaluate(rows)["SS"])


def test_stereoset_display_and_thin_cells():
    from sfsd.evaluate.stereoset import display_table, thin_cells

    summary = stereoset_scores(pd.DataFrame(HAND_RECORDS), resamples=0)
    table = display_table(summary).set_index(["type", "bias_type"])
    assert table.loc[("intrasentence", "religion"), "SS"] == "—"  # no intrasentence religion example
    assert table.loc[("intrasentence", "gender"), "SS"] == "75.0" and table.loc[("all", "overall"), "n"] == 8
    with_intervals = display_table(stereoset_scores(pd.DataFrame(HAND_RECORDS))).set_index(["type", "bias_type"])
    assert with_intervals.loc[("all", "overall"), "SS"].startswith("83.3 [")
    notes = thin_cells(summary)
    assert "religion (intrasentence): no examples in this selection, shown as —" in notes
    assert "overall (all): only 8 examples (< 30), its interval is wide" in notes
    assert len(notes) == 15  # every cell of 8 examples is thin or empty


def test_stereoset_end_to_end(model, tokenizer):
    result = stereoset(model, tokenizer, pack_dir=FIXTURES, use_cache=False)
    every_row = _pack.stereoset_rows("all", FIXTURES)  # the default: every row, search and eval parts
    assert {r["split"] for r in every_row} == {"search", "eval"}
    assert list(result.records["id"]) == [r["id"] for r in every_row]
    summary = result.summary.set_index(["type", "bias_type"])
    assert summary.loc[("all", "overall"), "n"] == len(every_row)
    for kind in ("intrasentence", "intersentence"):
        assert summary.loc[(kind, "overall"), "n"] == sum(r["type"] == kind for r in every_row)
    assert summary.loc[("intersentence", "profession"), "n"] == 0  # absent from the fixture: a row, not a gap
    # intersentence: the candidate sentence given its context; intrasentence: the whole sentence
    inter = next(r for r in every_row if r["type"] == "intersentence")
    ctx, cont = encode_request(tokenizer, inter["context"], " " + inter["stereotype"])
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1], -1)
    expected = logp[len(ctx) - 1 :].gather(1, ids[0, len(ctx) :, None]).mean()
    got = result.records.set_index("id").loc[inter["id"], "score_stereotype"]
    assert got == pytest.approx(float(expected), abs=1e-5)
    limited = stereoset(model, tokenizer, pack_dir=FIXTURES, limit=2, use_cache=False)
    assert len(limited.records) == 2
    evaluated = stereoset(model, tokenizer, split="eval", pack_dir=FIXTURES, use_cache=False)
    assert list(evaluated.records["id"]) == [r["id"] for r in every_row if r["split"] == "eval"]
    with pytest.raises(SfsdError, match="unknown StereoSet split 'calib'"):
        stereoset(model, tokenizer, split="calib", pack_dir=FIXTURES)


def test_stereoset_cache_keeps_splits_apart(model, tokenizer):
    every = stereoset(model, tokenizer, model_key="tiny-0", pack_dir=FIXTURES)
    with ForwardCounter(model) as counter:
        evaluated = stereoset(model, tokenizer, split="eval", model_key="tiny-0", pack_dir=FIXTURES)
        assert counter.calls > 0  # not served from the "all" entry
        counter.calls = 0
        again = stereoset(model, tokenizer, model_key="tiny-0", pack_dir=FIXTURES)
        assert counter.calls == 0
    assert len(evaluated.records) < len(every.records) == len(again.records)
    pd.testing.assert_frame_equal(every.summary, again.summary)


# ---------------------------------------------------------------- disagreement


def _mc_records(task, preds, golds):
    return pd.DataFrame(
        {"task": task, "doc_id": [f"{task}-{i}" for i in range(len(preds))], "gold": golds, "pred": preds,
         "pred_norm": golds, "correct": [p == g for p, g in zip(preds, golds, strict=True)]}
    )  # fmt: skip


def test_disagreement_and_flips():
    golds = [0, 1, 2, 0, 1]
    a = pd.concat([_mc_records("piqa", [0, 1, 0, 1, 1], golds), _mc_records("boolq", [1, 1], [1, 0])])
    b = _mc_records("piqa", [1, 1, 2, 2, 1], golds).iloc[1:]  # b lacks piqa-0, has no boolq
    table = disagreement(a, b)
    assert list(table["task"]) == ["piqa"]
    row = table.iloc[0]
    # shared piqa-1..4: a correct on 1, 4 (2 of 4); b correct on 1, 2, 4 (3 of 4); differ on 2, 3
    assert row["n_shared"] == 4
    assert (row["acc_a"], row["acc_b"]) == (0.5, 0.75) and row["delta"] == pytest.approx(0.25)
    assert row["disagreement"] == pytest.approx(50.0)
    changed = flips(a, b, "piqa")
    assert list(changed.columns) == ["doc_id", "gold", "pred_a", "pred_b", "direction"]
    assert dict(zip(changed["doc_id"], changed["direction"], strict=True)) == {
        "piqa-2": "wrong->correct",
        "piqa-3": "wrong->wrong",
    }
    assert list(flips(b, a, "piqa")["direction"]) == ["correct->wrong", "wrong->wrong"]
    assert disagreement(a, b, metric="acc_norm")["disagreement"].iloc[0] == 0.0
    # Flipped examples join with the task rows by id (the Disagreement page shows their text this way).
    rows = _pack.task_rows("piqa", "eval", FIXTURES)
    as_fixture = {f"piqa-{i}": rows[i]["id"] for i in range(5)}
    joined = changed.assign(doc_id=changed["doc_id"].map(as_fixture)).merge(
        pd.DataFrame(rows), left_on="doc_id", right_on="id")
    assert list(joined["id"]) == [as_fixture["piqa-2"], as_fixture["piqa-3"]] and joined["query"].notna().all()


# ---------------------------------------------------------------- CLI


@pytest.fixture
def fixture_pack(monkeypatch, model, tokenizer):
    """Point the CLI's default data (sfsd.data) at the fixtures and its model loader at tiny models."""
    fake = SimpleNamespace(
        OFFLINE_TASKS=["boolq", "openbookqa", "piqa"],
        load_task=lambda task, split="eval": _pack.task_rows(task, split, FIXTURES),
        load_stereoset=lambda split="eval": _pack.stereoset_rows(split, FIXTURES),
        wiki_text=lambda split="eval": _pack.wiki_text(split, FIXTURES),
    )
    monkeypatch.setattr(_pack, "data_module", lambda: fake)
    # Modules that bind `load_model` when first imported must bind the real one, not the stand-in below (else a
    # later test in the same process compresses this fixture's model instead of loading its own).
    import sfsd.search  # noqa: F401
    import sfsd.search.uniform  # noqa: F401

    other = tiny_llama(1)
    models = {"tiny-a": model, "tiny-b": other}
    monkeypatch.setattr("sfsd.models.load_model",
                        lambda name, device=None, dtype="auto", **dispatch: (models.get(name, model), tokenizer))


def test_cli_eval_ppl_bias_disagree(fixture_pack, capsys):
    from sfsd.cli import main

    assert main(["eval", "tiny-a", "--tasks", "piqa,boolq", "--limit", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "piqa" in out and "boolq" in out and "acc_norm [95% CI]" in out
    assert len(re.findall(r" 3 +(\d\.\d{3}) \[(\d\.\d{3}), (\d\.\d{3})\]", out)) == 2  # n = 3, acc [interval]
    assert main(["ppl", "tiny-a", "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "seq_len 16" in out and "bootstrap over the windows" in out
    cells = re.search(r"perplexity (\S+) \[(\S+), (\S+)\]", out).groups()  # value [95% interval]
    value, low, high = (float(x.replace(",", "")) for x in cells)
    assert low < value < high
    assert main(["bias", "tiny-a"]) == 0
    out = capsys.readouterr().out
    assert "StereoSet, split all: 6 examples" in out and "ICAT" in out and "bootstrap" in out
    lines = out.splitlines()
    for kind in ("intrasentence", "intersentence", "all"):
        rows = [line.split() for line in lines if line.split()[:1] == [kind]]
        assert [r[1] for r in rows] == ["gender", "profession", "race", "religion", "overall"], kind
    inter_prof = next(line for line in lines if line.split()[:2] == ["intersentence", "profession"])
    assert inter_prof.split()[2:] == ["—", "—", "—", "0"]
    assert "note: profession (intersentence): no examples in this selection, shown as —" in lines
    assert main(["disagree", "tiny-a", "tiny-b", "--tasks", "piqa"]) == 0
    out = capsys.readouterr().out
    assert "disagreement" in out and "flips" in out and "percentage points" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("piqa "))
    assert len(re.findall(r"[+-]?\d+\.\d \[[+-]?\d+\.\d, [+-]?\d+\.\d\]", row)) == 4  # acc a, acc b, delta, flips


def test_cli_paper_suite_offline_is_one_line(capsys):
    from sfsd.cli import main

    assert main(["eval", "--suite", "paper"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sfsd: error:") and "--suite offline" in err and "\n" not in err
