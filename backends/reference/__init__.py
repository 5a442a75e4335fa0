"""The numpy reference backend: interprets the graph op by op with each op's registry reference.

It is the oracle every other backend is tested against, so it stays simple: no rewriting, no fusion of its
own, each intermediate released as soon as its last consumer has run. A call keeps its values in a dict of its
own, so any number of threads may call one executable at once.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from cnncomp.errors import GraphError
from cnncomp.ir import Graph, Node
from cnncomp.ops import OpError, get_op
from cnncomp.runtime import OperationByOperation, ProfileRow, check_inputs


class ReferenceExecutable(OperationByOperation):
    """The executable contract (`cnncomp.runtime.Executable`) for the numpy interpreter."""

    def __init__(self, graph: Graph) -> None:
        graph.validate()
        self.graph = graph
        self.order = [node for node in graph.nodes if node.op != "input"]
        self.node_params = {node.name: graph.node_params(node.name) for node in self.order}
        outputs = set(graph.outputs)
        # After the step at which a value is read for the last time it can be dropped (outputs are kept).
        self.release_after: dict[int, list[str]] = {}
        last_read: dict[str, int] = {}
        for step, node in enumerate(self.order):
            for operand in node.inputs:
                last_read[operand] = step
        for name, step in last_read.items():
            if name not in outputs:
                self.release_after.setdefault(step, []).append(name)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._run(inputs, None)
        # Copied: an op's reference may return its operand or a view of it (identity, flatten), and that operand
        # may be the caller's input.
        return {name: values[name].copy() for name in self.graph.outputs}

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[ProfileRow]:
        """Each node's median time over `repeat` runs, in execution order; the kernel is the op."""
        times = np.zeros((repeat, len(self.order)))
        for run in range(repeat):
            self._run(inputs, times[run])
        medians = np.median(times, axis=0)
        return [{"node": node.name, "kernel": node.op, "seconds": float(seconds)}
                for node, seconds in zip(self.order, medians, strict=True)]

    def _run(self, inputs: Mapping[str, np.ndarray], times: np.ndarray | None) -> dict[str, np.ndarray]:
        """Every value the outputs need, computed in order; each step's time goes into `times` if given."""
        values: dict[str, np.ndarray] = dict(check_inputs(self.graph, inputs))
        for step, node in enumerate(self.order):
            operands = [values[name] for name in node.inputs]
            start = time.perf_counter()
            values[node.name] = self._evaluate(node, operands)
            if times is not None:
                times[step] = time.perf_counter() - start
            for name in self.release_after.get(step, ()):
                del values[name]
        return values

    def _evaluate(self, node: Node, operands: list[np.ndarray]) -> np.ndarray:
        try:
            result = get_op(node.op).reference(operands, self.node_params[node.name], node.attrs)
        except OpError as exc:  # a data-dependent failure, such as an unpooling index out of range
            raise GraphError(f"{node.describe()}: {exc}") from None
        if result.shape != node.shape or result.dtype != np.dtype(node.type.dtype):
            # The oracle checks itself: a reference that disagrees with its own shape rule is a bug.
            raise AssertionError(f"{node.describe()}: reference gave {result.dtype}{list(result.shape)}, "
                                 f"shape inference {node.type}")
        return result


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> ReferenceExecutable:  # noqa: A001
    """The backend interface: `compile(graph, options) -> Executable`. The reference takes no options."""
    return ReferenceExecutable(graph)


def run(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ReferenceExecutable(graph)(inputs)
