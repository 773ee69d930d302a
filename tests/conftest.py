"""Shared fixtures: a private cache for every test, offline hub, tiny real models of every supported
architecture, the dashboard's fixture store and the frontier store (each built once per session).

Every test runs in a cache of its own (`cache`, autouse) and every session-scoped fixture in a session-private
one: only the prepared, read-only inputs (the converted default model, the offline data pack) link to the real
cache; every derived artefact (decompositions, statistics, evaluations, runs, jobs, logs) is written afresh,
so a warm cache cannot hide a change to the maths and no test writes into the developer's `cache/`.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs the suite in pytest-xdist workers, one per core: each worker computes with its share of the
# cores, and so do the processes its tests start (the CLI, the dashboard's background runs, Streamlit). Two
# workers of two threads each on two cores spend much of their time waiting for each other's threads.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = str(THREADS)

from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import sfsd  # noqa: E402,F401  registers the compressed classes
from sfsd.data.pack import PACK_VERSION  # noqa: E402
from sfsd.models import DEFAULT_MODEL  # noqa: E402
from sfsd.paths import cache_dir  # noqa: E402

if WORKERS > 1:
    torch.set_num_threads(THREADS)

# The developer's cache, read before any fixture points $SFSD_CACHE_DIR elsewhere.
REAL_CACHE = cache_dir()
# What `sfsd prepare` writes there, relative to a cache root; tests only read these.
PREPARED = (Path("models") / DEFAULT_MODEL, Path("data") / PACK_VERSION)


def prepare_real_inputs() -> None:
    """Make the prepared inputs in the real cache if `make setup` has not (what `sfsd prepare` does)."""
    if all((REAL_CACHE / path).exists() for path in PREPARED):
        return
    from sfsd.data import ensure_pack
    from sfsd.models import resolve_model

    with cache_env(REAL_CACHE):
        resolve_model(DEFAULT_MODEL)
        ensure_pack()


def make_private_cache(root: Path) -> Path:
    """A cache at `root` whose only entries are links to the real cache's prepared, read-only inputs.

    The links are one level down (`models/<name>`, `data/<pack>`), so a model a test saves under `models/`
    or a pack it rebuilds under `data/` lands in `root`, never in the real cache."""
    for path in PREPARED:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).symlink_to(REAL_CACHE / path, target_is_directory=True)
    return root


@contextmanager
def cache_env(root: Path) -> Iterator[Path]:
    """$SFSD_CACHE_DIR set to `root` for the block (for fixtures wider than a test, which have no monkeypatch)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFSD_CACHE_DIR", str(root))
        yield root


# The held-out check every finished search makes (sfsd/search/heldout.py), on a smaller eval-split sample in the
# in-process tests: perplexity on the first 1,024 tokens (not 16,384), a task on its first 50 documents (not
# the whole split). The tiny models' 49,152-token head made it most of a tiny search's time (2,048 tokens: a
# third of it); what it computes and stores is the same. Processes a test starts (the CLI, the dashboard's
# background runs) keep the defaults.
SMALL_HELDOUT = dict(HELDOUT_TOKENS=1024, HELDOUT_DOCUMENTS=50)


@pytest.fixture(scope="session", autouse=True)
def small_heldout() -> Iterator[dict]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SMALL_HELDOUT.items():
            patch.setattr(f"sfsd.search.heldout.{name}", value)
        yield SMALL_HELDOUT


@pytest.fixture(scope="session", autouse=True)
def components_scanned_once() -> Iterator[None]:
    """Every AppTest scans the installed packages' metadata for Streamlit components (0.14 s here, about a
    minute over the suite's AppTests); the installed packages do not change during a session, so the scan's
    answer is reused. The pages still run with the components the scan found."""
    from streamlit.components.v2 import manifest_scanner

    found = manifest_scanner.scan_component_manifests()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(manifest_scanner, "scan_component_manifests", lambda max_workers=None: list(found))
        yield


@pytest.fixture(scope="session", autouse=True)
def session_cache(small_heldout, tmp_path_factory) -> Iterator[Path]:
    """The session-private cache: where module- and session-scoped fixtures compute (they run before any
    test's own cache is set)."""
    prepare_real_inputs()
    with cache_env(make_private_cache(tmp_path_factory.mktemp("session-cache"))) as root:
        yield root


