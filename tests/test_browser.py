"""The dashboard in a real browser: `streamlit run app.py` as a server, headless Chromium through Playwright.

Every page is opened against a copy of the dashboard's fixture store (conftest's `dashboard_store`) and must
render its Plotly charts with data, show no exception and no error or warning alert other than those its
allow-list expects (screenshots at 1400 px go to tests/artifacts/); the Frontier page on conftest's
`frontier_store` draws its charts and a click on a point opens that run's heatmap; the quick demo is started
with a click and its progress is watched until the search is done; an archive of runs is uploaded into an
empty dashboard and its heatmap opened; a read-only server shows no control that acts; a page URL opened
first on a fresh server shows Home first in the sidebar. Waits fail when they time out. Without Chromium the
tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import cache_env

pytestmark = pytest.mark.slow  # a streamlit server and Chromium per test module, the demo run in the browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
# page name -> (URL path, Plotly charts it must show once loaded)
PAGES = {
    "start": ("", 0), "runs": ("Runs", 0), "heatmap": ("Budget_heatmap", 2), "spectra": ("Spectra", 2),
    "accuracy": ("Accuracy_vs_parameters", 1), "table1": ("Weight_vs_feature", 2),
    "disagreement": ("Disagreement", 1), "bias": ("Bias", 1), "report": ("Report", 0), "frontier": ("Frontier", 0),
}
# pages whose figures appear after a button press: (input to shrink, its value, button label, charts afterwards)
PRESS = {"disagreement": ("Documents per task", "6", "Compare", 1),
         "bias": ("Examples per domain and sentence type", "2", "Score", 1)}
# pages whose accuracy chart is picked in a selectbox after loading: (its label, the option to pick)
SELECT = {"accuracy": ("y axis", "acc piqa (eval split, %)")}
# warning / error alerts a page may show on the fixture store (regular expressions); any other fails the page.
# The fixture's uniform runs score 5 piqa documents and the disagreement test compares 6: both pages must say
# that so few documents cannot carry a comparison.
ALLOWED_ALERTS = {
    "table1": [r"^piqa: only 5 documents \(fewer than 30\)"],
    "disagreement": [r"^piqa: only 6 documents \(fewer than 30\)"],
    # 2 StereoSet examples per domain and sentence type leave every domain thin
    "bias": [r"(^|\n)Read with care: (gender|profession|race|religion|overall) "],
}
REQUIRED_ALERTS = dict(ALLOWED_ALERTS)
ALERTS = "[data-testid='stAlertContentError'], [data-testid='stAlertContentWarning']"


def require_browser() -> None:
    """Skip without Chromium or Playwright, but fail under CI=true: CI must run these tests."""
    missing = None if Path(CHROMIUM).exists() else f"{CHROMIUM} is missing: apt-get install chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing = missing or "playwright is not installed: pip install playwright"
    if missing and os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the browser test cannot run: {missing}")
    if missing:
        pytest.skip(missing)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def store(demo_store):
    """conftest's `demo_store`, a private copy of the fixture store: the demo started here stays out of the other
    tests but the demo's AppTest, which reads its finished runs."""
    return demo_store


