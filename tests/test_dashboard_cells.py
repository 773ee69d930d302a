"""Dashboard table cells: numbers from the run frames (nullable Int64 columns give numpy integers) show."""

from __future__ import annotations

import math

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


def test_a_narrow_log_axis_still_gets_three_readable_ticks():
    """After the quick demo the Frontier's points and base line span 40 to 60: one tick ("50") was all it had."""
    from sfsd.dashboard.plots import log_ticks

    assert [text for _, text in log_ticks(math.log10(40), math.log10(60))] == ["40", "50", "60"]
    assert [text for _, text in log_ticks(math.log10(42), math.log10(53))] == ["45", "50"]  # all it can
    assert [text for _, text in log_ticks(1, 3)] == ["10", "20", "50", "100", "200", "500", "1k"]  # wide: 1-2-5


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
    assert [a.text for a in fig.layout.annotations if a.text.startswith("base model")] == ["base model 31.06 (no CI)"]
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


def test_the_frontier_warns_about_points_far_above_the_base_model():
    from sfsd.dashboard.frontier import broken_note

    frame = pd.DataFrame({"strategy": ["base", "uniform", "uniform", "spectrum"], "method": ["none"] + ["weight"] * 3,
                          "run_id": list("abcd"), "target": [1.0, 0.8, 0.6, 0.8],
                          "overall_budget": [1.0, 0.8, 0.6, 0.8],
                          "ppl@128": [31.06, 300.0, 4196.0, 310.7], "tokens:ppl@128": [16384] * 4})
    assert broken_note(frame, "ppl@128") == (
        "2 point(s) above 10x the base model's perplexity (31.06): uniform (weight) at 60% (135x), spectrum (weight) "
        "at 80% (10x). These models are broken: their accuracies only show which answer they favour.")
    assert broken_note(frame.iloc[:2], "ppl@128") is None  # 300 is 9.7x: not broken
    assert broken_note(frame.iloc[1:], "ppl@128") is None  # no base model drawn: no multiple


def _layers(kept: list[int], full: int = 100, blocks: list[int] | None = None) -> pd.DataFrame:
    blocks = blocks or [0] * len(kept)
    return pd.DataFrame({"layer": [f"b{b}.l{i}" for i, b in enumerate(blocks)], "block": blocks,
                         "role": [f"r{i}" for i in range(len(kept))], "d_in": [10] * len(kept),
                         "d_out": [10] * len(kept), "decided": [True] * len(kept),
                         "intact": [k == full for k in kept], "rank": [None if k == full else 3 for k in kept],
                         "params_kept": kept, "params_full": [full] * len(kept),
                         "retained": [k / full for k in kept]})


def test_the_heatmap_headline_counts_full_rank_layers_and_names_the_block_cut_most():
    from sfsd.dashboard.headlines import heatmap_headline

    layers = _layers([100, 100, 60, 30], blocks=[0, 0, 1, 1])
    one = heatmap_headline([("feature", "search", "/m/tiny", layers, 0.725)])
    assert one == ("feature search on tiny: 2 of 4 layers kept at full rank, block 1 cut most (45% of its "
                   "parameters kept), overall budget 72.5%.")
    other = _layers([100, 100, 100, 50], blocks=[0, 0, 1, 1])  # block 1 keeps 75%: the mean of 45% and 75% is 60%
    two = heatmap_headline([("feature", "search", "tiny", layers, 0.725), ("feature", "search", "tiny", other, 0.875)])
    assert two == ("Mean of 2 feature searches on tiny: block 1 cut most (60% of its parameters kept on average), "
                   "overall budget 80.0% on average (range 72.5-87.5%, 2 runs).")
    whole = heatmap_headline([("weight", "search", "tiny", _layers([100, 100]), 1.0)])
    assert "2 of 2 layers kept at full rank, no layer cut" in whole


