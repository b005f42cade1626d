"""Name tables for backbones and temporal heads, and the `dfbatch.models` entry-point group.

`backbones.py` and `heads.py` each hold one `Registry`; their decorators add entries. An installed package
adds its own by declaring an entry point in the `dfbatch.models` group that names a module with decorated
functions (pyproject.toml: `[project.entry-points."dfbatch.models"] mine = "mypkg.dfbatch_models"`). Those
modules are imported on the first lookup of a name not registered here, or when the names are listed, in
every process (CLI, Ray workers), so `dfbatch train --backbone mine` works like a built-in name.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from dfbatch.errors import UserError, one_line

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dfbatch.models"
E = TypeVar("E")

_loaded = False
_failures: list[str] = []  # "plugin NAME: error" for entry points that did not load


def load_plugins() -> None:
    """Import every module named in the `dfbatch.models` entry-point group (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as exc:  # a broken plugin must not hide the built-in names
            _failures.append(f"plugin {ep.name} ({ep.value}) failed to load: {one_line(exc)}")
            log.warning(_failures[-1])


class Registry(Generic[E]):
    """name -> entry, filled by a decorator; `lookup` raises a one-line UserError naming the choices.
    Iterating gives the names (built-in first, then plugins')."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, E] = {}

    def add(self, name: str, entry: E) -> None:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def lookup(self, name: str) -> E:
        """The entry registered as `name` (plugins are loaded on a miss); UserError if there is none."""
        if name not in self._entries:
            load_plugins()
        if name not in self._entries:
            extra = "".join(f"; {f}" for f in _failures)
            raise UserError(f"unknown {self.kind} {name!r}; choose one of {', '.join(self)}{extra}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        if name not in self._entries:
            load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        load_plugins()
        return len(self._entries)

    def entries(self) -> list[E]:
        return [self._entries[name] for name in self]

    def field(self, attr: str) -> Mapping[str, Any]:
        """A live read-only view name -> getattr(entry, attr) (e.g. every backbone's feature width)."""
        return _FieldView(self, attr)


class _FieldView(Mapping[str, Any]):
    def __init__(self, registry: Registry, attr: str):
        self._registry, self._attr = registry, attr

    def __getitem__(self, name: str) -> Any:
        if name not in self._registry:
            raise KeyError(name)
        return getattr(self._registry.lookup(name), self._attr)

    def __iter__(self) -> Iterator[str]:
        return iter(self._registry)

    def __len__(self) -> int:
        return len(self._registry)

    def __repr__(self) -> str:
        return repr(dict(self))
