"""The numpy reference backend: interprets the graph op by op with each op's registry reference.

It is the oracle every other backend is tested against, so it stays simple: no rewriting, no fusion of its
own, each intermediate released as soon as its last consumer has run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.ops import OpError, get_op
from cnncomp.runtime import check_inputs


class ReferenceExecutable:
    """Callable: `executable({input_name: array}) -> {output_name: array}`."""

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
        values: dict[str, np.ndarray] = dict(check_inputs(self.graph, inputs))
        for step, node in enumerate(self.order):
            operands = [values[name] for name in node.inputs]
            try:
                result = get_op(node.op).reference(operands, self.node_params[node.name], node.attrs)
            except OpError as exc:  # a data-dependent failure, such as an unpooling index out of range
                raise GraphError(f"{node.describe()}: {exc}") from None
            if result.shape != node.shape or result.dtype != np.dtype(node.type.dtype):
                # The oracle checks itself: a reference that disagrees with its own shape rule is a bug.
                raise AssertionError(f"{node.describe()}: reference gave {result.dtype}{list(result.shape)}, "
                                     f"shape inference {node.type}")
            values[node.name] = result
            for name in self.release_after.get(step, ()):
                del values[name]
        return {name: values[name] for name in self.graph.outputs}


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> ReferenceExecutable:  # noqa: A001
    """The backend interface: `compile(graph, options) -> Executable`. The reference takes no options."""
    return ReferenceExecutable(graph)


def run(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return ReferenceExecutable(graph)(inputs)


