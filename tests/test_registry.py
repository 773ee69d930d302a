"""The one registry: lookup errors name the choices, order is registration order, and every list of methods,
allocations and metrics the dashboard shows is read from it."""

from __future__ import annotations

import pytest

from sfsd.decompose import METHODS
from sfsd.errors import SfsdError
from sfsd.registry import Registry
from sfsd.search import METRICS, STRATEGIES
from sfsd.search.allocation import ALLOCATIONS


def test_lookup_order_and_errors():
    colours = Registry("colour")
    colours.register("red", 1)
    colours.register("blue", 2)
    assert colours.get("blue") == colours["blue"] == 2
    assert list(colours) == colours.names() == ["red", "blue"] and len(colours) == 2 and "red" in colours
    with pytest.raises(SfsdError, match=r"^unknown colour 'green': choose one of red, blue$"):
        colours.get("green")
    with pytest.raises(ValueError, match="registered twice"):
        colours.register("red", 3)
    assert colours["red"] == 1


def test_every_registry_refuses_an_unknown_name_in_one_line():
    for registry, kind in ((METHODS, "method"), (STRATEGIES, "strategy"), (ALLOCATIONS, "allocation strategy"),
                           (METRICS, "metric")):
        with pytest.raises(SfsdError) as error:
            registry.get("nope")
        assert str(error.value) == f"unknown {kind} 'nope': choose one of {', '.join(registry.names())}"
    assert STRATEGIES.names() == ["linear", "bisect"]
    assert ALLOCATIONS.names() == ["uniform", "spectrum", "sensitivity", "refined", "alg1"]
    assert METRICS.names() == ["ppl", "task"]


def test_methods_carry_their_display_and_the_dashboard_reads_it():
    from sfsd.dashboard import data, frontier, plots

    colours = [method.color for method in METHODS.values()]
    assert len(set(colours)) == len(colours) and plots.METHOD_COLORS[plots.BASE] not in colours
    for name, method in METHODS.items():
        assert method.name == name and method.label and method.description
        assert plots.method_color(name) == method.color and plots.method_label(name) == method.label
        if method.structured:  # pruning: no spectrum, and the Spectra page says so
            assert not method.spectrum and name not in plots.SPECTRUM_NAMES and method.label in plots.NO_SPECTRUM
        else:
            assert method.spectrum and plots.spectrum_label(name) == method.spectrum
        assert frontier.METHOD_DASH.get(name) == method.dash
    assert data.UNIFORM_METHODS == (plots.BASE, *METHODS.names())  # Table 1: the base model, then every method
    for name, allocation in ALLOCATIONS.items():
        assert frontier.strategy_color(name) == allocation.color

