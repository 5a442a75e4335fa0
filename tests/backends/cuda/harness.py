"""What the CUDA backend's tests share: one-op graphs with random parameters, and runs checked against the numpy
reference backend."""

from __future__ import annotations

import numpy as np

import backends.numba_cuda as numba_cuda
from backends import reference
from cnncomp.ir import Graph
from frontends.builder import initialize_params
from tests import models
from tests.helpers import one_op_graph, random

ATOL = RTOL = 1e-4


def op_graph(op: str, shapes: list[tuple[int, ...]], attrs: dict | None = None, seed: int = 0) -> Graph:
    """A one-op graph (inputs x0, x1, ...; output y) with random parameters."""
    graph = one_op_graph(op, shapes, attrs)
    initialize_params(graph)
    return models.randomize(graph, seed)


def random_inputs(graph: Graph, seed: int = 1) -> dict[str, np.ndarray]:
    return {node.name: random(node.shape, seed + i) for i, node in enumerate(graph.inputs)}


def assert_same_as_reference(graph: Graph, atol: float = ATOL, rtol: float = RTOL,
                             inputs: dict[str, np.ndarray] | None = None) -> numba_cuda.CudaExecutable:
    executable = numba_cuda.compile(graph)
    inputs = inputs or random_inputs(graph)
    expected = reference.run(graph, inputs)
    actual = executable(inputs)
    assert set(actual) == set(graph.outputs)
    for name in graph.outputs:
        assert actual[name].shape == expected[name].shape, name
        assert actual[name].dtype == expected[name].dtype, name
        np.testing.assert_allclose(actual[name], expected[name], atol=atol, rtol=rtol, err_msg=name)
    return executable
