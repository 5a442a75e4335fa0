"""Shrinking a failing graph to a small one that still fails, by rewriting the graph itself (as C-Reduce does for C):
keep one output, drop what it does not read, route a node's readers to an operand of the same type, cut the graph
by making a node's value an input, use batch 1 and smaller inputs, put attributes back to their defaults, halve
channel counts. Each rewrite that leaves a valid graph which still fails is kept; rounds repeat until none helps.

`tools/fuzz.py` reduces what the long run finds; hypothesis shrinks the CI job's failures through the strategy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.ops import get_op
from cnncomp.ops.base import REQUIRED
from tests.fuzz.graphs import FuzzCase
from tests.helpers import randomize


@dataclass(frozen=True)
class Spec:
    """A graph as plain data: nodes (name, op, inputs, attrs) in order, and the outputs."""

    nodes: tuple[tuple[str, str, tuple[str, ...], tuple[tuple[str, Any], ...]], ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, graph: Graph) -> Spec:
        return cls(tuple((n.name, n.op, n.inputs, tuple(n.attrs.items())) for n in graph.nodes), tuple(graph.outputs))

    def build(self, seed: int) -> Graph | None:
        """The graph, with weights drawn from `seed`; None if an op refuses it."""
        graph = Graph("fuzz")
        try:
            for name, op, inputs, attrs in self.nodes:
                graph.add_node(name, op, inputs, dict(attrs))
            position = {name: index for index, (name, _, _, _) in enumerate(self.nodes)}
            graph.set_outputs(sorted(self.outputs, key=position.__getitem__))
            randomize(graph, seed, shared_constants=True)
            graph.validate()
        except GraphError:
            return None
        return graph

    def live(self) -> Spec:
        """Without the nodes no output depends on (inputs too, but one is always kept)."""
        needed = set(self.outputs)
        for name, _, inputs, _ in reversed(self.nodes):
            if name in needed:
                needed.update(inputs)
        kept = tuple(n for n in self.nodes if n[0] in needed)
        if not any(op == "input" for _, op, _, _ in kept):
            kept = (next(n for n in self.nodes if n[1] == "input"), *kept)
        return replace(self, nodes=kept)


def _rename(spec: Spec, old: str, new: str) -> Spec:
    nodes = tuple((name, op, tuple(new if i == old else i for i in inputs), attrs) for name, op, inputs, attrs in
                  spec.nodes)
    return Spec(nodes, tuple(dict.fromkeys(new if o == old else o for o in spec.outputs)))


def candidates(spec: Spec, graph: Graph) -> Iterator[Spec]:
    """Smaller or simpler variants of the graph, the boldest first."""
    if len(spec.outputs) > 1:
        for output in spec.outputs:
            yield replace(spec, outputs=(output,)).live()
    for output in spec.outputs:  # an output's operand becomes the output instead
        for operand in dict.fromkeys(graph.node(output).inputs):
            if graph.node(operand).op != "input":
                yield replace(spec, outputs=tuple(dict.fromkeys(operand if o == output else o
                                                                for o in spec.outputs))).live()
    for name, op, inputs, _ in reversed(spec.nodes):
        if op == "input":
            continue
        node_type = graph.node(name).type
        for operand in dict.fromkeys(inputs):
            if graph.node(operand).type == node_type:  # readers of the node read its operand instead
                yield _rename(replace(spec, nodes=tuple(n for n in spec.nodes if n[0] != name)), name, operand).live()
        if node_type.dtype == "float32":  # the node's value becomes an input
            shape = (("shape", node_type.shape),)
            cut = tuple((n, "input", (), shape) if n == name else (n, o, i, a) for n, o, i, a in spec.nodes)
            yield replace(spec, nodes=cut).live()
    if graph.inputs[0].shape[0] > 1:
        yield _at_batch_one(spec)
    for index, (name, op, inputs, attrs) in enumerate(spec.nodes):
        values = dict(attrs)
        for variant in _simpler_attrs(op, values):
            nodes = list(spec.nodes)
            nodes[index] = (name, op, inputs, tuple(variant.items()))
            yield replace(spec, nodes=tuple(nodes))


def _at_batch_one(spec: Spec) -> Spec:
    """Batch 1 for every input and every constant's batch axis at once (the language gives all inputs one batch)."""
    nodes = []
    for name, op, inputs, attrs in spec.nodes:
        values = dict(attrs)
        if op in ("input", "constant"):
            values["shape"] = (1, *values["shape"][1:])
        nodes.append((name, op, inputs, tuple(values.items())))
    return replace(spec, nodes=tuple(nodes))


def _simpler_attrs(op: str, attrs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if op == "input":
        shape = attrs["shape"]
        for axis in range(1, len(shape)):
            for smaller in dict.fromkeys((1, shape[axis] // 2, shape[axis] - 1)):
                if 0 < smaller < shape[axis]:
                    yield {**attrs, "shape": shape[:axis] + (smaller,) + shape[axis + 1:]}
        return
    opdef = get_op(op)
    for key, value in attrs.items():
        spec = opdef.attrs[key]
        if key in ("residual", "gate"):
            continue  # these change the operands; the bypass rewrites drop such operands instead
        if spec.default is not REQUIRED and value != spec.default:
            yield {**attrs, key: spec.default}
        if key in ("out_channels", "out_features", "groups", "multiplier") and value > 1:
            yield {**attrs, key: max(1, value // 2)}


def reduce(case: FuzzCase, fails: Callable[[FuzzCase], bool], seconds: float = 120.0) -> FuzzCase:
    """The smallest variant of `case` found within `seconds` for which `fails` still holds."""
    deadline = time.monotonic() + seconds
    spec, graph = Spec.of(case.graph), case.graph
    improved = True
    while improved and time.monotonic() < deadline:
        improved = False
        for candidate in candidates(spec, graph):
            if time.monotonic() > deadline:
                break
            if candidate == spec:
                continue
            built = candidate.build(case.seed)
            if built is None:
                continue
            try:
                still = fails(FuzzCase(built, case.seed))
            except Exception:  # a variant the harness itself cannot run (say, the reference refuses its data)
                still = False
            if still:
                spec, graph, improved = candidate, built, True
                break
    return FuzzCase(graph, case.seed)
