"""Every page renders for every state of the run store (issue 27): each page opened with Streamlit's AppTest,
with each kind of run selected where the page has a run (or model, or protocol) picker, fails on an exception
or an error alert.

The stores are made of small real runs, none mocked:
- `fixture`: conftest's `dashboard_store` (done feature and weight searches; uniform runs of every kind: the
  base model, weight and feature space, LLM-Pruner, SliceGPT).
- `states`: built here once, on a second tiny LLaMA (another model than the fixture's): searches stopped at a
  budget by the engine (`stop_at_budget`), cancelled by the engine (a cancel requested before it resumed), and
  partial searches put by the run's own life-cycle code (`Run.lock`, `mark_running`, ...) in the states a real
  process leaves them in: running (its lock held by this process, live), interrupted (running, no lock, a dead
  pid), failed (an exception inside `Run.lock`), launched (pending with a live pid), queued, launched with a
  process that is gone, unstarted; a done uniform run, a uniform run cancelled by the engine, a running one, a
  failed one, and `sfsd frontier`'s base evaluation (which the done run's protocol borrows); target-budget
  runs of the cheap allocation strategies (uniform, spectrum); runs imported from an archive of the fixture
  store (`sfsd runs export` / `import`).
- `base-only`: only the base evaluation `sfsd frontier` stores (a uniform run of method "none", beta 1.0,
  last 0 blocks).
- `frontier` (slow): conftest's `frontier_store`, a real tiny frontier (uniform and spectrum points, SliceGPT
  baselines, an evaluated Algorithm 1 search, the base run).
- `empty`: no run at all.

Error alerts that are deliberate and correct for a state would be listed in EXPECTED_ERRORS: none is (the
pages say what is missing with info and warning alerts; `st.error` is kept for failed actions, which no state
triggers on opening). Sensitivity and alg1 target-budget runs are left to tests/test_allocation.py (many trials or
searches each); the frontier store has an evaluated Algorithm 1 search.

Slow (in `make test`, not in `make test-fast`): every page for every state is a sweep of 340 AppTest runs over
four stores built for it, not an edit-loop check; the pages' own tests (tests/test_app.py) stay in the edit loop.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import ROOT, cache_env, make_private_cache, save_tiny_llama

pytestmark = pytest.mark.slow  # see the module's docstring

PAGES = {
    "home": None, "runs": "pages/1_Runs.py", "heatmap": "pages/2_Budget_heatmap.py", "spectra": "pages/3_Spectra.py",
    "accuracy": "pages/4_Accuracy_vs_parameters.py", "table1": "pages/5_Weight_vs_feature.py",
    "disagreement": "pages/6_Disagreement.py", "bias": "pages/7_Bias.py", "report": "pages/8_Report.py",
    "frontier": "pages/9_Frontier.py",
}
# pages whose picker picks one run (selectbox) or several (multiselect)
RUN_PICKERS = {"runs": "runs-detail", "heatmap": "heatmap-run", "spectra": "spectra-run", "report": "report-run"}
RUNS_PICKERS = {"accuracy": "acc-runs"}

# state -> (store, name of the run in that store; None: the store as a whole)
STATES = {
    "empty store": ("empty", None),
    "only a base run": ("base-only", "base"),
    "search done (feature)": ("fixture", "feature"),
    "search done (weight)": ("fixture", "weight"),
    "uniform base": ("fixture", "uniform none"),
    "uniform weight": ("fixture", "uniform weight"),
    "uniform feature": ("fixture", "uniform feature"),
    "uniform llm-pruner": ("fixture", "uniform llm-pruner"),
    "uniform slicegpt": ("fixture", "uniform slicegpt"),
    "search stopped at a budget": ("states", "stopped"),
    "search cancelled": ("states", "cancelled"),
    "search running (live)": ("states", "running"),
    "search interrupted (dead pid)": ("states", "interrupted"),
    "search failed": ("states", "failed"),
    "search launched (live pid)": ("states", "launched"),
    "search queued": ("states", "queued"),
    "search launched, process gone": ("states", "launch-failed"),
    "search unstarted": ("states", "unstarted"),
    "uniform done (other model)": ("states", "uniform done"),
    "base evaluation beside a protocol": ("states", "base evaluation"),
    "uniform cancelled": ("states", "uniform cancelled"),
    "uniform running": ("states", "uniform running"),
    "uniform failed": ("states", "uniform failed"),
    "target budget (uniform)": ("states", "target uniform"),
    "target budget (spectrum)": ("states", "target spectrum"),
    "imported search": ("states", "imported search"),
    "imported uniform": ("states", "imported uniform"),
    "frontier store": ("frontier", None),
    "frontier point (uniform)": ("frontier", "target uniform"),
    "frontier point (spectrum)": ("frontier", "target spectrum"),
    "frontier Algorithm 1 search": ("frontier", "alg1"),
    "frontier SliceGPT baseline": ("frontier", "slicegpt"),
    "frontier base run": ("frontier", "base"),
}

# (page, state) -> the start of an error alert that is deliberate and correct there
EXPECTED_ERRORS: dict[tuple[str, str], str] = {}


def _dead_pid() -> int:
    """The pid of a process that has exited (what a killed search leaves in its status)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def states_store(tmp_path_factory, default_model_dir, dashboard_store):
    """The `states` store (see the module's docstring); the running runs' locks are held until the module ends."""
    from sfsd.compress import CalibrationSpec
    from sfsd.runs import Run
    from sfsd.search import MetricSpec, SearchConfig, run_search
    from sfsd.search.uniform import UniformConfig, run_uniform

    root = make_private_cache(tmp_path_factory.mktemp("states") / "cache")
    model = save_tiny_llama(root.parent / "tiny-llama-2", default_model_dir, 3)
    calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
    runs: dict[str, str] = {}
    stack = ExitStack()

    def search(tolerance: float, **extra) -> SearchConfig:
        metric = MetricSpec(name="ppl", tolerance=tolerance, samples=4, seq_len=32, batch_size=2)
        return SearchConfig(model=str(model), metric=metric, calibration=calibration, **extra)

    def uniform(method: str, beta: float, **extra) -> UniformConfig:
        return UniformConfig(model=str(model), method=method, beta=beta, calibration=calibration,
                             **{"last_blocks": 1, "tasks": ["piqa"], "limit": 4, "ppl_seq_lens": [32],
                                "ppl_tokens": 1024, **extra})

    def launched(run: Run) -> Run:  # what sfsd.runs.launch writes before the process takes the run's lock
        run.write_status(state="pending", pid=os.getpid(), message="")
        return run

    with cache_env(root):
        # the engine stops a search at a budget (cancelled with stopped_at_budget: reads "stopped")
        runs["stopped"] = run_search(search(0.4), progress=False, stop_at_budget=0.9).id
        # the engine cancels a launched search whose cancel was requested: resumed, it stops at its next layer
        partial = run_search(search(0.5), progress=False, stop_at_budget=0.9)
        launched(partial).request_cancel()
        runs["cancelled"] = run_search(search(0.5), progress=False).id
        # partial searches put in the states a process leaves them in, by the run's own life-cycle code
        for name, tolerance in (("running", 0.6), ("interrupted", 0.7), ("failed", 0.8)):
            run = run_search(search(tolerance), progress=False, stop_at_budget=0.9)
            runs[name] = run.id
            if name == "running":  # this process holds its lock while the pages read it: a live run
                stack.enter_context(run.lock())
                run.mark_running(layers_total=21, layers_done=len(run.decisions()), eta_s=42.0,
                                 current_layer="model.layers.1.mlp.up_proj")
            elif name == "interrupted":  # killed: stored running, nobody holds the lock, its pid gone
                with run.lock():
                    run.mark_running(layers_total=21, layers_done=len(run.decisions()))
                run.write_status(pid=_dead_pid())
            else:
                with pytest.raises(RuntimeError), run.lock():
                    run.mark_running(layers_total=21, layers_done=len(run.decisions()))
                    raise RuntimeError("CUDA out of memory (as a process would fail)")
        runs["launched"] = launched(Run.create(search(0.9).to_dict())).id
        queued = Run.create(search(1.0).to_dict())
        queued.write_status(state="pending", pid=os.getpid(), message=f"queued 2 of 2: starts after {runs['launched']}")
        runs["queued"] = queued.id
        gone = Run.create(search(1.1).to_dict())
        gone.write_status(state="pending", pid=_dead_pid(), message="")
        runs["launch-failed"] = gone.id
        runs["unstarted"] = Run.create(search(1.2).to_dict()).id
        # target-budget runs of the cheap allocation strategies, on the last block
        for strategy in ("uniform", "spectrum"):
            runs[f"target {strategy}"] = run_search(search(0.0, strategy=strategy, target_budget=0.8, first_block=2),
                                                    progress=False).id
        # uniform runs: done, cancelled by the engine (after compressing), running, failed; and the base
        # evaluation `sfsd frontier` stores (beta 1.0, 0 blocks), which the done run's protocol borrows as base row
        runs["uniform done"] = run_uniform(uniform("weight", 0.5), progress=False).id
        runs["base evaluation"] = run_uniform(uniform("none", 1.0, last_blocks=0), progress=False).id
        config = uniform("weight", 0.6)
        launched(Run.create(config.to_dict())).request_cancel()
        runs["uniform cancelled"] = run_uniform(config, progress=False).id
        run = Run.create(uniform("feature", 0.6).to_dict())
        stack.enter_context(run.lock())
        run.mark_running(layers_total=1, layers_done=0)
        runs["uniform running"] = run.id
        run = Run.create(uniform("feature", 0.7).to_dict())
        with pytest.raises(RuntimeError), run.lock():
            run.mark_running(layers_total=1, layers_done=0)
            raise RuntimeError("killed by the OOM killer")
        runs["uniform failed"] = run.id
    # runs of the fixture store (its model), exported there and imported here
    from sfsd.runs.transfer import export_archive, import_archive

    archive = root.parent / "runs.zip"
    with cache_env(Path(dashboard_store["root"])):
        export_archive([dashboard_store["feature"], dashboard_store["uniform"]["feature"]], archive)
    with cache_env(root):
        import_archive(archive)
    runs["imported search"] = dashboard_store["feature"]
    runs["imported uniform"] = dashboard_store["uniform"]["feature"]
    with stack:
        yield {"root": str(root), "model": str(model), "runs": runs}


