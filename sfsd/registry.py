"""One small registry for every kind of named choice: decomposition methods, per-layer search strategies,
target-budget allocations and search metrics.

An entry is registered once, by name, next to its code; the CLI's choices, the config checks and the
dashboard's lists, legends and colours are all read from the registry, so adding a choice touches one module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from sfsd.errors import SfsdError

Entry = TypeVar("Entry")

# every registry by its kind, so that the option declarations (sfsd.options, below every registry) can offer a
# registry's names as choices without importing the module that fills it
BY_KIND: dict[str, Registry] = {}


def names_of(kind: str, where: Callable[[Any], bool] | None = None) -> list[str]:
    """The names registered under `kind` (those whose entry passes `where`, if given); the module that fills
    it must have been imported."""
    if kind not in BY_KIND:
        raise LookupError(f"no {kind} registry is loaded yet: import the module that defines it first")
    return [name for name, entry in BY_KIND[kind].items() if where is None or where(entry)]


class Registry(Generic[Entry]):
    """Names to entries, in registration order. `kind` names the choice in error messages ("method")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        BY_KIND[kind] = self

    def register(self, name: str, entry: Entry) -> Entry:
        if name in self._entries:  # two entries of one name: the later would silently replace the earlier
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        """The entry of `name`; SfsdError naming the choices when there is none."""
        if name not in self._entries:
            raise SfsdError(f"unknown {self.kind} {name!r}: choose one of {', '.join(self._entries)}")
        return self._entries[name]

    __getitem__ = get

    def names(self) -> list[str]:
        return list(self._entries)

    def items(self) -> list[tuple[str, Entry]]:
        return list(self._entries.items())

    def values(self) -> list[Entry]:
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