@contextmanager
def serve(root: str, model: str, **extra_env: str) -> Iterator[str]:
    """`streamlit run app.py` on a free port against the cache `root`; yields its URL."""
    require_browser()
    port = free_port()
    # One torch thread for the server and the runs it starts: they share the 2 cores with Chromium and this test,
    # where two OpenMP threads waiting on each other slow tiny-model runs down (the quick demo test, with the
    # held-out change too: 229 s -> 138 s, measured back to back on a shared machine, 2026-12-02).
    env = {**os.environ, "SFSD_CACHE_DIR": root, "SFSD_DEMO_MODEL": model, "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra_env}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = open(ARTIFACTS / f"server-{port}.log", "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"streamlit did not start: see {log.name}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def server(store):
    try:
        with serve(store["root"], store["model"]) as url:
            yield url
    finally:
        _stop_runs(store["root"])


def _stop_runs(root: str) -> None:
    """Kill a search the test launched that is still going (it runs detached from the server)."""
    from sfsd.runs import RunStore

    for row in RunStore(Path(root) / "runs").list_runs().itertuples():
        if row.state in ("pending", "running") and row.pid and row.pid > 0:
            try:
                os.killpg(int(row.pid), signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def browser():
    require_browser()
    from playwright import sync_api

    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A 1400 px page that fails its test if the dashboard fetched anything from outside this machine (the tool
    works offline: no usage statistics, fonts or scripts from the network)."""
    context = browser.new_context(viewport={"width": 1400, "height": 2400})
    page = context.new_page()
    outside = []
    page.on("request", lambda request: outside.append(request.url)
            if urlsplit(request.url).hostname not in (None, "", "127.0.0.1", "localhost") else None)
    yield page
    context.close()
    assert not outside, f"requests to other hosts: {outside[:5]}"


def settle(page, timeout_s: float = 90) -> None:
    """Wait until the script run is over (Streamlit's running indicator gone) and the title is drawn; fail
    if it is not over in `timeout_s`."""
    page.wait_for_selector("h1", timeout=timeout_s * 1000)
    deadline = time.monotonic() + timeout_s
    while page.locator("[data-testid='stStatusWidget']").count():
        if time.monotonic() > deadline:
            pytest.fail(f"{page.url}: the script was still running after {timeout_s:.0f} s")
        page.wait_for_timeout(100)
    page.wait_for_timeout(800)


# Plotly charts drawn with at least one trace with points (`_fullData`: the arrays Plotly decoded, also from
# the binary form in which Streamlit sends numpy arrays)
CHARTS_WITH_DATA = """() => {
    const size = a => a == null ? 0 : (a.length !== undefined ? a.length : (a.bdata || '').length);
    return [...document.querySelectorAll('.js-plotly-plot')].filter(plot => plot.querySelector('.main-svg')
        && (plot._fullData || []).some(trace => trace.visible !== false
            && ['x', 'y', 'z'].some(axis => size(trace[axis]) > 0))).length;
}"""


def wait_charts(page, count: int, timeout_s: float = 60) -> int:
    """Wait until `count` Plotly charts have drawn with data (a trace with points); fail on timeout.
    Returns how many charts with data there are."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    if count:
        try:
            page.wait_for_function(f"n => ({CHARTS_WITH_DATA})() >= n", arg=count, timeout=timeout_s * 1000)
        except PlaywrightTimeout:
            pytest.fail(f"{page.url}: {page.evaluate(CHARTS_WITH_DATA)} Plotly charts with data after "
                        f"{timeout_s:.0f} s, {count} expected")
    return page.evaluate(CHARTS_WITH_DATA)


def assert_home_first(page) -> None:
    """The sidebar's first entry is the Home page, named "Home" (not the script's name), whichever page's URL
    was opened."""
    first = page.locator("[data-testid='stSidebarNav'] a").first
    first.wait_for(timeout=30000)
    assert first.inner_text().strip().endswith("Home"), first.inner_text()


# an accuracy or proportion as the pages print it: value [95% interval], optionally (n=...)
WITH_INTERVAL = r"[-+]?\d+(\.\d+)? \[[-+]?\d+(\.\d+)?, [-+]?\d+(\.\d+)?\]( \(n=\d+\))?"


def table_csv(page, nth: int = 0):
    """The nth table of the page as its CSV download button gives it (the cells the dataframe shows)."""
    import pandas as pd

    with page.expect_download(timeout=60000) as download:
        page.get_by_role("button", name="Download CSV").nth(nth).click()
    return pd.read_csv(download.value.path(), dtype=str, keep_default_na=False)


def assert_intervals(frame, columns: list[str]) -> None:
    """Every cell of `columns` is a value with its 95% interval."""
    assert columns, list(frame.columns)
    for column in columns:
        bad = [cell for cell in frame[column] if not re.fullmatch(WITH_INTERVAL, cell)]
        assert not bad, f"{column}: cells without an interval: {bad}"


def raw_cells(page) -> list[str]:
    """Raw empty values printed as text on the page ("None", "<NA>", "nan" as whole words in cells or text)."""
    text = page.locator("[data-testid='stMain']").inner_text()
    return re.findall(r"(?<![\w-])(None|<NA>|NaN|nan)(?![\w-])", text)


def click_at(page, x: float, y: float) -> None:
    """Click a point of a Plotly chart as a user does: hover first (Plotly picks the point under the pointer
    on hover), then click; its drag layer sits above the markers, so locators cannot click them."""
    page.mouse.move(x, y)
    page.wait_for_timeout(300)
    page.mouse.click(x, y)


def assert_clean(page, allowed: list[str] = (), required: list[str] = ()) -> None:
    """No Streamlit exception, no error or warning alert other than the `allowed` patterns, and each
    `required` pattern shown."""
    exceptions = page.locator("[data-testid='stException']")
    assert exceptions.count() == 0, exceptions.all_inner_texts()
    alerts = [text.strip() for text in page.locator(ALERTS).all_inner_texts()]
    unexpected = [text for text in alerts if not any(re.search(pattern, text) for pattern in allowed)]
    assert not unexpected, f"unexpected alerts: {unexpected}"
    missing = [pattern for pattern in required if not any(re.search(pattern, text) for text in alerts)]
    assert not missing, f"expected alerts not shown: {missing}; alerts: {alerts}"


@pytest.mark.parametrize("name", list(PAGES))
def test_page_renders_its_charts(server, page, name):
    path, count = PAGES[name]
    allowed = ALLOWED_ALERTS.get(name, [])
    page.goto(f"{server}/{path}")
    settle(page)
    assert_clean(page, allowed)
    assert_home_first(page)
    if name in PRESS:
        field, value, label, count = PRESS[name]
        page.get_by_label(field, exact=True).fill(value)
        page.get_by_label(field, exact=True).press("Enter")
        settle(page)
        page.get_by_role("button", name=label).click()
        settle(page, 150)
    if name in SELECT:
        label, option = SELECT[name]
        page.get_by_label(label).click()
        page.get_by_role("option", name=option, exact=True).click()
        settle(page)
    assert wait_charts(page, count, 150 if name in PRESS else 60) >= count
    if name in SELECT:  # the accuracy curve: points with 95% error bars, majority-class and chance lines
        traces = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData.map(t => "
                               "[t.x.length, t.error_y && t.error_y.visible ? t.error_y.array.length : 0])")
        # a curve of at least two snapshots (the base model's star and uniform runs are single points)
        assert traces and max(points for points, _ in traces) >= 2, traces
        assert all(points == bars for points, bars in traces), traces
        assert page.locator(".js-plotly-plot").first.get_by_text("chance").count() == 1
    if name == "report":  # the preview iframe holds the report's own Plotly figures
        frame = page.frame_locator("iframe").first
        frame.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=60000)
        assert frame.locator("body").evaluate(CHARTS_WITH_DATA) > 0, "the report's figures have no data"
    assert_clean(page, allowed, REQUIRED_ALERTS.get(name, []))
    page.wait_for_timeout(500)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_clicking_a_heatmap_cell_opens_its_spectrum(server, page):
    page.goto(f"{server}/Budget_heatmap")
    settle(page)
    wait_charts(page, 2)
    title = page.locator(".js-plotly-plot").nth(1).locator(".gtitle")
    assert "self_attn.o_proj" not in title.text_content()
    x, y = page.evaluate("""() => {
        const plot = document.querySelectorAll('.js-plotly-plot')[0], box = plot.getBoundingClientRect();
        const xa = plot._fullLayout.xaxis, ya = plot._fullLayout.yaxis;
        return [box.left + xa._offset + xa.d2p('o'), box.top + ya._offset + ya.d2p(1)];
    }""")  # the cell of block 1, role o
    click_at(page, x, y)
    page.wait_for_function("() => (document.querySelectorAll('.js-plotly-plot')[1]?.querySelector('.gtitle')"
                           "?.textContent || '').includes('layers.1.self_attn.o_proj')", timeout=60000)
    settle(page)
    assert_clean(page)
    page.screenshot(path=str(ARTIFACTS / "heatmap-clicked.png"), full_page=True)


def test_frontier_page_draws_its_charts_and_a_click_opens_the_heatmap(frontier_store, page):
    with serve(frontier_store["root"], frontier_store["model"]) as url:
        page.goto(f"{url}/Frontier")
        settle(page)
        assert_clean(page)
        # frontier, accuracy with error bars, two heatmaps side by side
        assert wait_charts(page, 4) >= 4
        bars = page.evaluate("() => document.querySelectorAll('.js-plotly-plot')[1]._fullData"
                             ".map(t => t.error_y && t.error_y.visible ? t.error_y.array.length : 0)")
        assert bars and all(bars), bars
        # as drawn in the browser: every log-axis label reads its value (Plotly's own minor ticks read 400 as
        # "4"), and one base line, labelled, for the one perplexity protocol drawn
        axis = page.evaluate("() => { const l = document.querySelector('.js-plotly-plot')._fullLayout;"
                             " return {vals: l.yaxis.tickvals, text: l.yaxis.ticktext,"
                             " notes: (l.annotations || []).map(a => a.text)}; }")
        scale = {"k": 1e3, "M": 1e6}
        read = [float(t[:-1]) * scale[t[-1]] if t[-1] in scale else float(t) for t in axis["text"]]
        assert read == pytest.approx(axis["vals"]) and read, axis
        assert len([n for n in axis["notes"] if n.startswith("base model ")]) == 1, axis["notes"]
        page.screenshot(path=str(ARTIFACTS / "frontier.png"), full_page=True)
        box = page.locator(".js-plotly-plot").first.locator(".scatterlayer .points path").first.bounding_box()
        click_at(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the first marker
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               ".some(t => t.textContent.startsWith('clicked point'))", timeout=60000)
        settle(page)
        assert wait_charts(page, 5) >= 5
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "frontier-clicked.png"), full_page=True)


