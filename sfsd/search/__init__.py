"""The surgical rank search (Algorithm 1): metrics, strategies, prefix replay and the resumable driver."""

from sfsd.search.config import SearchConfig
from sfsd.search.entry import run_search
from sfsd.search.metrics import METRICS, MetricSpec, SearchMetric, register_metric
from sfsd.search.strategies import STRATEGIES
from sfsd.search.surgical import SurgicalSearch, create_run, materialize, search_layers

__all__ = [
    "METRICS",
    "STRATEGIES",
    "MetricSpec",
    "SearchConfig",
    "SearchMetric",
    "SurgicalSearch",
    "create_run",
    "materialize",
    "register_metric",
    "run_search",
    "search_layers",
]
