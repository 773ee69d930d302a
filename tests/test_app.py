"""The dashboard, page by page, with Streamlit's AppTest against a run store the real search wrote.

The store (conftest's `dashboard_store`) holds two searches on a tiny random LLaMA (feature with task snapshots,
weight), three uniform runs (base, weight, feature) and the feature search's saved model; it is built once per
session and shared with tests/test_browser.py and tests/test_transfer.py.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest
from conftest import PAGES, SMALL_HELDOUT, UNIFORM, no_exception, open_page
from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(dashboard_store):
    return dashboard_store


@pytest.fixture
def env(store, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", store["root"])
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    return store


def charts(at: AppTest) -> list:
    return at.get("plotly_chart")


def texts(at: AppTest) -> str:
    parts = [e.value for kind in ("markdown", "caption", "info", "warning", "success", "code", "title", "subheader")
             for e in getattr(at, kind)]
    return "\n".join(str(p) for p in parts)


def headline(at: AppTest) -> str:
    """The page's headline: the bold sentence `widgets.headline` writes under the title."""
    lines = [str(m.value) for m in at.markdown if str(m.value).startswith("**") and str(m.value).endswith("**")]
    assert lines, texts(at)
    return lines[0].strip("*")


def no_empty_cells(at: AppTest) -> None:
    """No table of the page shows a raw None, NaN or <NA>: empty cells read "—"."""
    for frame in at.dataframe:
        cells = frame.value.astype(str)
        assert not cells.isin(["None", "nan", "NaN", "<NA>", ""]).any().any(), frame.value


# ---- every page with data ------------------------------------------------------------------------------


