"""From a model description to a Graph: `load_model` (which `cnncomp.load_model` is), the zoos."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from cnncomp import plugins
from cnncomp.errors import ModelLoadError
from cnncomp.ir import Graph

# Model zoos register under this entry-point group: modules with names(), describe(name) and
# load(name, structure_only, **params).
ZOOS = "cnncomp.zoos"


def load_model(path: str | Path, batch: int | None = None, *, weights: str | Path | None = None,
               structure_only: bool = False, input_shapes: Mapping[str, Sequence[int]] | None = None,
               strict: bool = False, **params: Any) -> Graph:
    """Read a model file with the frontend registered for its suffix, or a zoo model by name (a file that exists
    wins); optionally set the batch size. `params` set the model's parameters; `weights` loads an `.npz` of
    parameters keyed `node.param` (such as a PyTorch state dict's names) over them. `structure_only` asks for the
    graph without weights where the frontend can skip them (its `load_structure`), for summaries and listings:
    drawing VGG-16's 138M random weights takes seconds. `input_shapes` ({input: full shape}) sets input shapes:
    a frontend whose `load` takes `input_shapes` reads them (an ONNX model needs them for symbolic dimensions
    before it converts); other graphs are re-inferred at them. `batch`, if given, applies after them. `strict`
    refuses a window whose output size is a fraction (the lecture's "fractions are illegal"): a frontend whose
    `load` takes `strict` reports it at the line of the description; other graphs are checked again, node by
    node."""
    graph = _loaded(Path(path), batch, structure_only, input_shapes, strict, params)
    if weights is not None:
        if not Path(weights).is_file():
            raise ModelLoadError(f"{weights}: no such weights file")
        graph.load_params(weights)
    return graph


def _loaded(path: Path, batch: int | None, structure_only: bool, input_shapes: Mapping[str, Sequence[int]] | None,
            strict: bool, params: dict[str, Any]) -> Graph:
    if not path.exists():
        zoo = _zoo_with(str(path))
        if zoo is None:
            raise ModelLoadError(_not_found(path))
        graph = zoo.load(str(path), structure_only=structure_only, **_strictly(zoo.load, strict), **params)
        return _reshaped(graph, batch, input_shapes, strict)
    if not path.is_file():
        raise ModelLoadError(f"{path}: not a file")
    suffix = path.suffix.lstrip(".")
    if suffix not in plugins.available(plugins.FRONTENDS):
        known = ", ".join(f".{s}" for s in plugins.available(plugins.FRONTENDS))
        raise ModelLoadError(f"{path}: unknown model format {path.suffix or '(no suffix)'!r}; cnncomp reads {known}")
    frontend = plugins.frontend(suffix)
    load = getattr(frontend, "load_structure", frontend.load) if structure_only else frontend.load
    options = _strictly(load, strict)
    if input_shapes and "input_shapes" in inspect.signature(load).parameters:
        return _reshaped(load(path, input_shapes=input_shapes, **options, **params), batch, None, strict)
    return _reshaped(load(path, **options, **params), batch, input_shapes, strict)


def _strictly(load: Any, strict: bool) -> dict[str, bool]:
    return {"strict": True} if strict and "strict" in inspect.signature(load).parameters else {}


def _reshaped(graph: Graph, batch: int | None, input_shapes: Mapping[str, Sequence[int]] | None,
              strict: bool) -> Graph:
    if strict and not graph.strict:
        graph = graph.as_strict()
    if input_shapes:
        graph = graph.with_input_shapes({name: tuple(shape) for name, shape in input_shapes.items()})
    return graph if batch is None else graph.with_batch(batch)


def zoo_models() -> dict[str, str]:
    """Every model of the installed zoos by name, with its one-line description."""
    models: dict[str, str] = {}
    for zoo in _zoos():
        for name in zoo.names():
            models.setdefault(name, zoo.describe(name))
    return models


def _zoos() -> list[ModuleType]:
    return [plugins.load_plugin(ZOOS, name) for name in plugins.available(ZOOS)]


def _zoo_with(name: str) -> ModuleType | None:
    return next((zoo for zoo in _zoos() if name in zoo.names()), None)


def _not_found(path: Path) -> str:
    if path.suffix or len(path.parts) > 1:
        return f"{path}: no such file"
    close = difflib.get_close_matches(str(path), list(zoo_models()), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `cnncomp zoo` lists the zoo models"
    return f"{path}: no such file or zoo model{hint}"