@pytest.fixture(autouse=True)
def cache(session_cache, tmp_path_factory, monkeypatch) -> Path:
    """Every test's private cache root ($SFSD_CACHE_DIR): the prepared inputs linked, nothing derived."""
    root = make_private_cache(tmp_path_factory.mktemp("cache"))
    monkeypatch.setenv("SFSD_CACHE_DIR", str(root))
    return root


TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            pad_token_id=0, bos_token_id=1, eos_token_id=2)


def tiny_config(model_type: str):
    """A few-MB config of `model_type` with every decomposable role present."""
    from transformers import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    if model_type == "gpt2":
        return cls(vocab_size=256, n_embd=64, n_layer=3, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2)
    extra = {"head_dim": 16} if model_type.startswith("gemma") else {}
    if model_type == "gemma3_text":
        extra["sliding_window"] = 16
    return cls(**TINY, **extra)


def tiny_model(model_type: str, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type), dtype=torch.float32)
    # Random init gives near-zero biases and bland statistics; make them informative.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.normal_(0, 0.1)
    return model.eval()


def save_tiny_llama(folder, tokenizer_dir, num_layers: int):
    """A tiny random LLaMA with the real SmolLM2 tokenizer, saved like any Hugging Face model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**TINY, "vocab_size": 49152, "num_hidden_layers": num_layers})).save_pretrained(
        folder)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def default_model_dir(session_cache) -> str:
    """The converted default model in the real cache (read-only: a test that changes weights copies them)."""
    return str(REAL_CACHE / "models" / DEFAULT_MODEL)


@pytest.fixture(scope="session")
def frontier_store(tmp_path_factory, default_model_dir):
    """A store that a real tiny frontier wrote: uniform and spectrum at 0.8 and 0.6, SliceGPT at the same
    budgets (`--baselines slicegpt`), the base model, an evaluated Algorithm 1 search; eval perplexity at 32 and
    64 tokens and piqa on 12 documents."""
    root = make_private_cache(tmp_path_factory.mktemp("frontier-app") / "cache")
    model = save_tiny_llama(root.parent / "tiny-llama", default_model_dir, 3)
    with cache_env(root):
        from sfsd.compress import CalibrationSpec
        from sfsd.search import MetricSpec, SearchConfig, run_search
        from sfsd.search.frontier import evaluate_point, run_frontier

        base = SearchConfig(model=str(model), metric=MetricSpec(name="ppl", tolerance=0.05, samples=4, seq_len=32),
                            calibration=CalibrationSpec(source="wiki", samples=16,
                                                        seq_len=32), strategy="spectrum", target_budget=0.8)
        run_frontier(base, ["uniform", "spectrum"], [0.8, 0.6], seq_lens=(32, 64), ppl_tokens=2048, tasks=["piqa"],
                     limit=12, progress=False, say=lambda _: None, baselines=["slicegpt"])
        # A plain Algorithm 1 search (a tolerance, no target), evaluated the same way: a point of its own.
        alg1 = run_search(SearchConfig(model=str(model),
                                       metric=MetricSpec(name="ppl", tolerance=0.2, samples=4, seq_len=32),
                                       calibration=CalibrationSpec(source="wiki", samples=16,
                                                                   seq_len=32), first_block=2), progress=False)
        evaluate_point(alg1, (32, 64), 2048, ["piqa"], 12, progress=False)
    return {"root": str(root), "model": str(model)}


# ---- the dashboard: its pages with Streamlit's AppTest, its fixture store -----------------------------------

ROOT = Path(__file__).resolve().parents[1]
PAGES = {
    "runs": "pages/1_Runs.py", "heatmap": "pages/2_Budget_heatmap.py", "spectra": "pages/3_Spectra.py",
    "accuracy": "pages/4_Accuracy_vs_parameters.py", "table1": "pages/5_Weight_vs_feature.py",
    "disagreement": "pages/6_Disagreement.py", "bias": "pages/7_Bias.py", "report": "pages/8_Report.py",
    "frontier": "pages/9_Frontier.py",
}


def open_page(name: str | None = None, timeout: float = 90):
    """The app run once with Streamlit's AppTest, switched to page `name` (None: the start page)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    if name is not None:
        at.switch_page(PAGES[name])
    return at.run()