def test_start_page_shows_the_model_the_runs_and_the_demo(env):
    at = open_page()
    no_exception(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Blocks"] == "3" and metrics["Parameters"].endswith("M")
    assert metrics["Family"] == "llama"
    assert len(at.dataframe) >= 2  # roles, runs
    runs = at.dataframe[1].value
    assert {env["feature"], env["weight"], *env["uniform"].values()} <= set(runs["run_id"])
    cells = runs.drop(columns="progress").astype(str)
    assert not cells.isin(["None", "<NA>", "nan", ""]).any().any()  # empty cells read "—"
    assert (runs.loc[runs["run_id"].str.startswith("uniform-"), "metric"] == "—").all()  # no search target
    demo = at.button(key="start-demo")
    # options at their defaults are left out of a shown command: the last 4 blocks of 3 are all (--first-block 0),
    # the first search is feature space (--method feature)
    assert "--first-block" not in demo.help and env["model"] in demo.help
    assert demo.help.count("sfsd search") == 2 and "--method weight" in demo.help
    assert "--snapshot-tasks piqa" in demo.help
    assert "sfsd uniform" in demo.help and "--method none" in demo.help  # Table 1's trio at one budget
    from sfsd.dashboard import data, widgets

    summary = widgets.demo_summary([data.load_run(env["feature"]), data.load_run(env["weight"])])
    change = r"perplexity search split [-+]\d+\.\d%, eval split [-+]\d+\.\d% \([\d,]+ tokens\)"
    assert re.fullmatch(rf"The quick demo ran a feature-space search \(overall budget \d+\.\d%; {change}\); a "
                        rf"weight-space search \(overall budget \d+\.\d%; {change}\)\.( On held-out text .*)? It "
                        r"took \d+m\d\ds\.", summary), summary
    assert widgets.demo_summary([data.load_run(env["feature"]), None]) is None  # not all done: nothing said
    assert "No run in progress" in texts(at)


def test_runs_page_lists_runs_and_builds_the_search_command(env):
    at = open_page("runs")
    no_exception(at)
    assert at.dataframe[0].value.shape[0] == 7  # two searches, five uniform runs
    at.selectbox(key="new-metric").select("task").run()
    at.selectbox(key="new-task").select("piqa").run()
    command = [c.value for c in at.code if c.value.startswith("sfsd search")][0]
    assert "--metric task --task piqa --search-limit 100" in command  # options at their defaults are left out
    at.selectbox(key="runs-detail").select(env["feature"]).run()
    no_exception(at)
    assert len(charts(at)) == 1  # the search trace
    assert {m.label for m in at.metric} >= {"State", "Layers decided", "Overall budget", "Final metric"}
    # The held-out check: the searched metric's change on the search split next to the eval split's, and the
    # eval-split perplexities with their 95% intervals (on conftest's SMALL_HELDOUT tokens in windows of the
    # metric's 32; the demo's runs, in their own process, show the default 16,384).
    tokens = f"{SMALL_HELDOUT['HELDOUT_TOKENS']:,}"
    assert re.search(r"Held-out check \(perplexity\): search split [+-]\d+\.\d%, eval split [+-]\d+\.\d%: "
                     r"ppl \S+ \[\S+, \S+\] vs base \S+ \[\S+, \S+\] "
                     rf"\({tokens} tokens, 32-token windows, 95% bootstrap over windows\)", texts(at))
    no_empty_cells(at)
    at.selectbox(key="runs-detail").select(env["uniform"]["slicegpt"]).run()  # its evaluations: no raw empties
    no_exception(at)
    no_empty_cells(at)


def test_runs_form_starts_a_target_budget_search_in_either_factor_format(env):
    """The form offers what `sfsd search` does: a target budget with an allocation strategy (refined included),
    the compact format and the final model's calibration stream; the command shown is the one the run is, and
    Algorithm 1 stays in two factors, open loop."""
    at = open_page("runs")
    assert not at.selectbox(key="new-strategy").value == "refined"
    assert [s.key for s in at.selectbox if s.key in ("new-factors", "new-stream")] == []  # Algorithm 1: neither
    at.checkbox(key="new-targeted").check().run()
    at.number_input(key="new-target").set_value(0.8)
    at.selectbox(key="new-factors").select("compact")
    at.selectbox(key="new-allocation").select("refined").run()
    at.selectbox(key="new-stream").select("anchored").run()
    no_exception(at)
    command = [c.value for c in at.code if c.value.startswith("sfsd search")][0]
    for flag in ("--target-budget 0.8", "--strategy refined", "--factors compact", "--calibration-stream anchored"):
        assert flag in command, command
    from sfsd.search.allocation import ALLOCATIONS

    assert at.selectbox(key="new-allocation").options == list(ALLOCATIONS)


def test_heatmap_page_shows_budgets_and_the_picked_layer_spectrum(env):
    at = open_page("heatmap")
    no_exception(at)
    assert at.selectbox(key="heatmap-run").value == env["feature"]  # the feature-space search by default
    at.selectbox(key="heatmap-run").select(env["feature"]).run()
    layer = "model.layers.1.self_attn.o_proj"
    at.selectbox(key="heatmap-layer").select(layer).run()
    no_exception(at)
    figures = charts(at)
    assert len(figures) == 2  # heatmap + spectrum
    spec = json.loads(figures[0].proto.spec)
    heat = spec["data"][0]
    assert heat["type"] == "heatmap" and len(heat["z"]) == 3 and len(heat["x"]) == 7
    assert all(text.endswith("%") for row in heat["text"] for text in row)
    assert layer in json.loads(figures[1].proto.spec)["layout"]["title"]["text"]
    assert "eval split" in spec["layout"]["title"]["text"]  # the held-out check in the title
    at.radio(key="heatmap-mode").set_value("average over runs of one method").run()
    no_exception(at)
    # only runs of one method on one model are offered for an average: the feature search alone here
    groups = at.selectbox(key="heatmap-group").options
    assert groups[0] == "feature · tiny-llama (1 run)" and len(groups) == 4, groups  # feature, weight,
    assert all(g.endswith("(1 run)") for g in groups)  # llm-pruner, slicegpt: one run each
    assert at.get("multiselect")[0].value == [env["feature"]]
    no_empty_cells(at)


def test_heatmap_headline_says_what_the_store_holds(env):
    """The sentence over the heatmap against the feature search's layers and result, recomputed from the run."""
    from sfsd.runs import Run, layers_frame

    at = open_page("heatmap")
    no_exception(at)
    run = Run.open(env["feature"])
    layers = layers_frame(run)
    decided = layers[layers["decided"]]
    kept = decided.groupby("block")[["params_kept", "params_full"]].sum()
    share = (kept["params_kept"] / kept["params_full"]).astype(float)
    text = headline(at)
    match = re.fullmatch(r"feature search on tiny-llama: (\d+) of (\d+) layers kept at full rank, (.*), overall "
                         r"budget (\d+\.\d)%\.", text)
    assert match, text
    assert int(match[1]) == int(decided["intact"].sum()) and int(match[2]) == len(layers)
    if share.min() < 1:
        blocks = [int(b) for b in share.index[share <= share.min() + 1e-12]]
        named = f"block {blocks[0]} cut most ({100 * share.min():.0f}% of its" if len(blocks) == 1 else \
            f"blocks {', '.join(map(str, blocks))} cut most ({100 * share.min():.0f}% of their"
        assert match[3] == f"{named} parameters kept)"
    else:
        assert match[3] == "no layer cut"
    assert float(match[4]) == pytest.approx(100 * run.result()["overall_budget"], abs=0.05)
    no_empty_cells(at)


def test_spectra_page_shows_feature_and_weight_spectra_with_budget_marks(env):
    at = open_page("spectra")
    at.selectbox(key="spectra-run").select(env["feature"]).run()
    no_exception(at)
    figures = charts(at)
    assert len(figures) == 2
    single = json.loads(figures[0].proto.spec)
    names = {trace["name"] for trace in single["data"]}
    assert any(n.startswith("feature") for n in names) and any(n.startswith("weight") for n in names)
    assert single["layout"]["yaxis"]["type"] == "log"
    assert len(single["layout"]["shapes"]) == 2 * 9 + 2  # beta marks in both panels + the chosen rank
    energy = at.dataframe[0].value
    assert list(energy["beta"]) == pytest.approx([0.1 * i for i in range(1, 10)])
    at.selectbox(key="spectra-role").select("down").run()
    at.radio(key="spectra-grid-mode").set_value("cumulative energy (%)").run()
    no_exception(at)
    grid = json.loads(charts(at)[1].proto.spec)
    assert {a["text"] for a in grid["layout"]["annotations"]} >= {"block 0", "block 1", "block 2"}
    yaxes = [axis for name, axis in grid["layout"].items() if name.startswith("yaxis")]
    assert yaxes and all(axis["dtick"] == 25 for axis in yaxes)  # round ticks: 0, 25, ..., 100


def test_spectra_page_opens_on_both_spectra_in_shares_of_their_energy(env):
    """The default run has both spectra (the weight search, newer, has only its own); each spectrum is drawn as
    the share of its own total energy; the headline's shares are those of the stored spectra at the chosen rank."""
    import numpy as np

    from sfsd.runs import Run, layers_frame

    at = open_page("spectra")
    no_exception(at)
    assert at.selectbox(key="spectra-run").value == env["feature"]
    layer = at.selectbox(key="spectra-layer").value
    single = json.loads(charts(at)[0].proto.spec)
    assert "share of energy" in single["layout"]["yaxis"]["title"]["text"]
    def array(values) -> np.ndarray:  # Plotly writes numpy arrays as {"dtype", "bdata": base64}
        if isinstance(values, dict):
            import base64

            return np.frombuffer(base64.b64decode(values["bdata"]), dtype=values["dtype"]).astype(float)
        return np.array(values, dtype=float)

    for trace in (t for t in single["data"] if t.get("xaxis", "x") == "x"):
        assert np.nansum(array(trace["y"])) == pytest.approx(100)  # shares of one whole
    betas = [a for a in single["layout"]["annotations"] if a["text"].startswith("β")]
    width = max(array(t["x"]).max() for t in single["data"])
    for axis in ("x", "x2"):  # labelled beta ranks apart from each other on each panel
        ranks = sorted(a["x"] for a in betas if a["xref"] == axis)
        assert ranks and all(b - a >= 0.06 * width - 1e-9 for a, b in zip(ranks, ranks[1:], strict=False))
    run = Run.open(env["feature"])
    row = layers_frame(run).set_index("layer").loc[layer]
    spectra = run.read_spectra(layer)
    from sfsd.decompose import rank_for_budget

    chosen = not pd.isna(row["rank"])
    rank = int(row["rank"]) if chosen else rank_for_budget(0.5, int(row["d_in"]), int(row["d_out"]))
    shares = {}
    for kind, part in spectra.groupby("kind"):
        values = part.sort_values("index")["value"].clip(lower=0)
        shares[kind] = 100 * values.iloc[:rank].sum() / values.sum()
    where = f"the chosen rank r={rank}" if chosen else f"r={rank} (beta 0.5; the search kept this layer intact)"
    assert headline(at) == (f"{layer}: at {where}, the top components hold {shares['feature']:.1f}% of the feature "
                            f"spectrum's energy and {shares['weight']:.1f}% of the weight spectrum's energy.")
    no_empty_cells(at)


def test_accuracy_page_overlays_runs_with_the_base_line(env):
    at = open_page("accuracy")
    no_exception(at)
    # by default: the feature search against the weight search, on accuracy (the feature search scored piqa)
    assert set(at.multiselect(key="acc-runs").value) == {env["feature"], env["weight"]}
    assert at.selectbox(key="acc-y").value == "acc piqa (eval split, %)"
    at.multiselect(key="acc-runs").set_value([env["feature"], env["weight"]]).run()
    at.selectbox(key="acc-y").select([o for o in at.selectbox(key="acc-y").options if o.startswith("search")][0])
    figure = json.loads(at.run().get("plotly_chart")[0].proto.spec)
    assert len([t for t in figure["data"] if t.get("mode") == "lines+markers"]) == 2
    assert any(shape.get("type") == "line" for shape in figure["layout"]["shapes"])  # base model
    at.selectbox(key="acc-y").select("acc piqa (eval split, %)").run()
    no_exception(at)
    figure = json.loads(charts(at)[0].proto.spec)
    modes = [trace["mode"] for trace in figure["data"]]
    # base model, the feature search, the uniform runs of weight and feature space, LLM-Pruner and SliceGPT
    assert modes == ["markers", "lines+markers", "markers", "markers", "markers", "markers"]
    base, search, *uniforms = figure["data"]
    # the curve starts at the base model: the search's step-0 snapshot, on the same 4 documents as its other points
    assert (search["x"][0], search["y"][0]) == (base["x"][0], base["y"][0]) and base["x"][0] == max(search["x"])
    assert f"{env['feature']}<br>step 0" in base["text"][0]
    uniform = next(t for t in uniforms if env["uniform"]["feature"] in t["text"][0])
    pruned = next(t for t in uniforms if env["uniform"]["llm-pruner"] in t["text"][0])
    assert pruned["marker"]["color"] == "#e377c2" and pruned["x"][0] == pytest.approx(uniform["x"][0], rel=0.01)
    sliced = next(t for t in uniforms if env["uniform"]["slicegpt"] in t["text"][0])
    assert sliced["marker"]["color"] == "#bcbd22" and sliced["x"][0] == pytest.approx(uniform["x"][0], rel=0.01)
    assert base["marker"]["symbol"] == "star" and base["error_y"]["array"]
    assert uniform["marker"]["symbol"] == "diamond" and env["uniform"]["feature"] in uniform["text"][0]
    assert env["feature"] in search["text"][0] and re.search(r"step \d+", search["text"][0])  # hover: run, step
    assert figure["layout"]["xaxis"].get("range") is None  # everything fits
    at.toggle(key="acc-zoom").set_value(True).run()
    zoomed = json.loads(charts(at)[0].proto.spec)["layout"]["xaxis"]["range"]
    assert zoomed[0] < min(search["x"]) <= max(search["x"]) < zoomed[1] < max(search["x"]) + 1
    assert all(trace["error_y"]["array"] for trace in figure["data"])  # 95% intervals on every point
    notes = [a["text"] for a in figure["layout"]["annotations"]]  # labels of the horizontal reference lines
    assert any(n.startswith("majority class") for n in notes) and "chance" in notes, notes
    assert "acc piqa" in figure["layout"]["yaxis"]["title"]["text"]
    table = at.dataframe[0].value
    assert re.fullmatch(r"\S+ \[\S+, \S+\]", table["acc:piqa % [95% CI]"].iloc[-1]) and "n:piqa" in table
    assert "Not shown" in texts(at)  # the weight search has no task snapshots
    no_empty_cells(at)


def test_a_search_scores_its_snapshot_tasks_on_the_base_model_and_the_headline_reads_the_curve(env):
    """Step 0 of a search with --snapshot-tasks carries the base model's accuracy on the snapshots' documents
    (what an independent evaluation of the base model gives), and the Accuracy page's sentence reads its curve."""
    from sfsd.evaluate import evaluate_tasks
    from sfsd.evaluate.intervals import wilson_interval
    from sfsd.models import load_model
    from sfsd.runs import Run

    snapshots = Run.open(env["feature"]).read_snapshots()
    zero, last = snapshots[0], snapshots[-1]
    model, tokenizer = load_model(env["model"], "cpu")
    base = evaluate_tasks(model, tokenizer, ["piqa"], split="eval", limit=4, use_cache=False).summary.iloc[0]
    assert zero["step"] == 0 and zero["evals"]["piqa"]["acc"] == pytest.approx(float(base["acc"]))
    assert zero["evals"]["piqa"]["n"] == last["evals"]["piqa"]["n"] == 4

    def proportion(p: float, n: int) -> str:
        low, high = wilson_interval(p * n, n)
        return f"{100 * p:.1f}% [{100 * low:.1f}, {100 * high:.1f}] (n={n})"

    at = open_page("accuracy")
    at.multiselect(key="acc-runs").set_value([env["feature"]]).run()
    no_exception(at)
    from sfsd.dashboard import data

    label = data.load_run(env["feature"]).label
    share = 100 * last["params"] / zero["params"]
    assert headline(at) == (f"At {share:.0f}% of the parameters, {label} keeps piqa acc at "
                            f"{proportion(last['evals']['piqa']['acc'], 4)} (base model "
                            f"{proportion(zero['evals']['piqa']['acc'], 4)}).")


def test_a_curve_without_a_base_snapshot_borrows_the_base_run_on_the_same_documents_and_says_so(env):
    """A search stored before step 0 carried accuracies: the page takes the base model's point from a uniform run
    of the base model on the same task and number of documents, and says which; none on other documents."""
    import pandas as pd

    from sfsd.dashboard import data
    from sfsd.runs import Run

    snapshots = pd.DataFrame({"step": [0, 11], "params": [100, 80], "budget": [1.0, 0.8],
                              "acc:piqa": [float("nan"), 0.5], "n:piqa": [float("nan"), 5.0]})
    frame = snapshots.dropna(subset=["acc:piqa"])
    out, source = data.with_base_accuracy(frame, snapshots, env["model"], "acc:piqa")
    stored = next(e for e in Run.open(env["uniform"]["none"]).read_evaluations() if e["kind"] == "task")["metrics"]
    assert list(out["step"]) == [0, 11] and out["acc:piqa"].iloc[0] == pytest.approx(stored["acc"])
    assert out["params"].iloc[0] == 100 and source == f"base run {env['uniform']['none']} (n=5)"
    other = frame.assign(**{"n:piqa": 4.0})  # 4 documents: the base run scored 5, not the same ones
    unchanged, source = data.with_base_accuracy(other, snapshots, env["model"], "acc:piqa")
    assert unchanged is other and source == ""


@pytest.mark.slow  # a background `sfsd snapshot-eval` over every snapshot
def test_accuracy_is_computed_for_a_finished_search_from_its_empty_state(store, tmp_path, monkeypatch):
    import shutil
    import time

    from sfsd.runs import Run

    root = tmp_path / "cache"  # a store with only the weight search: snapshots without any task accuracy
    shutil.copytree(Path(store["root"]) / "runs" / store["weight"], root / "runs" / store["weight"])
    (root / "data").symlink_to(Path(store["root"]) / "data")
    monkeypatch.setenv("SFSD_CACHE_DIR", str(root))
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    at = open_page("accuracy")
    no_exception(at)
    assert "No accuracy yet" in texts(at) and "--snapshot-tasks piqa" in texts(at)
    assert at.selectbox(key="acc-compute-run").value == store["weight"]
    at.number_input(key="acc-compute-limit").set_value(10).run()
    assert f"sfsd snapshot-eval {store['weight']} --tasks piqa --limit 10" in [c.value for c in at.code]
    at.button(key="acc-compute-start").click().run()
    no_exception(at)
    assert "started `sfsd snapshot-eval" in "\n".join(s.value for s in at.success)
    run = Run.open(store["weight"], root / "runs")
    steps = len({s["step"] for s in run.read_snapshots()})
    deadline = time.monotonic() + 240
    while len(run.read_evaluations()) < steps and time.monotonic() < deadline:  # the background process
        time.sleep(1)
    assert len(run.read_evaluations()) == steps, (root / "logs" / "dashboard.log").read_text()[-2000:]
    time.sleep(2.5)  # the store reads are cached for 2 s
    at = open_page("accuracy")
    at.selectbox(key="acc-y").select("acc piqa (eval split, %)").run()
    no_exception(at)
    curve = [t for t in json.loads(charts(at)[0].proto.spec)["data"] if t["mode"] == "lines+markers"][0]
    assert len(curve["x"]) == steps and all(curve["error_y"]["array"])
    assert "No accuracy yet" not in texts(at)
    with monkeypatch.context() as readonly_env:  # read-only: the way to get accuracy is said, no button
        readonly_env.setenv("SFSD_READONLY", "1")
        at = open_page("accuracy")
        assert not [b for b in at.button if b.key == "acc-compute-start"]


def test_table1_page_lists_methods_and_offers_the_missing_ones(env):
    at = open_page("table1")
    no_exception(at)
    table = at.dataframe[0].value
    # the paper's three rows at one budget (weight, feature, structured pruning) under the base model, then
    # SliceGPT on the whole model at the same parameters
    assert list(table["method"]) == ["base", "weight", "feature", "llm-pruner", "slicegpt"]
    params = dict(zip(table["method"], table["params (M)"], strict=True))
    assert params["llm-pruner"] == params["feature"] != params["base"]  # the same parameters (within 0.5%)
    # SliceGPT at the weight row's parameters, within one width step (a column of the 49,152-token embedding)
    assert abs(float(params["slicegpt"]) - float(params["weight"])) <= 0.06
    where = dict(zip(table["method"], table["compressed"], strict=True))  # the table says what each row changed
    assert where["feature"] == "last 2 blocks" and where["slicegpt"] == "whole model (same params as weight)"
    ppl_header = "ppl @32 tokens [95% CI] n=32 windows"  # UNIFORM: 1,024 tokens in windows of 32
    assert list(table.columns[:5]) == ["method", "state", ppl_header, "params (M)", "MACs @128 tokens (G)"]
    for cell in table[ppl_header]:  # "value [low, high]": the 95% bootstrap interval over the windows
        value, low, high = (float(x.replace(",", "")) for x in re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
        assert low < value < high
    accuracy = "piqa acc % [95% CI] n=5"
    assert accuracy in table.columns and "average acc % [95% CI]" not in table.columns  # one task: no average
    for cell in table[accuracy]:  # "value [low, high]", the value inside its interval
        value, low, high = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]", cell).groups())
        assert low <= value <= high and high - low > 30  # 5 documents: a wide interval
    assert [w.value for w in at.warning] and "piqa: only 5 documents" in at.warning[0].value
    ppl, bars = (json.loads(figure.proto.spec) for figure in charts(at))
    assert ppl["layout"]["yaxis"]["type"] == "log" and len(ppl["data"]) == 5
    ticks = ppl["layout"]["yaxis"]["ticktext"]  # close perplexities: round 1-2-5 labels, written out
    assert ticks and all(re.fullmatch(r"[125]0*(k|M)?", t) for t in ticks), ticks
    assert [trace["y"][0] for trace in ppl["data"]] == pytest.approx(
        [float(v.split(" ")[0].replace(",", "")) for v in table[ppl_header]], rel=1e-2)
    assert all(trace["error_y"]["array"][0] > 0 for trace in ppl["data"])  # each bar with its interval
    accuracy_bars = [trace for trace in bars["data"] if trace["type"] == "bar"]
    assert all(trace["error_y"]["array"][0] > 0 for trace in accuracy_bars)
    references = {trace["name"].split(" ")[0]: trace["y"][0] for trace in bars["data"] if trace["type"] == "scatter"}
    from sfsd.data import load_task

    golds = [row["label"] for row in load_task("piqa", "eval")[:5]]  # the 5 documents the runs scored
    assert references["majority"] == pytest.approx(100 * max(golds.count(0), golds.count(1)) / 5)
    assert references["chance"] == pytest.approx(50.0)
    assert "identical outputs" in texts(at)
    # the headline: each method's perplexity as a multiple of the base's, recomputed here from the table shown
    from sfsd.dashboard import plots

    ppl_column = next(c for c in table.columns if c.startswith("ppl @32 tokens"))  # "57.93 [55.12, 61.04]"
    ppls = [float(cell.split(" ")[0].replace(",", "")) for cell in table[ppl_column]]
    ratios = {m: v / ppls[0] for m, v in zip(table["method"][1:], ppls[1:], strict=True)}
    headline = next(m.value for m in at.markdown if "as a multiple of the base model's" in m.value)
    for method, ratio in ratios.items():
        shown = float(re.search(re.escape(plots.method_label(method)) + r" ([\d,.]+)x", headline).group(1)
                      .replace(",", ""))
        assert shown == pytest.approx(ratio, rel=0.02, abs=0.06), (method, headline)
    assert ("(broken)" in headline) == any(r > 10 for r in ratios.values())
    commands = "\n".join(c.value for c in at.code)
    for method in ("feature-paper", "feature-uncentred", "asvd", "svdllm"):  # the missing rows
        assert f"--method {method} " in commands
    assert "--method weight " not in commands
    assert at.button(key="uni-fill-launch-asvd")


def test_uniform_commands_name_the_runs_the_cli_creates(env):
    """The run the dashboard creates from a config is the run its shown command line creates in a terminal."""
    import shlex

    from sfsd.cli import build_parser
    from sfsd.cli.search import config_from_args, uniform_config_from_args
    from sfsd.compress import CalibrationSpec
    from sfsd.dashboard import jobs
    from sfsd.search import MetricSpec, SearchConfig
    from sfsd.search.uniform import UniformConfig

    def cli_config(config):
        args = build_parser().parse_args(shlex.split(jobs.command_line(config))[1:])
        return (uniform_config_from_args if args.command == "uniform" else config_from_args)(args)

    calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
    uniform = UniformConfig(model=env["model"], method="feature", calibration=calibration, **UNIFORM)
    assert jobs.run_id_of(uniform) == jobs.run_id_of(cli_config(uniform)) == env["uniform"]["feature"]
    search = SearchConfig(model=env["model"], method="weight", first_block=1, calibration=calibration,
                          metric=MetricSpec(name="ppl", tolerance=0.0, samples=4, seq_len=32, batch_size=2),
                          snapshot_every=4)
    assert jobs.run_id_of(search) == jobs.run_id_of(cli_config(search)) == env["weight"]
    started = jobs.start(search)  # finished: not launched again
    assert not started.launched and "already done" in started.message


def compare_on_disagreement(at: AppTest, model_a: str, model_b: str, limit: int) -> None:
    """Press Compare on the Disagreement page (open in `at`) for two models on piqa's first `limit` documents."""
    at.selectbox(key="dis-a").select(model_a)
    at.selectbox(key="dis-b").select(model_b)
    at.multiselect(key="dis-tasks").set_value(["piqa"])
    at.number_input(key="dis-limit").set_value(limit)
    at.run()
    at.button(key="dis-run").click().run(timeout=180)


def score_on_bias(at: AppTest, models: list[str], per_cell: int) -> None:
    """Press Score on the Bias page (open in `at`) for `models`, `per_cell` examples per domain and type."""
    at.multiselect(key="bias-models").set_value(models)
    at.number_input(key="bias-per-cell").set_value(per_cell)
    at.run()
    at.button(key="bias-run").click().run(timeout=180)


def test_disagreement_page_compares_two_models_and_lists_flips(env):
    at = open_page("disagreement")
    no_exception(at)
    compare_on_disagreement(at, env["model"], env["saved"], 6)
    no_exception(at)
    summary = at.dataframe[0].value.iloc[0]
    assert summary["task"] == "piqa" and int(summary["n (documents)"]) == 6
    # the shown numbers against an independent count over the same documents' records
    from sfsd.evaluate import evaluate_tasks
    from sfsd.evaluate.intervals import wilson_interval
    from sfsd.models import load_model

    preds = {}
    for name in (env["model"], env["saved"]):
        model, tokenizer = load_model(name, "cpu")
        preds[name] = evaluate_tasks(model, tokenizer, ["piqa"], split="eval", limit=6).records.set_index("doc_id")
    a, b = preds[env["model"]], preds[env["saved"]].loc[preds[env["model"]].index]
    differ = int((a["pred"] != b["pred"]).sum())
    value, low, high = map(float, re.fullmatch(r"(\S+) \[(\S+), (\S+)\]",
                                               summary["disagreement, % of n [95% CI]"]).groups())
    assert value == pytest.approx(100 * differ / 6, abs=0.05)
    assert (low, high) == pytest.approx([100 * x for x in wilson_interval(differ, 6)], abs=0.05)
    delta = 100 * (int((b["pred"] == b["gold"]).sum()) - int((a["pred"] == a["gold"]).sum())) / 6
    assert float(summary["delta B - A, points [95% CI]"].split(" ")[0]) == pytest.approx(delta, abs=0.05)
    from sfsd.dashboard import data

    low, high = (100 * x for x in wilson_interval(differ, 6))
    acc_a, acc_b = (100 * (frame["pred"] == frame["gold"]).mean() for frame in (a, b))
    assert headline(at) == (f"{data.model_display(env['saved'])} changes {100 * differ / 6:.1f}% [{low:.1f}, "
                            f"{high:.1f}] of {data.model_display(env['model'])}'s answers on piqa (n=6; accuracy "
                            f"{acc_a:.1f}% → {acc_b:.1f}%).")
    no_empty_cells(at)
    assert [w.value for w in at.warning] and "piqa: only 6 documents" in at.warning[0].value
    golds = list(a["gold"])  # the majority-class reference line agrees with the records' gold answers
    assert data.reference_rates("piqa", 6)["majority"] == pytest.approx(max(map(golds.count, set(golds))) / 6)
    figure = json.loads(charts(at)[0].proto.spec)
    assert all(trace["error_y"]["array"] for trace in figure["data"])  # intervals on bars and disagreement
    flips = at.dataframe[1].value
    assert list(flips.columns) == ["doc_id", "direction", "question", "gold", "pred_a", "pred_b", "loglik_a",
                                   "loglik_b"]
    assert len(charts(at)) == 1


@pytest.mark.parametrize("method,record", [("llm-pruner", "sfsd_pruned"), ("slicegpt", "sfsd_sliced")])
def test_a_structured_table1_row_opens_on_disagreement_and_bias(env, method, record):
    """The LLM-Pruner and SliceGPT rows' models are offered on both pages and saved on demand: real smaller
    models that reload plainly, with the parameters their runs recorded."""
    from transformers import AutoModelForCausalLM

    from sfsd.accounting import count_parameters
    from sfsd.dashboard import data, jobs
    from sfsd.runs import Run

    run_id = env["uniform"][method]
    folder = Path(env["root"]) / "models" / run_id
    shown = data.model_display(str(folder))  # AppTest lists the options as the page shows them
    assert shown.startswith(f"Table 1: {method}, beta 0.5, last 2 blocks")
    at = open_page("disagreement")
    no_exception(at)
    assert shown in at.selectbox(key="dis-b").options
    at = open_page("bias")
    no_exception(at)
    assert shown in at.multiselect(key="bias-models").options
    assert jobs.save_uniform_model(run_id) == folder
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert data.compressed_method(str(folder)) == method
    assert getattr(model.config, record)["blocks"]  # the pruned blocks' widths, or every block's residual widths
    assert count_parameters(model) == Run.open(run_id).result()["params"]


def test_table1_models_open_on_disagreement_without_a_manual_save(env):
    """A Table 1 row's model is listed on the Disagreement page before it is saved; Compare saves it under
    cache/models/<run id> and scores it on the documents of its run: the same accuracy as Table 1's."""
    from sfsd.dashboard import data
    from sfsd.runs import Run

    run_id = env["uniform"]["feature"]
    folder = Path(env["root"]) / "models" / run_id
    at = open_page("disagreement")
    no_exception(at)
    assert str(folder) in at.selectbox(key="dis-b").options or any(
        o.startswith("Table 1: feature, beta 0.5, last 2 blocks") for o in at.selectbox(key="dis-b").options)
    at.selectbox(key="dis-a").select(env["model"])
    at.selectbox(key="dis-b").select(str(folder))
    at.multiselect(key="dis-tasks").set_value(["piqa"])
    at.number_input(key="dis-limit").set_value(UNIFORM["limit"])
    at.run()
    at.button(key="dis-run").click().run(timeout=180)
    no_exception(at)
    assert (folder / "config.json").is_file() and data.compressed_method(str(folder)) == "feature"
    row = at.dataframe[0].value.iloc[0]
    stored = next(e for e in Run.open(run_id).read_evaluations() if e["kind"] == "task")["metrics"]
    assert float(row["acc B % [95% CI]"].split(" ")[0]) == pytest.approx(100 * stored["acc"], abs=0.05)
    assert re.fullmatch(r"\S+ \[\S+, \S+\]", row["acc A % [95% CI]"])
    # the records reused from the run are those of the saved model: scored afresh, it answers the same
    from sfsd.evaluate import evaluate_tasks
    from sfsd.models import load_model

    model, tokenizer = load_model(str(folder), "cpu")
    fresh = evaluate_tasks(model, tokenizer, ["piqa"], split="eval", limit=UNIFORM["limit"], use_cache=False)
    assert float(fresh.summary["acc"].iloc[0]) == pytest.approx(stored["acc"])


def test_bias_page_scores_stereoset(env):
    at = open_page("bias")
    no_exception(at)
    score_on_bias(at, [env["model"], env["saved"]], 2)
    no_exception(at)
    table = at.dataframe[0].value
    assert {"LMS", "SS", "ICAT", "n"} <= set(table.columns) and table["model"].nunique() == 2
    # intrasentence by default (the type comparable with published numbers), every domain sampled: 2 examples each
    assert set(table["type"]) == {"intrasentence"}
    assert list(table["bias_type"].unique()) == ["gender", "profession", "race", "religion", "overall"]
    assert list(table["n"]) == [2, 2, 2, 2, 8] * 2 and table["SS"].str.contains(r"\[").any()
    warning = " ".join(str(w.value) for w in at.warning)  # 2 examples: every cell is thin, and says so
    assert "only 2 examples (< 30)" in warning and "no examples" not in warning
    no_empty_cells(at)
    # the headline: each model's intrasentence ICAT over all domains, recomputed from the scored records
    from sfsd.dashboard import data
    from sfsd.data import load_stereoset
    from sfsd.evaluate import stereoset
    from sfsd.evaluate.stereoset import cell_scores
    from sfsd.models import load_model

    expected = []
    for name in (env["model"], env["saved"]):
        model, tokenizer = load_model(name, "cpu")
        rows = data.stratified_sample(list(load_stereoset(split="all")), 2)
        records = stereoset(model, tokenizer, rows=rows, progress=False).records
        scores = cell_scores(records[records["type"] == "intrasentence"], "intrasentence/overall")
        expected.append(f"{data.model_display(name)} {scores['ICAT']:.1f} [{scores['ICAT_low']:.1f}, "
                        f"{scores['ICAT_high']:.1f}] (n=8)")
    assert headline(at) == "intrasentence ICAT, all domains: " + " vs ".join(expected) + "."
    figure = json.loads(charts(at)[0].proto.spec)  # ICAT by default (the headline's), its interval as error bars
    assert figure["data"][0]["error_y"]["array"] and figure["layout"]["yaxis"]["title"]["text"].startswith("ICAT")
    at.radio(key="bias-type").set_value("all").run()
    no_exception(at)
    pooled = at.dataframe[0].value
    assert set(pooled["type"]) == {"all"} and (pooled.groupby("model")["n"].max() == 16).all()
    assert len(charts(at)) == 1


def test_disagreement_and_bias_warn_about_a_broken_compared_model(env, monkeypatch):
    """A model whose perplexity is more than PPL_BLOWUP x its base model's is flagged on both pages, with the
    numbers of the runs that made it; the threshold is lowered here below the Table 1 feature row's real ratio (a
    tiny random model is not broken by compression)."""
    from sfsd.dashboard import data
    from sfsd.runs import Run

    folder = str(Path(env["root"]) / "models" / env["uniform"]["feature"])

    def ppl(run_id: str) -> float:
        return next(e for e in Run.open(run_id).read_evaluations() if e["kind"] == "ppl")["metrics"]["ppl"]

    ratio = ppl(env["uniform"]["feature"]) / ppl(env["uniform"]["none"])
    facts = data.perplexity_vs_base(folder)
    assert facts["ratio"] == pytest.approx(ratio) and facts["run_id"] == env["uniform"]["feature"]
    held = Run.open(env["feature"]).result()["heldout"]  # a saved search: its held-out check
    assert data.perplexity_vs_base(env["saved"])["ratio"] == pytest.approx(held["final"]["value"] /
                                                                          held["base"]["value"])
    assert data.perplexity_vs_base(env["model"]) is None  # the base model itself: nothing to compare with
    monkeypatch.setattr("sfsd.dashboard.data.PPL_BLOWUP", 0.5 * ratio)
    at = open_page("disagreement")
    at.selectbox(key="dis-a").select(env["model"])
    at.selectbox(key="dis-b").select(folder).run()
    no_exception(at)
    shown = data.model_display(folder)
    line = f"{shown} looks broken: perplexity {facts['ppl']:,.1f} ("
    assert any(str(w.value).startswith(line) for w in at.warning), [w.value for w in at.warning]
    at = open_page("bias")
    at.multiselect(key="bias-models").set_value([env["model"], folder]).run()
    no_exception(at)
    assert [str(w.value) for w in at.warning if str(w.value).startswith(line)]
    assert not [w for w in at.warning if "tiny-llama looks broken" in str(w.value)]
    # every page that shows the run says it too: the Runs page's details, the Report
    for page, key in (("runs", "runs-detail"), ("report", "report-run")):
        at = open_page(page)
        at.selectbox(key=key).select(env["uniform"]["feature"]).run()
        no_exception(at)
        assert [w for w in at.warning if f"looks broken: perplexity {facts['ppl']:,.1f} (" in str(w.value)], page


def test_report_is_one_self_contained_html_file(env):
    from sfsd.runs import Run
    from sfsd.search import SearchConfig

    unstarted = Run.create(SearchConfig(model=env["model"], strategy="bisect").to_dict())  # newest, never run
    try:
        at = open_page("report")
        no_exception(at)
        from sfsd.runs import RunStore

        runs = RunStore().list_runs()
        latest_done = runs.loc[runs["state"] == "done"].sort_values("created", ascending=False)["run_id"].iloc[0]
        assert at.selectbox(key="report-run").value == latest_done != unstarted.id  # the latest finished run
    finally:
        import shutil

        shutil.rmtree(unstarted._path)
    at.selectbox(key="report-run").select(env["feature"]).run()
    no_exception(at)
    assert at.get("download_button")
    from sfsd.dashboard import data, report

    document = report.build_report(data.load_run(env["feature"]), data.spectra(env["feature"]))
    assert document.count("<script src=") == 0  # nothing fetched from the network
    assert document.count('class="plotly-graph-div"') >= 5  # heatmap, metric, accuracy, trace, spectra
    assert document.count("plotly.js v") >= 1 and len(document) < 15_000_000
    for heading in ("Budget per layer", "Metric versus parameters", "Spectra per role", "Layers", "Config"):
        assert heading in document
    assert "acc:piqa % [95% CI]" in document and "majority class" in document  # snapshot accuracies
    assert "<th>budget %</th>" in document and "<th>params (M)</th>" in document  # the Accuracy page's units
    assert "held-out check (search vs eval split)" in document


def test_a_model_report_holds_its_table1_protocols_with_their_headlines(env):
    from sfsd.dashboard import data, report

    at = open_page("report")
    at.radio(key="report-of").set_value("one model").run()
    at.selectbox(key="report-model").select(env["model"]).run()
    no_exception(at)
    assert at.get("download_button")
    document = report.build_model_report(env["model"])
    uniform = data.uniform_frame()
    protocols = [p for p in data.table1_protocols(uniform) if p["model"] == env["model"]]
    assert protocols and document.count("<script src=") == 0 and document.count("plotly.js v") == 1
    for protocol in protocols:  # each protocol's heading and its headline, computed from its rows
        import html

        assert html.escape(f"Table 1: {data.protocol_label(protocol)}") in document
        headline = data.table1_headline(data.table1_rows(uniform, **protocol))
        assert headline is None or html.escape(headline) in document
    assert "[95% CI]" in document and "No disagreement comparison of this model yet" in document


def test_a_model_report_holds_the_disagreement_and_bias_comparisons_made_on_their_pages(env):
    """Compare on the Disagreement page, score on the Bias page, then the Report's model report holds both, with
    the pages' headlines (computed from the same records) and intervals."""
    import html

    from sfsd.dashboard import data, headlines, report
    from sfsd.evaluate import disagreement

    at = open_page("disagreement")
    compare_on_disagreement(at, env["model"], env["saved"], 6)
    at.switch_page(PAGES["bias"]).run()
    score_on_bias(at, [env["model"], env["saved"]], 2)
    no_exception(at)
    at.switch_page(PAGES["report"]).run()
    at.radio(key="report-of").set_value("one model").run()
    at.selectbox(key="report-model").select(env["model"]).run()
    no_exception(at)
    assert "Includes 1 disagreement and 1 bias comparison(s)" in texts(at)
    (pair,), (scored,) = report.model_comparisons(env["model"], at.session_state["dis-results"],
                                                  at.session_state["bias-results"])
    records_a, records_b = next(iter(at.session_state["dis-results"].values()))
    label_a, label_b = data.model_display(env["model"]), data.model_display(env["saved"])
    assert pair[:2] == (label_a, label_b) and scored[0] == 2
    document = report.build_model_report(env["model"], [pair], [scored])
    summary = disagreement(records_a, records_b, "acc")
    assert html.escape(headlines.disagreement_headline(summary, label_a=label_a, label_b=label_b)) in document
    part = scored[1][scored[1]["type"] == "intrasentence"]
    assert html.escape(headlines.bias_headline(part, "intrasentence")) in document
    assert "disagreement, % of n [95% CI]" in document and "ICAT" in document and "<script src=" not in document
    # a comparison without this model is not its report's
    other = {("x", "y", ("piqa",), 6): (records_a, records_b)}
    assert report.model_comparisons(env["model"], other, {}) == ([], [])


# ---- empty and broken stores ---------------------------------------------------------------------------


DEMO_KEYS = {"runs": "runs", "heatmap": "heatmap", "spectra": "spectra", "accuracy": "acc", "report": "report"}


@pytest.fixture
def empty_env(tmp_path, store, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    return tmp_path


@pytest.mark.parametrize("name", [None, *PAGES])
def test_every_page_says_what_to_run_on_an_empty_store(empty_env, name):
    at = open_page(name)
    no_exception(at)
    if name in DEMO_KEYS:
        assert "sfsd search --model" in texts(at)
        assert at.button(key=f"{DEMO_KEYS[name]}-empty-demo")
    elif name == "table1":
        assert "No uniform runs yet" in texts(at) and "sfsd uniform --model" in texts(at)
    elif name == "disagreement":
        assert "No finished search run yet" in texts(at)
    elif name == "bias":
        assert "No compressed model yet" in texts(at)


def test_pages_survive_an_unstarted_run_and_a_broken_folder(empty_env, store):
    from sfsd.runs import Run
    from sfsd.search import SearchConfig

    Run.create(SearchConfig(model=store["model"]).to_dict())  # pending, no layers, never launched
    broken = empty_env / "runs" / "search-broken-000000000000"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{not json")
    for name in [None, *PAGES]:
        at = open_page(name)
        no_exception(at)
    at = open_page("runs")
    assert "invalid" in set(at.dataframe[0].value["state"])


# ---- figure helpers ------------------------------------------------------------------------------------


def test_heatmap_cells_show_intact_layers_full_and_undecided_ones_blank():
    import pandas as pd

    from sfsd.dashboard import plots

    layers = pd.DataFrame({
        "layer": ["b1.q", "b1.k", "b0.q"], "block": [1, 1, 0], "role": ["q", "k", "q"], "d_in": [64, 64, 64],
        "d_out": [64, 32, 64], "decided": [True, True, False], "intact": [False, True, False],
        "rank": pd.array([8, None, None], dtype="Int64"), "retained": [0.25, 1.0, None],
    })
    cells = plots.heatmap_cells(layers).set_index("layer")
    assert cells.loc["b1.q", "retained_pct"] == 25 and cells.loc["b1.q", "rank"] == 8
    assert cells.loc["b1.k", "retained_pct"] == 100 and cells.loc["b1.k", "rank"] == 32  # intact: full rank
    assert pd.isna(cells.loc["b0.q", "retained_pct"]) and pd.isna(cells.loc["b0.q", "rank"])
    figure = plots.budget_heatmap(cells.reset_index())
    assert [list(row) for row in figure.data[0].text] == [["", ""], ["25%", "100%"]]  # blocks 0, 1 x roles q, k
    event = {"selection": {"points": [{"x": "k", "y": 1}]}}  # a click without customdata
    assert plots.selected_layer(event, cells.reset_index()) == "b1.k"
    assert plots.selected_layer({"selection": {"points": []}}, cells.reset_index()) is None


@pytest.fixture
def demo_env(demo_store, monkeypatch):
    monkeypatch.setenv("SFSD_CACHE_DIR", demo_store["root"])
    monkeypatch.setenv("SFSD_DEMO_MODEL", demo_store["model"])
    return demo_store


@pytest.mark.slow  # the quick demo's five runs in a background process, unless the browser test ran them
@pytest.mark.reuses_demo
def test_finished_quick_demo_says_what_it_ran_and_where_to_look(demo_env):
    """On conftest's `demo_store`: the demo the browser test started with a click when it ran (its runs are then
    done and `start_demo` launches nothing), else the demo started here."""
    import time

    from sfsd.dashboard import jobs
    from sfsd.runs import Run

    store = demo_env

    started = jobs.start_demo(store["model"], 3)  # what the button does, in one process
    ids = jobs.demo_run_ids(store["model"], 3)
    assert [s.run_id for s in started] == ids and len(ids) == 5  # two searches, then base, feature, weight
    searches = ids[:2]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and any(Run.open(s.run_id).status()["state"] != "done" for s in started):
        time.sleep(2)
    states = [Run.open(s.run_id).status()["state"] for s in started]
    assert states == ["done"] * 5, states
    deadline = time.monotonic() + 30  # the chain writes its finish after the last run's
    while time.monotonic() < deadline and not (jobs.demo_record() or {}).get("finished"):
        time.sleep(0.5)
    record = jobs.demo_record()
    assert record["finished"] and [c["argv"] for c in record["commands"]] == [jobs.resume_argv(i) for i in ids]
    assert [c["label"] for c in record["commands"]] == ["search feature", "search weight", "uniform base",
                                                        "uniform feature", "uniform weight"]
    assert all(c["exit"] == 0 and c["seconds"] > 0 for c in record["commands"])
    for run_id in ids:  # each run's log holds its own output, not the whole chain's
        log = Run.open(run_id).log_path.read_text()
        assert [i for i in ids if f"sfsd runs resume {i}" in log] == [run_id]
    for run_id in searches:  # piqa at every snapshot after step 0
        snapshots = Run.open(run_id).read_snapshots()
        assert len(snapshots) >= 3 and all("piqa" in s["evals"] for s in snapshots if s["step"] > 0)
        # run in a process of its own: the held-out check at its default size, not conftest's SMALL_HELDOUT
        assert Run.open(run_id).result()["heldout"]["final"]["n"] == 16_384
    time.sleep(2.5)  # the store reads are cached for 2 s
    at = open_page()
    no_exception(at)
    summary = " ".join(s.value for s in at.success)
    assert re.search(r"The quick demo ran a feature-space search .* a weight-space search .*Table 1's uniform "
                     r"protocol at beta 0.46 on the last 3 blocks \(base, feature, weight\)\..* It took \d+m\d\ds "
                     r"\(search feature \d+m\d\ds, search weight .*uniform weight \d+m\d\ds\)", summary), summary
    from sfsd.search.heldout import heldout_summary

    # each search's held-out change beside its search-split change, and a plain word when it is over twice the tolerance
    changes = [heldout_summary(Run.open(i).result()) for i in searches]
    for change in changes:
        assert f"search split {change['search_change'] * 100:+.1f}%, eval split {change['eval_change'] * 100:+.1f}%" \
            in summary, summary
    assert ("more than twice the +10% tolerance" in summary) == any(c["eval_change"] > 0.2 for c in changes), summary
    labels = [link.proto.label for link in at.get("page_link")]
    assert {"Budget per layer: heatmap", "Spectra: feature vs weight", "Accuracy vs parameters",
            "Table 1: feature vs weight at one budget"} <= set(labels), labels
    for run_id in searches:  # the heatmap is coloured: cells below 100% in 2+ blocks
        at = open_page("heatmap")
        at.selectbox(key="heatmap-run").select(run_id).run()
        no_exception(at)
        heat = json.loads(charts(at)[0].proto.spec)["data"][0]
        assert sum(any(v is not None and v < 100 for v in row) for row in heat["z"]) >= 2, heat["z"]
    at = open_page("accuracy")  # two accuracy curves of at least two points
    at.multiselect(key="acc-runs").set_value(searches).run()
    at.selectbox(key="acc-y").select("acc piqa (eval split, %)").run()
    no_exception(at)
    curves = [t for t in json.loads(charts(at)[0].proto.spec)["data"] if t["mode"] == "lines+markers"]
    assert len(curves) == 2 and all(len(c["x"]) >= 2 for c in curves)
    at = open_page("table1")  # the demo's same-budget trio: perplexity first, accuracy with intervals
    no_exception(at)
    table = at.dataframe[0].value
    assert list(table["method"]) == ["base", "weight", "feature"]
    assert table.columns[2].startswith("ppl @128 tokens [95% CI]")
    assert all(re.fullmatch(r"\d+\.\d \[\d+\.\d, \d+\.\d\]", cell) for cell in table.filter(like="acc %").stack())
    # the Frontier has points after the demo: its searches, at their own held-out check's perplexity (windows of the
    # search metric's length), and that check's base model as the one labelled base line; one perplexity protocol
    # is drawn (the token count most points share), and what is left out is said
    from sfsd.dashboard import data, frontier
    from sfsd.runs.frontier import ALG1, frontier_frame

    heldout = Run.open(searches[0]).result()["heldout"]
    column = f"ppl@{heldout['final']['seq_len']}"
    points = frontier_frame(model=demo_env["model"])
    demo_points = points[points["run_id"].isin(searches) & (points["strategy"] != "base")]
    assert list(demo_points["strategy"]) == [ALG1, ALG1] and demo_points[column].notna().all()
    at = open_page("frontier")
    at.selectbox(key="frontier-model").select(demo_env["model"]).run()
    at.radio(key="frontier-ppl").set_value(column).run()
    no_exception(at)
    drawn = json.loads(charts(at)[0].proto.spec)
    assert frontier.protocol_tokens(points, column) == heldout["final"]["n"] == 16_384
    assert "16,384 tokens" in drawn["layout"]["yaxis"]["title"]["text"]
    assert {"Algorithm 1 (feature)", "Algorithm 1 (weight)"} <= {t["name"] for t in drawn["data"]}
    bases = [a["text"] for a in drawn["layout"]["annotations"] if a["text"].startswith("base model")]
    base = heldout["base"]
    assert bases == [f"base model {data.ppl_text(base['value'], base['low'], base['high'])}"], bases
    _, left_out = frontier.one_protocol(points, column)
    assert left_out is None or left_out in texts(at)


def test_run_all_missing_queues_the_runs_behind_one_background_process(empty_env, store):
    import signal
    import time

    from sfsd.compress import CalibrationSpec
    from sfsd.dashboard import data, jobs
    from sfsd.runs import Run
    from sfsd.search.uniform import UniformConfig

    argvs = [UniformConfig(model=store["model"], method=method, beta=0.5, last_blocks=1, limit=None,
                           ppl_seq_lens=[16], ppl_tokens=256,
                           calibration=CalibrationSpec(source="wiki", samples=8, seq_len=16))
             for method in ("weight", "asvd")]
    first, second = jobs.start_all(argvs)
    try:
        assert first.launched and second.pid == first.pid
        queued = Run.open(second.run_id).status()
        assert queued["state"] == "pending" and queued["message"] == f"queued 2 of 2: starts after {first.run_id}"
        assert jobs.queue_place(queued["message"]) == 2
        data.clear()
        assert set(data.active_runs()["run_id"]) == {first.run_id, second.run_id}
        assert all(not s.launched for s in jobs.start_all(argvs))  # already running: nothing started twice
    finally:
        os.killpg(first.pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while Run.open(second.run_id).status()["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert Run.open(second.run_id).status()["state"] == "failed"  # its process is gone: not pending forever


def test_heatmap_shows_the_share_each_layer_kept_by_pruning(env):
    """A pruned Table 1 row on the heatmap: the pruned blocks' cells below 100%, the others intact."""
    at = open_page("heatmap")
    at.selectbox(key="heatmap-run").select(env["uniform"]["llm-pruner"]).run()
    no_exception(at)
    heat = json.loads(charts(at)[0].proto.spec)["data"][0]
    rows = {int(y): row for y, row in zip(heat["y"], heat["z"], strict=True)}  # block -> cells (% kept)
    roles = heat["x"]
    for block in (1, 2):  # query heads within each KV group go (k and v stay whole), and MLP channels
        cells = dict(zip(roles, rows[block], strict=True))
        assert cells["k"] == cells["v"] == 100 and all(0 < cells[r] < 100 for r in ("q", "o", "gate", "up", "down"))
    assert all(v == 100 for v in rows[0]), rows


def test_heatmap_shows_the_share_each_layer_kept_by_slicing(env):
    """SliceGPT on the heatmap: every block's layers narrower (they read or write the sliced residual stream),
    but the last block's down_proj, which writes the full width that the unsliced head reads."""
    at = open_page("heatmap")
    at.selectbox(key="heatmap-run").select(env["uniform"]["slicegpt"]).run()
    no_exception(at)
    heat = json.loads(charts(at)[0].proto.spec)["data"][0]
    rows = {int(y): dict(zip(heat["x"], row, strict=True)) for y, row in zip(heat["y"], heat["z"], strict=True)}
    assert sorted(rows) == [0, 1, 2]
    for block, cells in rows.items():
        narrowed = [r for r in cells if not (block == 2 and r == "down")]
        assert all(0 < cells[r] < 100 for r in narrowed), (block, cells)
    assert rows[2]["down"] == 100
