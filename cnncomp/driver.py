"""From a model description to a Graph (and, in later steps, to an executable)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncomp import plugins
from cnncomp.errors import ModelLoadError
from cnncomp.ir import Graph


def load_model(path: str | Path, batch: int | None = None, **params: Any) -> Graph:
    """Read a model file with the frontend registered for its suffix; optionally set the batch size."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file")
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    suffix = path.suffix.lstrip(".")
    if suffix not in plugins.available(plugins.FRONTENDS):
        known = ", ".join(f".{s}" for s in plugins.available(plugins.FRONTENDS))
        raise ModelLoadError(f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; cnncomp reads {known}")
    graph = plugins.frontend(suffix).load(path, **params)
    return graph if batch is None else graph.with_batch(batch)