def test_averaged_heatmap_cells_carry_their_spread_and_show_no_empty_values():
    from sfsd.dashboard.data import EMPTY, heatmap_cells_text
    from sfsd.dashboard.plots import heatmap_cells

    first, second = _layers([100, 60], blocks=[0, 1]), _layers([100, 20], blocks=[0, 1])
    second.loc[0, "decided"] = False  # undecided in one run: that cell is the other run's value alone
    cells = heatmap_cells(pd.concat([first.assign(run_id="a"), second.assign(run_id="b")])).set_index("layer")
    assert cells.loc["b1.l1", "retained_pct"] == 40 and cells.loc["b1.l1", "retained_min"] == 20
    assert cells.loc["b1.l1", "retained_max"] == 60 and cells.loc["b1.l1", "runs"] == 2
    text = heatmap_cells_text(cells.reset_index())
    assert list(text["retained % std"]) == [EMPTY, "28.3"]  # one run: no spread
    assert not text.astype(str).isin(["None", "nan", "<NA>", ""]).any().any()


def test_a_stratified_stereoset_sample_covers_every_domain_where_the_first_rows_do_not():
    from collections import Counter

    from sfsd.dashboard.data import stratified_sample
    from sfsd.data import load_stereoset
    from sfsd.evaluate.stereoset import BIAS_TYPES, SENTENCE_TYPES

    rows = list(load_stereoset(split="all"))
    assert "religion" not in {r["bias_type"] for r in rows[:100]}  # what "the first N" gave
    sample = stratified_sample(rows, 30)
    cells = Counter((r["type"], r["bias_type"]) for r in sample)
    assert cells == {(t, b): 30 for t in SENTENCE_TYPES for b in BIAS_TYPES}
    assert sample == stratified_sample(rows, 30)  # seeded
    assert [r["id"] for r in sample] == [r["id"] for r in rows if r in sample]  # in file order
    small = Counter(r["bias_type"] for r in stratified_sample(rows, 10_000) if r["type"] == "intrasentence")
    assert small == Counter(r["bias_type"] for r in rows if r["type"] == "intrasentence")  # a small cell: all of it


def test_the_disagreement_and_bias_headlines_carry_intervals_and_n():
    from sfsd.dashboard.headlines import bias_headline, disagreement_headline
    from sfsd.evaluate.intervals import wilson_interval

    summary = pd.DataFrame({"task": ["piqa"], "n_shared": [40], "acc_a": [0.6], "acc_b": [0.55], "n_differ": [10]})
    low, high = wilson_interval(10, 40)
    assert disagreement_headline(summary, "base", "B") == (
        f"B changes 25.0% [{100 * low:.1f}, {100 * high:.1f}] of base's answers on piqa (n=40; accuracy 60.0% → "
        "55.0%).")
    part = pd.DataFrame({"model": ["A", "B"], "type": ["intrasentence"] * 2, "bias_type": ["overall"] * 2,
                         "n": [120, 0], "ICAT": [61.25, float("nan")], "ICAT_low": [55.0, float("nan")],
                         "ICAT_high": [66.5, float("nan")]})
    assert bias_headline(part, "intrasentence") == "intrasentence ICAT, all domains: A 61.2 [55.0, 66.5] (n=120) " \
                                                   "vs B — (n=0)."


def test_spectra_are_drawn_as_shares_of_their_energy_with_beta_labels_apart():
    """Eigenvalues of Cov(Wx) and squared singular values of W have different units: each is drawn as the % of
    its own sum. At a 1536-wide axis the beta ranks of a 576 x 1536 layer are 1.4% of the axis apart: labelled
    ones are kept 6% apart."""
    import numpy as np

    from sfsd.dashboard import plots

    spectra = pd.DataFrame({"layer": "l", "block": 0, "role": "up", "kind": ["feature"] * 3 + ["weight"] * 3,
                            "index": [0, 1, 2] * 2, "value": [6.0, 3.0, 1.0, 600.0, 300.0, 100.0]})
    figure = plots.spectrum_figure(spectra, 4, 4)
    left = [trace for trace in figure.data if trace.xaxis == "x"]
    assert [list(trace.y) for trace in left] == [[60.0, 30.0, 10.0]] * 2  # same shares, whatever the units
    assert "share of energy" in figure.layout.yaxis.title.text
    ranks = [rank for _, rank in plots.budget_ranks(576, 1536)]
    kept = sorted(plots.spaced_labels(ranks, 1536))
    assert kept[0] == ranks[0] and len(kept) < len(ranks) and np.all(np.diff(kept) >= 0.06 * 1536)
    assert plots.spaced_labels(ranks, 576) != set()


