"""The Frontier page with Streamlit's AppTest, on a store that a real tiny frontier wrote."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import save_tiny_llama
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frontier_store(tmp_path_factory, default_model_dir):
    from sfsd.paths import data_dir

    root = tmp_path_factory.mktemp("frontier-app") / "cache"
    root.mkdir()
    (root / "data").symlink_to(data_dir())
    model = save_tiny_llama(root.parent / "tiny-llama", default_model_dir, 3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFSD_CACHE_DIR", str(root))
        from sfsd.compress import CalibrationSpec
        from sfsd.search import MetricSpec, SearchConfig
        from sfsd.search.frontier import run_frontier

        base = SearchConfig(model=str(model), metric=MetricSpec("ppl", 0.05, samples=4, seq_len=32),
                            calibration=CalibrationSpec("wiki", 16, 32), strategy="spectrum", target_budget=0.8)
        run_frontier(base, ["uniform", "spectrum"], [0.8, 0.6], seq_lens=(32, 64), ppl_tokens=2048, progress=False,
                     say=lambda _: None)
    return {"root": str(root), "model": str(model)}


def open_frontier(monkeypatch, root: str) -> AppTest:
    monkeypatch.setenv("SFSD_CACHE_DIR", root)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.switch_page("views/9_Frontier.py")
    return at.run()


def test_frontier_page_plots_each_strategy_and_the_base_line(frontier_store, monkeypatch):
    at = open_frontier(monkeypatch, frontier_store["root"])
    assert not at.exception and not at.error, [e.value for e in [*at.exception, *at.error]]
    assert at.selectbox(key="frontier-model").value == frontier_store["model"]
    assert at.radio(key="frontier-ppl").options == ["ppl@32", "ppl@64"]
    import json

    figures = at.get("plotly_chart")
    assert len(figures) == 3  # the frontier and two budget heatmaps side by side
    figure = json.loads(figures[0].proto.spec)
    lines = {trace["name"]: trace for trace in figure["data"]}
    assert set(lines) == {"uniform (feature)", "spectrum (feature)"}
    assert all(len(trace["x"]) == 2 and all(y > 0 for y in trace["y"]) for trace in lines.values())
    assert figure["layout"]["yaxis"]["type"] == "log"
    assert any("base model" in shape.get("text", "") for shape in figure["layout"].get("annotations", []))
    table = at.dataframe[0].value
    assert len(table) == 5 and set(table["strategy"]) == {"base", "uniform", "spectrum"}
    heatmaps = [json.loads(f.proto.spec) for f in figures[1:]]
    assert [h["layout"]["title"]["text"] for h in heatmaps] == ["spectrum (feature) at 0.8", "uniform (feature) at 0.8"]
    assert all(h["data"] for h in heatmaps)
    at.radio(key="frontier-ppl").set_value("ppl@64").run()
    at.selectbox(key="frontier-target").select(0.6).run()
    assert not at.exception and "at 0.6" in json.loads(at.get("plotly_chart")[1].proto.spec)["layout"]["title"]["text"]
    assert at.get("download_button")


def test_frontier_page_without_points_says_how_to_make_them(tmp_path, monkeypatch):
    at = open_frontier(monkeypatch, str(tmp_path))
    assert not at.exception
    assert any("sfsd frontier" in info.value for info in at.info)
