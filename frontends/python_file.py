"""The Python-file frontend: a `.py` model description defines `build(**params)` returning a Graph.

The file is the user's own program and runs as one (unlike artifacts, which never execute code). Its mistakes are
reported as `FILE:LINE: message` at the line of that file the error came from, with the builder methods a
misspelt one may have meant, as the `.cnn` language reports its own.
"""

from __future__ import annotations

import difflib
import inspect
import runpy
from pathlib import Path
from types import TracebackType
from typing import Any

from cnncomp.errors import CnnCompError, ModelLoadError
from cnncomp.ir import Graph


def load(path: str | Path, **params: Any) -> Graph:
    path = Path(path)
    try:
        namespace = runpy.run_path(str(path), run_name="cnncomp_model")
    except Exception as exc:  # the user's program failed: say where in it, not where in cnncomp
        raise ModelLoadError(_where(path, exc)) from exc
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
    except Exception as exc:
        raise ModelLoadError(_where(path, exc)) from exc
    if not isinstance(graph, Graph):
        raise ModelLoadError(f"{path}: build() returned {type(graph).__name__}, expected a cnncomp Graph")
    return graph


def _where(path: Path, exc: Exception) -> str:
    """`FILE:LINE: message` for an error raised while the model file ran, at its deepest line in that file."""
    line = _last_line_in(path, exc.__traceback__)
    if isinstance(exc, SyntaxError) and exc.lineno is not None and Path(exc.filename or "") == path:
        line = exc.lineno
    location = f"{path}:{line}" if line is not None else str(path)
    return f"{location}: {_message(exc)}"


def _last_line_in(path: Path, traceback: TracebackType | None) -> int | None:
    line = None
    target = path.resolve()
    while traceback is not None:
        if Path(traceback.tb_frame.f_code.co_filename).resolve() == target:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def _message(exc: Exception) -> str:
    if isinstance(exc, CnnCompError):
        return str(exc)
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg}"
    if isinstance(exc, AttributeError) and exc.name is not None and exc.obj is not None:
        kind = type(exc.obj).__name__
        candidates = [name for name in dir(exc.obj) if not name.startswith("_")]
        close = difflib.get_close_matches(exc.name, candidates, n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return f"{kind} has no attribute or method {exc.name!r}{hint}"
    signature = _builder_signature(exc) if isinstance(exc, TypeError) else None
    if signature is not None:
        return f"{exc} ({signature})"
    return f"{type(exc).__name__}: {exc}"


def _builder_signature(exc: TypeError) -> str | None:
    """For a builder method called with the wrong arguments, its signature: `conv(out_channels, kernel, ...)`."""
    from frontends.builder import Builder, Value

    text = str(exc)
    for owner in (Value, Builder):
        prefix = f"{owner.__name__}."
        if text.startswith(prefix):
            name = text[len(prefix):].split("(", 1)[0]
            method = getattr(owner, name, None)
            if callable(method):
                shown = [p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                         for p in inspect.signature(method).parameters.values()
                         if p.name not in ("self", "name", "weights") and p.kind is not p.VAR_KEYWORD]
                return f"{name}({', '.join(shown)})"
    return None
