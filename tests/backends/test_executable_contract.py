"""Every CPU backend keeps the executable contract (`cnncomp.runtime.Executable`), thread safety included.

numba-cuda is checked the same way in tests/backends/cuda.
"""

from __future__ import annotations

import numpy as np
import pytest

import cnncomp
from cnncomp import plugins
from cnncomp.ir import Graph
from tests import models
from tests.backends.contract import (
    check_concurrent,
    check_contract,
    check_profile,
    check_variant_compiled_during_calls,
)
from tests.helpers import random_inputs

BACKENDS = ["reference", "torch", "onnxruntime", "numba-cpu"]
OPTIONS = {"numba-cpu": {"progress": False}}
# Backends that interpret the graph node by node: their profile has exactly one row per node.
INTERPRETERS = ["reference", "torch"]


def lenet5() -> Graph:
    return cnncomp.load_model("lenet5")


BUILDERS = [models.basic_block, models.inception_module, models.unet_level, models.mbconv, models.separable_stack,
            lenet5]


@pytest.mark.parametrize("build", BUILDERS, ids=lambda build: build.__name__)
@pytest.mark.parametrize("backend", BACKENDS)
def test_contract(backend, build):
    graph = build()
    for opt_level in (0, 3):
        model = cnncomp.compile(graph, backend=backend, opt_level=opt_level, options=OPTIONS.get(backend))
        check_contract(model.executable, model.graph)
    executable = plugins.backend(backend).compile(graph, OPTIONS.get(backend))
    check_contract(executable, graph)
    if backend in INTERPRETERS:
        rows = executable.profile(random_inputs(graph))
        assert [row["node"] for row in rows] == [node.name for node in graph.nodes if node.op != "input"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls_of_several_models(backend):
    """Four threads call the executables of several models, each on inputs of its own, at once."""
    cases = []
    for seed, build in enumerate(BUILDERS):
        graph = build()
        model = cnncomp.compile(graph, backend=backend, opt_level=2, options=OPTIONS.get(backend))
        executable = plugins.backend(backend).compile(graph, OPTIONS.get(backend))
        cases.append((model.run, [random_inputs(model.graph, 10 * seed + i) for i in range(2)]))
        cases.append((executable, [random_inputs(graph, 10 * seed + i) for i in range(2, 4)]))
    check_concurrent(cases, threads=4, calls=2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_calls_while_a_batch_variant_compiles(backend):
    model = cnncomp.compile(models.inception_module(), backend=backend, opt_level=2, options=OPTIONS.get(backend))
    check_variant_compiled_during_calls(model, threads=4, calls=2)


@pytest.mark.parametrize("optimize", [True, False])
def test_onnxruntime_profile_charges_its_nodes_to_ours(optimize):
    """ONNX Runtime's own nodes (fused, in its blocked layout, or layout conversions it adds) are charged to the
    nodes of the graph; without its optimizations each node of ours has a row, all its ONNX nodes summed."""
    graph = cnncomp.compile(models.mbconv(), backend="reference", opt_level=2).graph
    executable = plugins.backend("onnxruntime").compile(graph, {"optimize": optimize})
    rows = executable.profile(random_inputs(graph), repeat=3)
    check_profile(rows, graph)
    assert len({row["node"] for row in rows}) == len(rows)
    if not optimize:
        # expand's ONNX form is a Conv, a Sigmoid and a Mul (silu as x * sigmoid(x)).
        assert [row["node"] for row in rows] == [node.name for node in graph.nodes if node.op != "input"]
        assert {row["node"]: row["kernel"] for row in rows}["expand"] == "Conv+Sigmoid+Mul"


def test_onnxruntime_takes_threads():
    """ONNX Runtime's `threads` is its session's own (the torch backend's: tests/backends/test_torch_eager.py)."""
    graph = models.basic_block()
    inputs = random_inputs(graph)
    executable = plugins.backend("onnxruntime").compile(graph, {"threads": 1})
    assert executable.stats == {"threads": 1, "optimize": True}
    expected = plugins.backend("reference").compile(graph)(inputs)["out"]
    np.testing.assert_allclose(executable(inputs)["out"], expected, atol=1e-4, rtol=1e-4)
