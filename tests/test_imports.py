"""The import graph of sfsd, read from the source with `ast` (module-level imports and those inside functions
alike): no cycle among sfsd's modules, the run store does not import the search, the dashboard does not
import the CLI.

An edge goes to the module an import names: `from sfsd.runs import Run` is an edge to the package
`sfsd.runs` (its __init__), `from sfsd.search import surgical` one to `sfsd.search.surgical`. Parent
packages that Python runs on the way are not edges, or every package would form a cycle with its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import sfsd

ROOT = Path(sfsd.__file__).parent


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imported_modules(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """The sfsd modules that the source of module `name` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the package of `name`, one level up per extra dot
                package = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found |= {f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names}
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imported_modules(name, path.read_text(), path.name == "__init__.py", set(files))
            for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def imports_between(graph: dict[str, set[str]], importer: str, imported: str) -> list[str]:
    """'a -> b' for every edge from the package `importer` (or its modules) into `imported` (or its modules)."""
    def inside(module: str, package: str) -> bool:
        return module == package or module.startswith(package + ".")

    return sorted(f"{source} -> {target}" for source, targets in graph.items() if inside(source, importer)
                  for target in targets if inside(target, imported))


def test_the_reader_sees_imports_inside_functions_and_relative_ones():
    source = ("import sfsd.runs\nfrom . import frames\n"
              "def later():\n    from sfsd.search import surgical\n    from sfsd.search import run_search\n")
    known = {"sfsd.runs", "sfsd.runs.run", "sfsd.runs.frames", "sfsd.search", "sfsd.search.surgical"}
    assert imported_modules("sfsd.runs.run", source, False, known) == {
        "sfsd.runs", "sfsd.runs.frames", "sfsd.search.surgical", "sfsd.search"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_among_sfsd_modules():
    graph = import_graph()
    assert len(graph) > 50 and graph["sfsd.search.surgical"]  # the whole package was read
    assert cycles(graph) == []


def test_the_run_store_does_not_import_the_search():
    assert imports_between(import_graph(), "sfsd.runs", "sfsd.search") == []


def test_the_dashboard_does_not_import_the_cli():
    assert imports_between(import_graph(), "sfsd.dashboard", "sfsd.cli") == []
