"""Backends, frontends and exporters by name, through entry points, imported only when asked for.

Ours register like a third party's would (see pyproject.toml), so the core never imports them.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from types import ModuleType

from cnncomp.errors import CnnCompError

BACKENDS = "cnncomp.backends"
FRONTENDS = "cnncomp.frontends"
EXPORTERS = "cnncomp.exporters"


def available(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def load_plugin(group: str, name: str) -> ModuleType:
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        kind = {BACKENDS: "backend", FRONTENDS: "model format", EXPORTERS: "export format"}[group]
        known = ", ".join(available(group)) or "none (is cnncomp installed with pip?)"
        raise CnnCompError(f"unknown {kind} {name!r}; available: {known}")
    return matches[0].load()


def backend(name: str) -> ModuleType:
    """The module of a backend; it has `compile(graph, options) -> Executable`."""
    return load_plugin(BACKENDS, name)


def frontend(suffix: str) -> ModuleType:
    """The module reading files with this suffix (no dot); it has `load(path, **params) -> Graph`."""
    return load_plugin(FRONTENDS, suffix)


def exporter(suffix: str) -> ModuleType:
    """The module writing files with this suffix (no dot); it has `export(graph, path)`."""
    return load_plugin(EXPORTERS, suffix)
