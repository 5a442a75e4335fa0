"""Shared test helpers: one-op graphs run on the reference backend, tolerant comparisons, and the command line
through its real entry point."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from backends import reference
from cnncomp.ir import Graph

ROOT = Path(__file__).parents[1]
ATOL = 1e-5
RTOL = 1e-5


def one_op_graph(op: str, shapes: Sequence[tuple[int, ...]], attrs: Mapping[str, Any] | None = None,
                 params: Mapping[str, np.ndarray] | None = None, strict: bool = False) -> Graph:
    """A graph of input nodes x0, x1, ... feeding one `op` node called `y`, which is the output."""
    graph = Graph(f"one_{op}", strict=strict)
    names = [graph.add_node(f"x{i}", "input", attrs={"shape": shape}).name for i, shape in enumerate(shapes)]
    graph.add_node("y", op, names, attrs or {}, params=params)
    graph.set_outputs(["y"])
    return graph


def run_one_op(op: str, inputs: Sequence[np.ndarray], attrs: Mapping[str, Any] | None = None,
               params: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
    graph = one_op_graph(op, [x.shape for x in inputs], attrs, params)
    return reference.run(graph, {f"x{i}": x for i, x in enumerate(inputs)})["y"]


def random(shape: tuple[int, ...], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def assert_close(actual: np.ndarray, expected: Any, atol: float = ATOL, rtol: float = RTOL) -> None:
    expected = np.asarray(expected.detach().numpy() if hasattr(expected, "detach") else expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != expected {expected.shape}"
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


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