@pytest.fixture(scope="module")
def base_only_store(tmp_path_factory, default_model_dir):
    """A store holding only what `sfsd frontier` evaluates first: the base model as a uniform run of method none."""
    from sfsd.compress import CalibrationSpec
    from sfsd.search.uniform import UniformConfig, run_uniform

    root = make_private_cache(tmp_path_factory.mktemp("base-only") / "cache")
    model = save_tiny_llama(root.parent / "tiny-llama", default_model_dir, 3)
    with cache_env(root):
        config = UniformConfig(model=str(model), method="none", beta=1.0, last_blocks=0, tasks=["piqa"], limit=4,
                               ppl_seq_lens=[32], ppl_tokens=1024,
                               calibration=CalibrationSpec(source="wiki", samples=16, seq_len=32))
        run = run_uniform(config, progress=False)
    return {"root": str(root), "model": str(model), "runs": {"base": run.id}}


def _frontier_runs(store: dict) -> dict:
    from sfsd.runs import RunStore

    runs = {}
    with cache_env(Path(store["root"])):
        for row in RunStore().list_runs().itertuples():
            config = RunStore().run(row.run_id).config
            if row.kind == "search":
                name = f"target {row.strategy}" if row.target_budget == row.target_budget else "alg1"
            elif config["method"] == "none":
                name = "base"
            else:
                name = config["method"]
            runs.setdefault(name, row.run_id)
    return runs


