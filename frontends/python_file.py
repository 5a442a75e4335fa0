"""The Python-file frontend: a `.py` model description defines `build(**params)` returning a Graph.

The file is the user's own program and runs as one (unlike artifacts, which never execute code).
"""

from __future__ import annotations

import inspect
import runpy
from pathlib import Path
from typing import Any

from cnncomp.errors import CnnCompError, ModelLoadError
from cnncomp.ir import Graph


def load(path: str | Path, **params: Any) -> Graph:
    path = Path(path)
    try:
        namespace = runpy.run_path(str(path), run_name="cnncomp_model")
    except CnnCompError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    build = namespace.get("build")
    if not callable(build):
        raise ModelLoadError(f"{path}: defines no build() function returning a graph")
    accepted = inspect.signature(build).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [key for key in params if key not in accepted and not takes_any]
    if unknown:
        names = ", ".join(accepted) or "none"
        raise ModelLoadError(f"{path}: build() has no parameter {unknown[0]!r} (parameters: {names})")
    try:
        graph = build(**params)
    except CnnCompError as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    if not isinstance(graph, Graph):
        raise ModelLoadError(f"{path}: build() returned {type(graph).__name__}, expected a cnncomp Graph")
    return graph