def test_quick_demo_starts_from_the_browser_and_progresses(server, page, store):
    from sfsd.dashboard import jobs
    from sfsd.runs import RunStore

    page.goto(server)
    settle(page)
    page.get_by_role("button", name="Start the quick demo search").click()
    page.get_by_text(re.compile(r"started run search-tiny-llama-feature-ppl")).wait_for(timeout=30000)
    seen: list[str] = []
    # the demo's two searches, then its uniform trio, one after the other in one background process
    ids = jobs.demo_run_ids(store["model"], 3)
    done = [page.get_by_text(re.compile(f"{run_id}: done")) for run_id in ids]
    deadline = time.monotonic() + 420
    shot = False
    while time.monotonic() < deadline:
        # read in one go: the panel redraws every 2 s and a bar may be gone a moment later
        for text in page.locator("[data-testid='stProgress']").all_inner_texts():
            if text and (not seen or seen[-1] != text):
                seen.append(text)
        if not shot and any(re.search(r"\d+/21 layers", t) for t in seen):
            page.mouse.move(0, 0)  # no tooltip of the button over the page
            page.screenshot(path=str(ARTIFACTS / "demo-progress.png"))
            shot = True
        if all(line.count() for line in done):
            break
        page.wait_for_timeout(700)
    assert all(line.count() for line in done), f"the demo did not finish in time; progress seen: {seen}"
    page.get_by_role("button", name="Cancel this run").wait_for(state="detached", timeout=30000)  # page refreshed
    # what it ran, how long it took (measured by its process), where to look next
    took = re.compile(r"The quick demo ran a feature-space search .* It took \d+m\d\ds \(search feature \d+m\d\ds")
    deadline = time.monotonic() + 30
    while not page.get_by_text(took).count() and time.monotonic() < deadline:  # the chain's record comes last
        page.reload()
        settle(page)
    page.get_by_text(took).wait_for(timeout=5000)
    settle(page)
    page.mouse.move(0, 0)  # no tooltip over the page
    page.wait_for_timeout(500)
    for link in ("Budget per layer: heatmap", "Spectra: feature vs weight", "Accuracy vs parameters",
                 "Table 1: feature vs weight at one budget"):
        assert page.get_by_role("link", name=link).count() >= 1, link
    page.screenshot(path=str(ARTIFACTS / "demo-done.png"), full_page=True)
    assert_clean(page)
    assert not raw_cells(page), raw_cells(page)
    assert seen, "no progress bar was shown while the demo ran"
    per_run: dict[str, list[int]] = {}  # layers decided, per run (the label before the colon)
    for text in seen:
        if match := re.search(r"(\d+)/21 layers", text):
            per_run.setdefault(text.split(":", 1)[0], []).append(int(match.group(1)))
    assert any("preparing" in t for t in seen) or per_run, seen
    assert all(layers == sorted(layers) for layers in per_run.values()), f"progress went backwards: {per_run}"
    runs = RunStore(Path(store["root"]) / "runs").list_runs()
    for method in ("feature", "weight"):  # the fixture's search and the demo's
        demo = runs[runs["run_id"].str.startswith(f"search-tiny-llama-{method}-ppl") & (runs["state"] == "done")]
        assert len(demo) == 2, method
    after_the_demo(server, page, ids, store["root"])


