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
    assert list(runs_text(runs)["target"]) == ["ppl ±0.05", "alg1 @0.8", EMPTY]
