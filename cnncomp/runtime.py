"""What every backend's executable checks before it runs: the inputs match the graph."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cnncomp.errors import InputError
from cnncomp.ir import Graph


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the inputs as C-contiguous arrays, or raise InputError naming the input and what was expected."""
    expected = {node.name: node.type for node in graph.inputs}
    missing = [name for name in expected if name not in inputs]
    unknown = [name for name in inputs if name not in expected]
    if missing or unknown:
        problems = [f"missing input {name!r}" for name in missing] + [f"unknown input {name!r}" for name in unknown]
        raise InputError(f"{'; '.join(problems)}; model {graph.name!r} takes {', '.join(map(repr, expected))}")
    checked = {}
    for name, type_ in expected.items():
        value = inputs[name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r}: expected a numpy array, got {type(value).__name__}")
        if value.dtype != np.dtype(type_.dtype):
            raise InputError(f"input {name!r}: dtype {value.dtype}, expected {type_.dtype}")
        if value.shape != type_.shape:
            raise InputError(f"input {name!r}: shape {'x'.join(map(str, value.shape))}, expected {type_}")
        checked[name] = np.ascontiguousarray(value)
    return checked