def test_a_spectrum_figures_lines_are_those_add_vline_draws_on_each_panel():
    """The beta and chosen-rank lines are added in one layout update (each `add_vline(row=, col=)` cost tenths
    of a second): the same shapes, in the same order, as the Plotly calls they replace."""
    from plotly.subplots import make_subplots

    from sfsd.dashboard import plots

    spectra = pd.DataFrame({"layer": "l", "block": 0, "role": "up", "kind": ["feature"] * 3 + ["weight"] * 3,
                            "index": [0, 1, 2] * 2, "value": [6.0, 3.0, 1.0, 600.0, 300.0, 100.0]})
    figure = plots.spectrum_figure(spectra, 576, 1536, chosen_rank=120, method="feature")
    reference = make_subplots(rows=1, cols=2)
    for col in (1, 2):
        reference.add_scatter(x=[1], y=[1], row=1, col=col)
    for _, rank in plots.budget_ranks(576, 1536):
        for col in (1, 2):
            reference.add_vline(x=rank, line=dict(color="#b0b0b0", width=1, dash="dot"), row=1, col=col)
    for col in (1, 2):
        reference.add_vline(x=120, line=dict(color=plots.method_color("feature"), width=2.5), row=1, col=col)
    assert [s.to_plotly_json() for s in figure.layout.shapes] == [s.to_plotly_json() for s in reference.layout.shapes]
    notes = [a.text for a in figure.layout.annotations]
    assert notes[-1] == "chosen r=120" and sum(n.startswith("β") for n in notes) % 2 == 0 and len(notes) > 3


def test_every_table_shows_an_empty_cell_as_a_dash_and_keeps_full_columns_typed():
    """The Runs page's layer table showed "None" for the rank and beta of a layer kept whole; a column of bools
    and texts (the evaluations' bos) was refused by Arrow."""
    from sfsd.dashboard.data import EMPTY, empty_cells_as_text

    layers = pd.DataFrame({"layer": ["a", "b"], "rank": pd.array([None, 167], dtype="Int64"),
                           "beta": [None, 0.4], "params_kept": [884736, 352704], "retained": [1.0, 0.39870000000001],
                           "bos": [True, "auto"]})
    shown = empty_cells_as_text(layers)
    assert list(shown["rank"]) == [EMPTY, "167"] and list(shown["beta"]) == [EMPTY, "0.4"]
    assert list(shown["bos"]) == ["True", "auto"]
    assert shown["params_kept"].dtype == "int64" and shown["retained"].dtype == "float64"  # full: untouched
    import pyarrow as pa

    pa.Table.from_pandas(shown)  # what st.dataframe does with it


def test_the_frontier_accuracy_base_line_reads_in_the_axis_unit():
    """The base model's accuracy line sat at 60 on a % axis labelled "0.600 [0.231, 0.882]"."""
    from sfsd.dashboard.frontier import accuracy_figure

    frame = pd.DataFrame({"strategy": ["base", "uniform"], "method": ["none", "feature"], "run_id": ["a", "b"],
                          "overall_budget": [1.0, 0.8], "target": [1.0, 0.8], "acc:piqa": [0.6, 0.55],
                          "n:piqa": [5, 20], "tolerance": [None, None], "macs": [1, 1]})
    fig = accuracy_figure(frame, "piqa")
    assert [a.text for a in fig.layout.annotations] == ["base model 60.0% [23.1, 88.2] (n=5)"]
    assert fig.layout.shapes[0].y0 == 60.0