@pytest.fixture
def store_of(request, tmp_path, dashboard_store):
    """The store a state lives in: {"root", "model", "runs": {name: run id}}."""
    def get(name: str) -> dict:
        if name == "empty":
            return {"root": str(tmp_path), "model": dashboard_store["model"], "runs": {}}
        if name == "fixture":
            runs = {"feature": dashboard_store["feature"], "weight": dashboard_store["weight"],
                    **{f"uniform {m}": i for m, i in dashboard_store["uniform"].items()}}
            return {**dashboard_store, "runs": runs}
        if name == "frontier":
            store = request.getfixturevalue("frontier_store")
            return {**store, "runs": _frontier_runs(store)}
        return request.getfixturevalue({"states": "states_store", "base-only": "base_only_store"}[name])
    return get


# ---- selecting a run on each page ------------------------------------------------------------------------


def _config(store: dict, run_id: str) -> dict:
    from sfsd.runs import Run

    return Run.open(run_id, Path(store["root"]) / "runs").config


def _select(at, page: str, store: dict, run_id: str | None) -> str:
    """Pick `run_id` (or its model, protocol or frontier point) on the page, if the page offers it; say what
    was picked ("" where the page has no picker for it)."""
    if run_id is None:
        return ""
    if page in RUN_PICKERS:
        picker = [s for s in at.selectbox if s.key == RUN_PICKERS[page]]
        if picker and _offers(picker[0], run_id):
            picker[0].select(run_id).run()
            return run_id
        return ""
    if page in RUNS_PICKERS:
        picker = [s for s in at.multiselect if s.key == RUNS_PICKERS[page]]
        if picker and _offers(picker[0], run_id):
            picker[0].set_value([run_id]).run()
            return run_id
        return ""
    config = _config(store, run_id)
    if page == "table1" and config.get("kind") == "uniform":
        picker = [s for s in at.selectbox if s.key == "uni-group"]
        wanted = f"· beta {config['beta']} · last {config['last_blocks']} blocks"
        for index, label in enumerate(picker[0].options if picker else []):
            if label.endswith(wanted) and Path(config["model"]).name in label:
                picker[0].set_value(index).run()
                return label
        return ""
    if page in ("disagreement", "bias"):
        folder = str(Path(store["root"]) / "models" / run_id)
        model = folder if config.get("kind") == "uniform" and config["method"] != "none" else config["model"]
        if page == "bias":
            picker = [s for s in at.multiselect if s.key == "bias-models"]
            if picker and _offers(picker[0], model):
                picker[0].set_value([model]).run()
                return model
            return ""
        picker = [s for s in at.selectbox if s.key == "dis-b"]
        if picker and _offers(picker[0], model) and model != at.selectbox(key="dis-a").value:
            picker[0].select(model).run()
            return model
        return ""
    if page == "frontier":
        picked = []
        picker = [s for s in at.selectbox if s.key == "frontier-model"]
        if picker and _offers(picker[0], config["model"]):
            picker[0].select(config["model"]).run()
            picked.append(config["model"])
        target = config.get("target_budget") or (config.get("beta") if config.get("kind") == "uniform" else None)
        picker = [s for s in at.selectbox if s.key == "frontier-target"]
        if target is not None and picker and _offers(picker[0], target):
            picker[0].select(target).run()
            picked.append(str(target))
        return " ".join(picked)
    return ""