def after_the_demo(server: str, page, ids: list[str], root: str) -> None:
    """What the issue's Tests list, on the pages the finished demo links to: the heatmap has cells below 100%
    in 2+ blocks for each search, the accuracy chart at least two points per run, Table 1 perplexity as its
    first numeric columns and every accuracy with an interval; the Disagreement and Bias pages open Table 1's
    models without a manual save, with intervals on every accuracy. Screenshots: tests/artifacts/after-demo-*."""
    searches, uniform = ids[:2], ids[2:]
    page.goto(f"{server}/Budget_heatmap")
    settle(page)
    for run_id in searches:
        page.get_by_label("Run", exact=True).click()
        page.get_by_role("option", name=re.compile(run_id.rsplit("-", 1)[-1][:6])).click()
        settle(page)
        wait_charts(page, 2)
        page.wait_for_function("id => (document.querySelector('.js-plotly-plot .gtitle')?.textContent || '')"
                               ".includes(id)", arg=run_id.rsplit("-", 1)[-1][:6], timeout=30000)
        settle(page)  # the spectrum under it follows the picked run
        z = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData[0].z")
        blocks = sum(any(v is not None and v < 100 for v in row) for row in z)
        assert blocks >= 2, (run_id, z)
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / f"after-demo-heatmap-{run_id.split('-')[3]}.png"), full_page=True)

    page.goto(f"{server}/Accuracy_vs_parameters")
    settle(page)
    page.get_by_label("y axis").click()
    page.get_by_role("option", name="acc piqa (eval split, %)", exact=True).click()
    settle(page)
    wait_charts(page, 1)
    traces = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData.map(t => "
                           "[t.name, t.mode, t.x.length])")
    curves = [t for t in traces if t[1] == "lines+markers"]
    assert len(curves) >= 2 and all(points >= 2 for _, _, points in curves), traces
    assert_clean(page)
    page.screenshot(path=str(ARTIFACTS / "after-demo-accuracy.png"), full_page=True)

    page.goto(f"{server}/Weight_vs_feature")
    settle(page)
    wait_charts(page, 2)
    table = table_csv(page)
    assert list(table["method"]) == ["base", "weight", "feature"], table
    numeric = [c for c in table.columns if c not in ("method", "state")]
    assert numeric[0].startswith("ppl"), numeric  # perplexity leads
    assert_intervals(table, [c for c in table.columns if "acc" in c])
    assert_clean(page, [r"^piqa: only 20 documents \(fewer than 30\)", r"^ppl@128: perplexity above 10x"])
    page.screenshot(path=str(ARTIFACTS / "after-demo-table1.png"), full_page=True)

    feature = next(run_id for run_id in uniform if "-feature-" in run_id)
    page.goto(f"{server}/Disagreement")
    settle(page)
    page.get_by_label("Model B (compared)").click()
    page.get_by_role("option", name=re.compile(r"^Table 1: feature, beta 0.46, last 3 blocks")).click()
    settle(page)
    page.get_by_label("Documents per task", exact=True).fill("20")
    page.get_by_label("Documents per task", exact=True).press("Enter")
    settle(page)
    page.get_by_role("button", name="Compare").click()
    settle(page, 150)
    wait_charts(page, 1, 150)
    table = table_csv(page)
    assert_intervals(table, [c for c in table.columns if c.startswith(("acc", "disagreement", "delta"))])
    assert_clean(page, [r"^piqa: only 20 documents \(fewer than 30\)"])
    assert (Path(root) / "models" / feature / "config.json").exists()  # saved on demand
    page.screenshot(path=str(ARTIFACTS / "after-demo-disagreement.png"), full_page=True)

    page.goto(f"{server}/Bias")
    settle(page)
    page.get_by_label("Examples per domain and sentence type", exact=True).fill("2")
    page.get_by_label("Examples per domain and sentence type", exact=True).press("Enter")
    settle(page)
    page.get_by_role("button", name="Score").click()
    settle(page, 150)
    wait_charts(page, 1, 150)
    table = table_csv(page)
    assert any("Table 1: " in model for model in table["model"]), table
    scored = table[table["n"].astype(int) > 0]  # a cell without examples reads "—" and is named in the warning
    assert_intervals(scored, ["LMS", "SS", "ICAT"])
    assert_clean(page, ALLOWED_ALERTS["bias"])
    page.screenshot(path=str(ARTIFACTS / "after-demo-bias.png"), full_page=True)

    # the pages the demo's summary does not link to open clean on its runs too; the Frontier has the demo's
    # searches as Algorithm 1 points (it was empty after the demo)
    page.goto(f"{server}/Frontier")
    settle(page)
    wait_charts(page, 1)
    names = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData.map(t => t.name)")
    assert {"Algorithm 1 (feature)", "Algorithm 1 (weight)"} <= set(names), names
    assert_clean(page)
    assert not raw_cells(page), raw_cells(page)
    page.screenshot(path=str(ARTIFACTS / "after-demo-frontier.png"), full_page=True)
    for path in ("Runs", "Spectra", "Report"):
        page.goto(f"{server}/{path}")
        settle(page)
        assert_clean(page, [r"looks broken: perplexity"])  # the demo's weight-space Table 1 row (149x)
        assert not raw_cells(page), (path, raw_cells(page))


