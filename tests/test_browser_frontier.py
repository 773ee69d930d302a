"""The Frontier page in a real browser (headless Chromium), on the store a real tiny frontier wrote: its
charts draw with data, nothing errs, and clicking a point opens that run's budget heatmap."""

from __future__ import annotations

from test_browser import ARTIFACTS, assert_clean, browser, click_at, page, serve, settle, wait_charts

__all__ = ["browser", "page"]  # fixtures shared with test_browser


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
        page.screenshot(path=str(ARTIFACTS / "frontier.png"), full_page=True)
        box = page.locator(".js-plotly-plot").first.locator(".scatterlayer .points path").first.bounding_box()
        click_at(page, box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # the first marker
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               ".some(t => t.textContent.startsWith('clicked point'))", timeout=60000)
        settle(page)
        assert wait_charts(page, 5) >= 5
        assert_clean(page)
        page.screenshot(path=str(ARTIFACTS / "frontier-clicked.png"), full_page=True)
