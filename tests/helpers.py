"""Shared test helpers, one definition each: one-op graphs, random parameters (`randomize`) and inputs
(`random_inputs`) for a graph, tolerant comparisons, a backend checked against the reference backend
(`assert_same_as_reference`), and the command line through its real entry point."""

from __future__ import annotations

import math
import subprocess
import sys
import tracemalloc
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from backends import reference
from cnncomp.ir import Graph
from cnncomp.ops import get_op
from cnncomp.ops.activation import ACTIVATIONS
from cnncomp.runtime import Executable

ROOT = Path(__file__).parents[1]
ATOL = 1e-5
RTOL = 1e-5
# A backend's generated kernels sum in another order than numpy does (tiles, GEMMs, Winograd): float32 rounding.
BACKEND_ATOL = 1e-4
BACKEND_RTOL = 1e-4


def one_op_graph(op: str, shapes: Sequence[tuple[int, ...]], attrs: Mapping[str, Any] | None = None,
                 params: Mapping[str, np.ndarray] | None = None, strict: bool = False) -> Graph:
    """A graph of input nodes x0, x1, ... feeding one `op` node called `y`, which is the output."""
    graph = Graph(f"one_{op}", strict=strict)
    names = [graph.add_node(f"x{i}", "input", attrs={"shape": shape}).name for i, shape in enumerate(shapes)]
    graph.add_node("y", op, names, attrs or {}, params=params)
    graph.set_outputs(["y"])
    return graph


def random_op_graph(op: str, shapes: Sequence[tuple[int, ...]], attrs: Mapping[str, Any] | None = None,
                    seed: int = 0) -> Graph:
    """`one_op_graph` with random parameters (`randomize`)."""
    return randomize(one_op_graph(op, shapes, attrs), seed)


def run_one_op(op: str, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any] | None = None,
               params: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    graph = one_op_graph(op, [x.shape for x in inputs], attrs, params)
    return reference.run(graph, {f"x{i}": x for i, x in enumerate(inputs)})["y"]


def random(shape: tuple[int, ...], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def randomize(graph: Graph, seed: int = 0, shared_constants: bool = False) -> Graph:
    """Give the parameters the graph's ops declare random values, so none hides behind a neutral initial value
    (batch norms far from the identity); each from its own stream (the seed and the parameter's name), so the values
    depend only on the graph's structure and the seed. Biases, shifts, constants and batch-norm means normal with
    std 0.5; scales, batch-norm gammas and variances uniform in [0.5, 1.5]. Weights the graph has stay (the
    builder's He/Xavier ones keep a deep ReLU net's scale, where a softmax would otherwise flatten); missing ones
    are normal with std 1/sqrt(fan in), so activations keep their scale through chains. With `shared_constants`, an
    N x C x 1 x 1 constant is the same for every sample half of the time, so that a pass may fold it as a bias (the
    fuzzer wants both kinds). In place; returns the graph."""
    for node in graph.nodes:
        specs = get_op(node.op).params(node.attrs, [graph.node(i).type for i in node.inputs])
        values = {}
        for local, spec in specs.items():
            rng = np.random.default_rng([seed, zlib.crc32(f"{node.name}.{local}".encode())])
            if spec.init == "weight":
                if f"{node.name}.{local}" in graph.params:
                    continue
                fan_in = math.prod(spec.shape[1:]) if len(spec.shape) > 1 else 1
                value = rng.standard_normal(spec.shape) / math.sqrt(fan_in)
            elif spec.init == "ones":
                value = rng.uniform(0.5, 1.5, spec.shape)
            else:
                value = rng.standard_normal(spec.shape) * 0.5
                if (shared_constants and node.op == "constant" and value.ndim == 4 and value.shape[2:] == (1, 1)
                        and rng.random() < 0.5):
                    value = np.broadcast_to(value[:1], value.shape)
            values[local] = value.astype(np.float32)
        if values:
            graph.set_node_params(node.name, values)
    return graph


def random_inputs(graph: Graph, seed: int = 0, batch: int | None = None) -> dict[str, np.ndarray]:
    """Standard normal inputs of the graph's shapes and dtypes (with another batch size if given), one stream per
    input name."""
    return {node.name: np.random.default_rng([seed, zlib.crc32(node.name.encode())])
            .standard_normal((batch or node.shape[0], *node.shape[1:])).astype(node.type.dtype)
            for node in graph.inputs}


def assert_close(actual: np.ndarray, expected: Any, atol: float = ATOL, rtol: float = RTOL) -> None:
    expected = np.asarray(expected.detach().numpy() if hasattr(expected, "detach") else expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


def assert_same_as_reference(graph: Graph, backend: ModuleType, atol: float = BACKEND_ATOL,
                             rtol: float = BACKEND_RTOL, options: Mapping[str, Any] | None = None,
                             inputs: Mapping[str, np.ndarray] | None = None) -> Executable:
    """`backend` (a backend package: `compile(graph, options)`) and the reference backend on the same inputs
    (`random_inputs` unless given) give the same outputs: names, shapes, dtypes, and values within `atol` and
    `rtol`. Returns the executable, for checks of what it generated."""
    executable = backend.compile(graph, options)
    inputs = dict(inputs) if inputs is not None else random_inputs(graph)
    expected = reference.run(graph, inputs)
    actual = executable(inputs)
    assert list(actual) == list(expected), f"outputs {list(actual)}, expected {list(expected)}"
    for name, value in expected.items():
        assert actual[name].shape == value.shape, f"{name}: shape {actual[name].shape} != {value.shape}"
        assert actual[name].dtype == value.dtype, f"{name}: dtype {actual[name].dtype} != {value.dtype}"
        np.testing.assert_allclose(actual[name], value, atol=atol, rtol=rtol, err_msg=name)
    return executable


def assert_memory_steady(call: Callable[[], Any], warmup: int, calls: int, limit: int = 64 * 1024) -> None:
    """After `warmup` calls (which may fill caches), `calls` more leave Python's traced memory within `limit` bytes
    of where it was: a call that kept anything would grow it."""
    for _ in range(warmup):
        call()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(calls):
            call()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < limit, f"memory grew by {after - before} bytes over {calls} calls"


def cnncomp_cli(*args: Any, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """`python -m cnncomp ARGS` in `cwd`, its output captured."""
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    """Exit 1 and one line on stderr, `cnncomp: error: ...` holding `message`."""
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncomp: error: "), result.stderr
    assert message in lines[0], lines[0]


def activation_cases() -> list[dict[str, Any]]:
    """An epilogue's `act` for each activation of the registry, with a slope of its own (0.2) where it has one."""
    return [dict(act=name, **({"alpha": 0.2} if "alpha" in op.attrs else {})) for name, op in ACTIVATIONS.items()]