# ---- a page URL opened first on a fresh server -----------------------------------------------------------

# (URL path opened first, the title it must show): a page near the top of the sidebar, the last one, and an
# unknown URL (Streamlit's "Page not found", then Home)
FIRST_LOADS = [("Budget_heatmap", "Budget heatmap"), ("Frontier", "Budget-quality frontier"),
               ("no-such-page", "sfsd: Surgical Feature-Space Decomposition")]


@pytest.mark.parametrize(("path", "title"), FIRST_LOADS, ids=[path for path, _ in FIRST_LOADS])
def test_a_page_url_opened_first_on_a_fresh_server_shows_home_first(page, tmp_path, path, title):
    """The pages live in pages/ beside app.py, which Streamlit handles as a legacy multipage folder until a
    session calls st.navigation: a page URL that is the first request of a fresh server must still show the
    page under app.py's navigation, "Home" first in the sidebar, and no "Page not found" for a known page.
    Each URL is the first request of its own server, with an empty cache and no model (Home warns that it
    cannot read it instead of converting one): only the navigation is under test."""
    assert (ROOT / "pages").is_dir() and not (ROOT / "views").exists()
    (tmp_path / "cache").mkdir()
    with serve(str(tmp_path / "cache"), str(tmp_path / "no-model")) as url:
        page.goto(f"{url}/{path}")
        settle(page)
        assert_home_first(page)
        assert page.locator("h1").first.inner_text().strip() == title
        assert page.title() == f"sfsd · {title}"
        dialogs = [text for text in page.locator("[role='dialog']").all_inner_texts() if text.strip()]
        if path == "no-such-page":
            assert len(dialogs) == 1 and dialogs[0].startswith("Page not found"), dialogs
        else:
            assert not dialogs, dialogs
        assert page.locator("[data-testid='stException']").count() == 0
        assert page.get_by_role("button", name="Deploy").count() == 0  # .streamlit/config.toml: viewer toolbar
        page.screenshot(path=str(ARTIFACTS / f"first-load-{path}.png"))


