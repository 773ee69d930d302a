"""The intervals every shown accuracy carries: paired delta, disagreement text, Table 1 text and warnings."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from sfsd.evaluate.compare import disagreement, disagreement_report, paired_delta_interval
from sfsd.evaluate.intervals import format_proportion, mean_interval, wilson_interval

CELL = re.compile(r"([+-]?[\d.]+) \[([+-]?[\d.]+), ([+-]?[\d.]+)\]")


def test_paired_delta_interval_is_the_wald_interval_of_the_discordant_pairs():
    # 100 documents, b gains 12 and loses 4: delta 0.08, variance ((12 + 4) / 100 - 0.08^2) / 100
    low, high = paired_delta_interval(12, 4, 100)
    half = 1.959963984540054 * math.sqrt((0.16 - 0.0064) / 100)
    assert (low, high) == pytest.approx((0.08 - half, 0.08 + half))
    assert paired_delta_interval(0, 0, 50) == (0.0, 0.0)  # identical answers: no difference at all
    assert all(math.isnan(x) for x in paired_delta_interval(0, 0, 0))


def test_disagreement_report_gives_percent_points_and_intervals():
    golds = [0, 1, 0, 1, 1, 0, 1, 0]
    a = pd.DataFrame({"task": "piqa", "doc_id": [str(i) for i in range(8)], "gold": golds,
                      "pred": [0, 1, 0, 1, 1, 0, 0, 1]})  # 6 of 8 right
    b = a.assign(pred=[0, 1, 0, 1, 0, 1, 1, 0])  # 6 of 8 right, on other documents
    table = disagreement(a, b)
    row = table.iloc[0]
    assert (row["n_differ"], row["n_gained"], row["n_lost"]) == (4, 2, 2)
    text = disagreement_report(table).iloc[0]
    assert text["n"] == 8
    value, low, high = map(float, CELL.fullmatch(text["disagreement"]).groups())
    assert value == 50.0 and (low, high) == pytest.approx([100 * x for x in wilson_interval(4, 8)], abs=0.05)
    delta, low, high = map(float, CELL.fullmatch(text["delta"]).groups())
    assert delta == 0.0 and low < 0 < high  # in points: +0.0 [-x, +x], not a fraction
    assert text["acc_a"] == format_proportion(0.75, 8, scale=100, digits=1, show_n=False)


def test_format_proportion_and_mean_interval():
    assert format_proportion(0.65, 100) == "0.650 [0.553, 0.736] (n=100)"
    assert format_proportion(0.65, 100, scale=100, digits=1, show_n=False) == "65.0 [55.3, 73.6]"
    assert format_proportion(float("nan"), 10) == "—" and format_proportion(0.5, 0) == "—"
    low, high = mean_interval([0.5, 0.7], [100, 100])
    half = 1.959963984540054 * math.sqrt(0.25 / 100 + 0.21 / 100) / 2
    assert (low, high) == pytest.approx((0.6 - half, 0.6 + half))
    assert all(math.isnan(x) for x in mean_interval([0.5], [None]))


def test_table1_text_leads_with_perplexity_and_warns_on_weak_numbers():
    from sfsd.dashboard import data

    rows = pd.DataFrame([
        {"method": "base", "state": "done", "params": 134.5e6, "macs": 1e9, "overall_budget": 1.0,
         "acc:boolq": 0.62, "n:boolq": 100, "acc:piqa": 0.66, "n:piqa": 20, "avg": 0.64, "ppl@128": 20.0,
         "low:ppl@128": 19.4, "high:ppl@128": 20.7, "tokens:ppl@128": 16384},
        {"method": "weight", "state": "running", "params": 111e6, "macs": 8e8, "overall_budget": 0.8,
         "acc:boolq": 0.67, "n:boolq": 100, "acc:piqa": None, "n:piqa": None, "avg": None, "ppl@128": 371565.0,
         "tokens:ppl@128": 16384},  # recorded before perplexity intervals were kept
    ])
    table = data.table1_text(rows)
    ppl = "ppl @128 tokens [95% CI] n=128 windows"
    assert list(table.columns[:4]) == ["method", "state", ppl, "params (M)"]
    assert list(table[ppl]) == ["20.00 [19.40, 20.70]", "371,565 (no CI)"]
    assert table.loc[0, "boolq acc % [95% CI] n=100"] == "62.0 [52.2, 70.9]"
    assert table.loc[1, "piqa acc % [95% CI] n=20"] == "—" and table.loc[1, "average acc % [95% CI]"] == "—"
    value, low, high = map(float, CELL.fullmatch(table.loc[0, "average acc % [95% CI]"]).groups())
    assert value == 64.0 and low < value < high
    notes = data.table1_warnings(rows)
    assert len(notes) == 2
    assert notes[0].startswith("piqa: only 20 documents") and "weight (371,565)" in notes[1]


def test_table1_borrows_the_base_run_of_the_same_evaluation():
    """The base model does not depend on beta or the blocks: a protocol with no base run of its own shows the
    model's base run that scored the same tasks and documents, and no other."""
    from sfsd.dashboard import data

    uniform = pd.DataFrame([
        {"model": "m", "method": "base", "beta": 0.46, "last_blocks": 12, "tasks": "piqa", "limit": 100,
         "run_id": "b1"},
        {"model": "m", "method": "base", "beta": 1.0, "last_blocks": 0, "tasks": "", "limit": 100, "run_id": "b0"},
        {"model": "m", "method": "feature", "beta": 0.46, "last_blocks": 11, "tasks": "piqa", "limit": 100,
         "run_id": "f"},
        {"model": "m", "method": "weight", "beta": 0.33, "last_blocks": 22, "tasks": "boolq", "limit": 100,
         "run_id": "w"},
    ])
    assert list(data.table1_rows(uniform, "m", 0.46, 11)["run_id"]) == ["b1", "f"]
    assert list(data.table1_rows(uniform, "m", 0.33, 22)["run_id"]) == ["w"]  # no base scored boolq
    assert list(data.table1_rows(uniform, "m", 0.46, 12)["run_id"]) == ["b1"]
