"""The Frontier page with Streamlit's AppTest, on a store that a real tiny frontier wrote."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # conftest's frontier_store: a real frontier and an evaluated search


def open_frontier(monkeypatch, root: str) -> AppTest:
    monkeypatch.setenv("SFSD_CACHE_DIR", root)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.switch_page("pages/9_Frontier.py")
    return at.run()


def test_frontier_page_plots_each_strategy_and_the_base_line(frontier_store, monkeypatch):
    at = open_frontier(monkeypatch, frontier_store["root"])
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert at.selectbox(key="frontier-model").value == frontier_store["model"]
    assert at.radio(key="frontier-ppl").options == ["ppl@32", "ppl@64"]
    import json

    figures = at.get("plotly_chart")
    assert len(figures) == 4  # the frontier, the accuracy chart and two budget heatmaps side by side
    figure = json.loads(figures[0].proto.spec)
    lines = {trace["name"]: trace for trace in figure["data"]}
    assert set(lines) == {"uniform (feature)", "spectrum (feature)", "Algorithm 1 (feature)", "SliceGPT (whole model)"}
    assert lines["Algorithm 1 (feature)"]["mode"] == "markers" and len(lines["Algorithm 1 (feature)"]["x"]) == 1
    assert all(len(lines[name]["x"]) == 2 for name in ("uniform (feature)", "spectrum (feature)",
                                                       "SliceGPT (whole model)"))
    # at its parameter-equivalent budgets: one residual width of this tiny model moves ~50k parameters (its
    # 49,152-token embedding) against ~90k in its blocks, so both targets land on nearby widths
    sliced = lines["SliceGPT (whole model)"]
    assert sliced["marker"]["color"] == "#bcbd22" and all(0 < x < 100 for x in sliced["x"])
    assert all(y > 0 for trace in lines.values() for y in trace["y"])
    assert figure["layout"]["yaxis"]["type"] == "log"
    base_labels = [a for a in figure["layout"].get("annotations", []) if "base model" in a.get("text", "")]
    # "base model value [low, high]": the base model's perplexity with its 95% interval over windows (the axis
    # title names the protocol)
    base_ppl, low, high = (float(x.replace(",", "")) for x in re.fullmatch(
        r"base model (\S+) \[(\S+), (\S+)\]", base_labels[0]["text"]).groups())
    assert low < base_ppl < high
    # On the log axis the label sits at log10(ppl) (Plotly's own hline label went to 10^ppl and the axis with it).
    assert len(base_labels) == 1 and abs(base_labels[0]["y"] - math.log10(base_ppl)) < 1e-3
    assert len({trace["marker"]["color"] for trace in lines.values()}) == 4  # one colour per strategy
    accuracy = json.loads(figures[1].proto.spec)
    assert "piqa" in accuracy["layout"]["yaxis"]["title"]["text"]
    for trace in accuracy["data"]:  # every point with its 95% interval, which contains it
        assert len(trace["error_y"]["array"]) == len(trace["y"]) and all(e > 0 for e in trace["error_y"]["array"])
    for trace in lines.values():  # every point with its 95% bootstrap interval over windows
        assert len(trace["error_y"]["array"]) == len(trace["y"]) and all(e > 0 for e in trace["error_y"]["array"])
    table = at.dataframe[0].value
    ppl = "ppl @32 tokens [95% CI] n=64 windows"  # 2,048 tokens in windows of 32
    assert all(re.fullmatch(r"\S+ \[\S+, \S+\]", cell) for cell in table[ppl])
    assert len(table) == 8 and set(table["strategy"]) == {"base", "uniform", "spectrum", "Algorithm 1", "slicegpt"}
    assert all("(n=12)" in cell for cell in table["acc piqa [95% CI] (n)"])
    heatmaps = [json.loads(f.proto.spec) for f in figures[2:]]
    assert [h["layout"]["title"]["text"] for h in heatmaps] == ["SliceGPT (whole model) at 0.8",
                                                                "spectrum (feature) at 0.8"]
    assert all(h["data"] for h in heatmaps)
    at.radio(key="frontier-ppl").set_value("ppl@64").run()
    at.selectbox(key="frontier-target").select(0.6).run()
    assert not at.exception and "at 0.6" in json.loads(at.get("plotly_chart")[2].proto.spec)["layout"]["title"]["text"]
    at.radio(key="frontier-x").set_value("MACs").run()
    by_macs = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "MACs" in by_macs["layout"]["xaxis"]["title"]["text"]
    budgets = {t["name"]: t["x"] for t in figure["data"]}
    for trace in by_macs["data"]:  # fewer parameters kept, fewer MACs: the same order along both axes
        order = sorted(range(len(trace["x"])), key=trace["x"].__getitem__)
        assert order == sorted(range(len(budgets[trace["name"]])), key=budgets[trace["name"]].__getitem__)
    assert at.get("download_button")


def test_frontier_page_opens_on_a_headline_read_from_its_points(frontier_store, monkeypatch):
    """The sentence at the top compares the lines at the target budget most strategies reached, each as a multiple
    of the base model's perplexity, recomputed here from the store's points."""
    from sfsd.runs.frontier import frontier_frame

    at = open_frontier(monkeypatch, frontier_store["root"])
    headline = next(m.value for m in at.markdown if "as a multiple of the base model's" in m.value)
    points = frontier_frame(Path(frontier_store["root"]) / "runs", frontier_store["model"])
    base = points.loc[points["strategy"] == "base", "ppl@32"].iloc[0]
    at_target = points[(points["strategy"] != "base") & (points["target"] == 0.8)].sort_values("ppl@32")
    assert headline.startswith("**At the 80% target budget, perplexity (32-token windows on 2,048 eval-split tokens)")
    shown = [float(x.replace(",", "")) for x in re.findall(r" ([\d,.]+)x", headline)]
    assert shown == pytest.approx([v / base for v in at_target["ppl@32"]], rel=0.01, abs=0.051)


def test_a_clicked_frontier_point_names_its_run():
    from sfsd.dashboard.frontier import clicked_run

    event = {"selection": {"points": [{"x": 80.0, "y": 40.0, "customdata": ["search-m-feature-ppl-0a1b", 0.8, "—"]}]}}
    assert clicked_run(event) == "search-m-feature-ppl-0a1b"
    assert clicked_run({"selection": {"points": []}}) is None and clicked_run(None) is None


def test_frontier_page_without_points_says_how_to_make_them(tmp_path, monkeypatch):
    at = open_frontier(monkeypatch, str(tmp_path))
    assert not at.exception
    assert any("sfsd frontier" in info.value for info in at.info)


def test_the_report_of_a_frontier_point_includes_the_frontier(frontier_store, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", frontier_store["root"])
    from sfsd.dashboard import data, frontier, report

    run_id = frontier.points().query("strategy == 'spectrum'")["run_id"].iloc[0]
    document = report.build_report(data.load_run(run_id), data.spectra(run_id))
    assert "Budget-quality frontier" in document and "piqa accuracy" in document
