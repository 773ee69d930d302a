"""`run_search`, the one entry to a search: a config with a target budget runs an allocation strategy
(`sfsd.search.targeted`), any other config Algorithm 1 (`sfsd.search.surgical`).

It lives above both because the allocations build on the per-layer search (alg1 runs it), so the
per-layer search must not import them.
"""

from __future__ import annotations

from pathlib import Path

from sfsd.runs import Run
from sfsd.search.config import SearchConfig
from sfsd.search.surgical import check_search_request, run_layer_search
from sfsd.search.targeted import run_allocation


def run_search(config: SearchConfig, root: Path | None = None, device: str | None = None,
               progress: bool = True, stop_at_budget: float | None = None) -> Run:
    """Run (or resume, or simply return a finished) search; the run's id is derived from `config`.

    `stop_at_budget` stops an Algorithm 1 search (state cancelled, resumable) once its overall budget is at
    or below it (see `run_layer_search`); an allocation ignores it."""
    check_search_request(config, device)
    if config.target_budget is not None:
        return run_allocation(config, root, device, progress)
    return run_layer_search(config, root, device, progress, stop_at_budget)