# ---- runs that travel, read-only mode -------------------------------------------------------------------


def test_an_uploaded_archive_opens_in_the_heatmap(store, page, tmp_path):
    from sfsd.runs.transfer import export_archive

    archive = tmp_path / "runs.zip"
    with cache_env(Path(store["root"])):
        export_archive([store["feature"]], archive)
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    with serve(str(empty), store["model"]) as url:
        page.goto(f"{url}/Runs")
        settle(page)
        page.locator("input[type='file']").set_input_files(str(archive))
        page.get_by_role("button", name="Import", exact=True).wait_for(timeout=30000)
        page.get_by_role("button", name="Import", exact=True).click()
        page.get_by_text(re.compile(f"imported run {store['feature']}")).wait_for(timeout=60000)
        settle(page)
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "import-uploaded.png"), full_page=True)
        page.goto(f"{url}/Budget_heatmap")
        settle(page)
        assert wait_charts(page, 2) >= 2
        page.get_by_text(re.compile("imported from .+ on 20")).first.wait_for(timeout=30000)
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "import-heatmap.png"), full_page=True)
    assert (empty / "runs" / store["feature"] / "imported.json").exists()


def test_read_only_server_shows_no_control_that_acts(store, page, tmp_path):
    from sfsd.runs.transfer import check_archive

    with serve(store["root"], store["model"], SFSD_READONLY="1") as url:
        page.goto(url)
        settle(page)
        page.get_by_text("Read-only presenting mode").first.wait_for(timeout=30000)
        assert page.get_by_role("button", name="Start the quick demo search").count() == 0
        assert store["root"] not in page.content()
        page.screenshot(path=str(ARTIFACTS / "readonly-start.png"), full_page=True)
        page.goto(f"{url}/Runs")
        settle(page)
        page.get_by_text("Move runs between machines").click()
        settle(page)
        for name in ("Start search", "Delete run", "Cancel run", "Save its model (materialize)", "Import"):
            assert page.get_by_role("button", name=name, exact=True).count() == 0, name
        assert page.locator("input[type='file']").count() == 0
        assert page.get_by_text("Start a search").count() == 0
        with page.expect_download(timeout=60000) as download:  # exporting only reads: allowed
            page.get_by_role("button", name="Download the archive").click()
        saved = tmp_path / "downloaded.zip"
        download.value.save_as(saved)
        with zipfile.ZipFile(saved) as archive:
            plan = check_archive(archive)  # the same checks an import makes
        assert len(plan.runs) == 1
        assert store["root"] not in page.content()
        page.screenshot(path=str(ARTIFACTS / "readonly-runs.png"), full_page=True)
        page.goto(f"{url}/Budget_heatmap")
        settle(page)
        assert wait_charts(page, 2) >= 2
        assert_clean(page)
