"""Dashboard table cells: numbers from the run frames (nullable Int64 columns give numpy integers) show."""

from __future__ import annotations

import pandas as pd


def test_snapshot_table_shows_parameters_stored_as_numpy_integers():
    from sfsd.dashboard.data import snapshot_table

    frame = pd.DataFrame({"method": ["feature"], "step": [7], "params": pd.Series([6_330_000], dtype="Int64"),
                          "budget": [0.6948], "metric": [50.62], "time": ["2026-11-24T01:19:40+00:00"],
                          "run_id": ["search-x"]})
    row = snapshot_table([frame]).iloc[0]
    assert row["params (M)"] == "6.330" and row["budget %"] == "69.48"


def test_the_runs_table_says_what_each_run_aims_at():
    """A tolerance for a search, the budget B and the strategy for an allocation (whose config tolerance is
    unused), nothing for a run without a metric."""
    from sfsd.dashboard.data import EMPTY, runs_text

    runs = pd.DataFrame({"metric": ["ppl", "ppl", None], "tolerance": [0.05, 0.05, None],
                         "strategy": ["linear", "alg1", None], "target_budget": [None, 0.8, None]})
    assert list(runs_text(runs)["target"]) == ["ppl +5%", "alg1 to 80% budget", EMPTY]


def test_a_run_label_names_a_tolerance_only_for_a_search_with_one():
    """Allocation runs were labelled with the unused tolerance of their config ("ppl tol 0.05"), four of them
    alike; a ppl tolerance is a relative increase (+5%), a task's an absolute drop (points)."""
    from sfsd.dashboard.data import run_label

    ppl = {"kind": "search", "method": "feature", "model": "m", "metric": {"name": "ppl", "tolerance": 0.05}}
    task = {**ppl, "metric": {"name": "task", "task": "piqa", "tolerance": 0.02}}
    target = {**ppl, "strategy": "sensitivity", "target_budget": 0.8}
    assert run_label("search-m-1a2b3c4d", ppl) == "feature · ppl +5% · m · 1a2b3c"
    assert run_label("search-m-1a2b3c4d", task) == "feature · task/piqa −2 pts · m · 1a2b3c"
    assert run_label("search-m-1a2b3c4d", target) == "feature · sensitivity to 80% budget · m · 1a2b3c"


def test_the_frontier_log_axis_labels_read_their_values():
    """Plotly's own minor log ticks read "4, 3, 2, 100" (400 shown as "4"): every label is its value written out."""
    from sfsd.dashboard.frontier import frontier_figure

    frame = pd.DataFrame({"strategy": ["base", "uniform", "uniform", "spectrum"], "run_id": ["a", "b", "c", "d"],
                          "method": ["none", "feature", "feature", "feature"], "overall_budget": [1.0, 0.8, 0.5, 0.8],
                          "ppl@128": [31.06, 190.0, 950.0, 280.0], "target": [1.0, 0.8, 0.5, 0.8],
                          "macs": [1, 1, 1, 1], "tolerance": [None] * 4})
    axis = frontier_figure(frame, "ppl@128").layout.yaxis
    scale = {"k": 1e3, "M": 1e6}
    read = [float(text[:-1]) * scale[text[-1]] if text[-1] in scale else float(text) for text in axis.ticktext]
    assert read == list(axis.tickvals) and len(read) >= 3
    assert 10 ** axis.range[0] <= 31.06 and 10 ** axis.range[1] >= 950.0  # the base line and every point shown


def test_the_frontier_draws_one_perplexity_protocol_with_its_own_base_line():
    """Two base models measured on 16,384 and 4,096 tokens were two unlabelled lines: the chart draws the token
    count most points were measured on, its base line only, says the count in the axis title and what it left out."""
    from sfsd.dashboard.frontier import frontier_figure, one_protocol

    frame = pd.DataFrame({"strategy": ["base", "base", "Algorithm 1", "Algorithm 1", "uniform"],
                          "run_id": ["b1", "b2", "s1", "s2", "u"], "method": ["none", "none", "feature", "weight",
                                                                             "feature"],
                          "overall_budget": [1.0, 1.0, 0.97, 0.97, 0.8], "ppl@128": [31.06, 28.2, 40.1, 900.0, 74.8],
                          "tokens:ppl@128": [16384, 4096, 16384, 16384, 4096], "target": [1.0, 1.0, None, None, 0.8],
                          "macs": [1] * 5, "tolerance": [None, None, 0.1, 0.1, None]})
    kept, note = one_protocol(frame, "ppl@128")
    assert list(kept["run_id"]) == ["b1", "s1", "s2"]
    assert note == ("ppl@128 on 16,384 eval-split tokens; 2 point(s) measured on other token counts (4,096) are "
                    "another protocol and are not drawn.")
    fig = frontier_figure(frame, "ppl@128")
    assert [a.text for a in fig.layout.annotations if a.text.startswith("base model")] == ["base model 31.06"]
    assert "16,384 tokens" in fig.layout.yaxis.title.text
    assert sorted(t.name for t in fig.data) == ["Algorithm 1 (feature)", "Algorithm 1 (weight)"]


def test_table1_headline_reads_the_rows_it_sits_above():
    from sfsd.dashboard import data
    from sfsd.dashboard.plots import method_label

    rows = pd.DataFrame({"method": ["base", "weight", "feature"], "ppl@128": [28.21, 4196.0, 57.94],
                         "overall_budget": [1.0, 0.928, 0.928]})
    assert data.table1_headline(rows) == (
        "At 92.8% of the decomposable parameters, perplexity (128-token windows) as a multiple of the base model's "
        f"28.21: {method_label('weight')} 149x (broken), {method_label('feature')} 2.1x.")
    assert data.table1_headline(rows[rows["method"] != "base"]) is None  # no base: no multiple


def test_frontier_headline_compares_the_lines_at_the_budget_most_reached():
    from sfsd.dashboard.frontier import frontier_headline

    frame = pd.DataFrame({"strategy": ["base", "uniform", "sensitivity", "uniform", "spectrum", "sensitivity"],
                          "method": ["none"] + ["feature"] * 5, "run_id": list("abcdef"),
                          "target": [1.0, 0.8, 0.8, 0.6, 0.8, 0.6], "overall_budget": [1.0, 0.8, 0.8, 0.6, 0.8, 0.6],
                          "ppl@128": [31.06, 192.7, 82.0, 579.8, 276.5, 273.8], "tokens:ppl@128": [16384] * 6,
                          "macs": [1] * 6, "tolerance": [None] * 6})
    assert frontier_headline(frame, "ppl@128") == (
        "At the 80% target budget, perplexity (128-token windows on 16,384 eval-split tokens) as a multiple of the "
        "base model's 31.06: sensitivity (feature) 2.6x, uniform (feature) 6.2x, spectrum (feature) 8.9x (best "
        "first).")
    assert frontier_headline(frame[frame["strategy"] != "base"], "ppl@128") is None