def _offers(widget, value) -> bool:
    """Whether a selectbox or multiselect offers `value` (AppTest lists the options as shown, formatted)."""
    return widget.format_func(value) in widget.options


def _cases() -> list:
    return [pytest.param(page, state, id=f"{page}-{state}") for page in PAGES for state in STATES]


@pytest.mark.parametrize(("page", "state"), _cases())
def test_page_renders_for_the_state(page, state, store_of, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store_name, run_name = STATES[state]
    store = store_of(store_name)
    run_id = store["runs"][run_name] if run_name else None
    monkeypatch.setenv("SFSD_CACHE_DIR", store["root"])
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    if run_id is not None:
        at.session_state["sfsd_run"] = run_id  # the run last picked on any page: where the pickers start
    if PAGES[page] is not None:
        at.switch_page(PAGES[page])
    at.run()
    picked = ""
    if not at.exception:
        picked = _select(at, page, store, run_id)
    where = f"page {page}, state {state!r}" + (f", picked {picked}" if picked else "")
    assert not at.exception, f"{where}: {[e.value for e in at.exception]}"
    errors = [e.value for e in at.error]
    expected = EXPECTED_ERRORS.get((page, state))
    unexpected = [e for e in errors if not (expected and str(e).startswith(expected))]
    assert not unexpected, f"{where}: error alert {unexpected}"


# ---- a base evaluation is no Table 1 protocol ------------------------------------------------------------


def test_table1_offers_no_base_evaluation_as_a_protocol_and_its_form_starts_at_the_protocol(store_of, monkeypatch):
    """`sfsd frontier`'s base evaluation (beta 1.0, 0 blocks) is the base row a protocol of the same tasks and
    documents borrows, not a protocol: not offered, and its beta and blocks never reach the form, which starts
    at the protocol picked."""
    from streamlit.testing.v1 import AppTest

    store = store_of("states")
    monkeypatch.setenv("SFSD_CACHE_DIR", store["root"])
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.switch_page(PAGES["table1"])
    at.run()
    protocols = at.selectbox(key="uni-group").options
    assert not [p for p in protocols if p.endswith("last 0 blocks")], protocols
    done = _config(store, store["runs"]["uniform done"])
    index = next(i for i, p in enumerate(protocols) if p.endswith("· beta 0.5 · last 1 blocks")
                 and Path(done["model"]).name in p)
    at.selectbox(key="uni-group").set_value(index).run()
    assert not at.exception and not at.error
    assert list(at.dataframe[0].value["method"]) == ["base", "weight"]  # the borrowed base evaluation first
    assert at.number_input(key="uni-fill-beta").value == 0.5 and at.number_input(key="uni-fill-last").value == 1
    assert at.number_input(key="uni-fill-limit").value == 4


def test_table1_with_only_a_base_evaluation_says_so_and_offers_to_start_one(store_of, monkeypatch):
    from streamlit.testing.v1 import AppTest

    store = store_of("base-only")
    monkeypatch.setenv("SFSD_CACHE_DIR", store["root"])
    monkeypatch.setenv("SFSD_DEMO_MODEL", store["model"])
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.switch_page(PAGES["table1"])
    at.run()
    assert not at.exception and not at.error
    assert not [s for s in at.selectbox if s.key == "uni-group"]
    assert any("Only base-model evaluations so far" in i.value for i in at.info)
    # its evaluation settings are reused, its beta 1.0 and 0 blocks are not: the options' defaults instead
    assert at.number_input(key="uni-new-limit").value == 4
    assert at.number_input(key="uni-new-beta").value == 0.46 and at.number_input(key="uni-new-last").value == 3


def test_protocol_defaults_keep_only_what_the_form_takes():
    from sfsd.dashboard import data

    base = {"kind": "uniform", "model": "m", "method": "none", "beta": 1.0, "last_blocks": 0, "limit": 12,
            "tasks": ["piqa", "no-such-task"], "ppl_seq_lens": [64], "ppl_tokens": None,
            "calibration": {"source": "wiki", "samples": 16, "seq_len": 32, "unknown": 1}}
    defaults = data.protocol_defaults(base)
    assert "beta" not in defaults and "last_blocks" not in defaults  # a base evaluation compressed nothing
    assert defaults["limit"] == 12 and defaults["tasks"] == ["piqa"] and defaults["ppl_seq_lens"] == [64]
    assert defaults["ppl_tokens"] is None  # every token
    assert defaults["calibration"] == {"source": "wiki", "samples": 16, "seq_len": 32}
    picked = data.protocol_defaults(base, {"model": "m", "beta": 0.5, "last_blocks": 2})  # a borrowed base row
    assert picked["beta"] == 0.5 and picked["last_blocks"] == 2
    odd = data.protocol_defaults({"method": "weight", "beta": 0.01, "last_blocks": 2.5, "limit": None,
                                  "ppl_seq_lens": [8], "calibration": {"samples": 0}})
    assert not {"beta", "last_blocks", "limit", "ppl_seq_lens", "ppl_tokens"} & set(odd) and odd["calibration"] == {}
    import pandas as pd

    assert data.table1_protocols(pd.DataFrame(
        [{"model": "m", "method": "base", "beta": 1.0, "last_blocks": 0},
         {"model": "m", "method": "base", "beta": 0.5, "last_blocks": 2},
         {"model": "m", "method": "weight", "beta": 0.4, "last_blocks": 2}])) == [
        {"model": "m", "beta": 0.4, "last_blocks": 2, **data.PAPER_FORMAT},
        {"model": "m", "beta": 0.5, "last_blocks": 2, **data.PAPER_FORMAT}]


def test_chart_titles_wrap_and_the_legend_gets_room_above_the_plot():
    """At 1000 px a chart is about 540 px wide: Plotly cuts a long title, and a legend above the plot that wraps
    grew into the title."""
    import pandas as pd

    from sfsd.dashboard import plots

    title = ("model.layers.29.mlp.down_proj (rank 38) · feature · ppl tol 0.05 · smollm2-135m · 77c605"
             "<br><sup>note</sup>")
    lines = plots.wrap_title(title).split("<br>")
    assert lines == ["model.layers.29.mlp.down_proj (rank 38) · feature · ppl", "tol 0.05 · smollm2-135m · 77c605",
                     "<sup>note</sup>"]
    assert all(len(line) <= plots.TITLE_CHARS for line in lines[:2])
    names = ["base model", "feature space (SFSD, centred + bias)", "LLM-Pruner (structured, no recovery)",
             "SliceGPT (whole model)"]
    rows = plots.legend_rows(names)
    assert rows >= 2
    table = pd.DataFrame([{"method": m, "ppl@128": 10.0 + i} for i, m in enumerate(["base", "feature", "llm-pruner",
                                                                                      "slicegpt"])])
    figure = plots.perplexity_bars(table, title="Perplexity (log scale)")
    assert figure.layout.margin.t >= plots.TITLE_LINE + rows * plots.LEGEND_ROW
    assert figure.layout.title.yref == "container" and figure.layout.title.y == 1