def no_exception(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


TINY_LLAMA = dict(vocab_size=49152, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=2)
UNIFORM = dict(beta=0.5, last_blocks=2, tasks=["piqa"], limit=5, ppl_seq_lens=[32], ppl_tokens=1024)


@pytest.fixture(scope="session")
def dashboard_store(tmp_path_factory, default_model_dir) -> dict:
    """The store the dashboard tests read (tests/test_app.py, test_browser.py, test_transfer.py), built once
    in a cache of its own: a tiny random LLaMA, two real searches (feature with task snapshots, weight),
    five real uniform runs (base, weight, feature, llm-pruner, slicegpt) and the feature search's saved model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sfsd.compress import CalibrationSpec

    root = make_private_cache(tmp_path_factory.mktemp("dashboard-store"))
    model = root / "tiny-llama"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**TINY_LLAMA)).save_pretrained(model)
    AutoTokenizer.from_pretrained(default_model_dir).save_pretrained(model)
    with cache_env(root):
        from sfsd.dashboard.jobs import materialize_run
        from sfsd.search import MetricSpec, SearchConfig, run_search
        from sfsd.search.uniform import UniformConfig, run_uniform

        calibration = CalibrationSpec(source="wiki", samples=16, seq_len=32)
        metric = MetricSpec(name="ppl", tolerance=0.0, samples=4, seq_len=32, batch_size=2)
        feature = run_search(SearchConfig(model=str(model), method="feature", metric=metric, calibration=calibration,
                                          snapshot_every=11, snapshot_tasks=["piqa"], snapshot_limit=4), progress=False)
        weight = run_search(SearchConfig(model=str(model), method="weight", metric=metric, calibration=calibration,
                                         first_block=1, snapshot_every=4), progress=False)
        uniform = {}
        # Table 1: the base model, the paper's rows, SliceGPT at the same parameters
        for method in ("none", "weight", "feature", "llm-pruner", "slicegpt"):
            config = UniformConfig(model=str(model), method=method, calibration=calibration, **UNIFORM)
            uniform[method] = run_uniform(config, progress=False).id
        saved = materialize_run(feature.id)
    return {"root": str(root), "model": str(model), "feature": feature.id, "weight": weight.id,
            "uniform": uniform, "saved": str(saved)}


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, dashboard_store) -> dict:
    """A session-private copy of the dashboard store that holds the session's one quick-demo run: the browser
    test starts it with a click and watches it progress; the demo's AppTest (marked `reuses_demo`, so that it
    runs last) then reads the same finished runs, or starts them itself when the browser test did not run."""
    import shutil

    root = tmp_path_factory.mktemp("demo") / "store"
    shutil.copytree(dashboard_store["root"], root, symlinks=True, ignore=shutil.ignore_patterns("lock"))
    return {**dashboard_store, "root": str(root)}


# The session-scoped stores that take a minute or more to build, and the test modules that read them. Under
# pytest-xdist (`make test`) these modules run one after another in one worker (`pytest_xdist_make_scheduler`), so
# each store is built once and the demo the browser test starts is the one the `reuses_demo` tests read; every
# other test goes to whichever worker is free. They are about 40% of the suite's time, so the other worker keeps
# busy. (xdist's own `--dist loadgroup` does not group under pytest 9: it renames `item._nodeid`, which pytest 9
# no longer reads.)
STORES = {"dashboard_store", "demo_store", "frontier_store"}
STORE_MODULES = {"test_app.py", "test_app_frontier.py", "test_browser.py", "test_store_states.py", "test_transfer.py"}


def pytest_collection_modifyitems(items: list) -> None:
    """Tests marked `reuses_demo` run after all others (in their order), i.e. after the browser's demo test.
    A test that reads a store outside STORE_MODULES is refused: under xdist it would build the store once more."""
    items.sort(key=lambda item: item.get_closest_marker("reuses_demo") is not None)
    for item in items:
        if STORES & set(getattr(item, "fixturenames", ())) and item.path.name not in STORE_MODULES:
            raise pytest.UsageError(f"{item.nodeid} reads a store: add {item.path.name} to STORE_MODULES "
                                    "in tests/conftest.py")


def pytest_xdist_make_scheduler(config, log):
    """Load scheduling with one work unit for all of STORE_MODULES (in collection order), one per other test."""
    from xdist.scheduler import LoadScopeScheduling

    if config.getvalue("dist") != "load":  # another --dist asked for on the command line
        return None

    class StoreModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return "stores" if nodeid.split("::")[0].rsplit("/", 1)[-1] in STORE_MODULES else nodeid

    return StoreModulesTogether(config, log)
