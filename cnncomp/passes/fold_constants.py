"""fold_constants: compute at compile time what depends on constants only."""

from __future__ import annotations

import numpy as np

from cnncomp.ir import Graph
from cnncomp.ops import get_op
from cnncomp.passes.rewrite import replace_op


def fold_constants(graph: Graph) -> Graph:
    """op(constant(a), constant(b), ...)  =>  constant(op(a, b, ...)), evaluated with the op's reference.

    Applied in dataflow order, so whole subgraphs whose inputs are all parameters collapse to one constant.
    Constants left unread by the folding are removed. Preconditions: every operand is a constant (graph inputs
    are not); the op has at least one operand; its result is float32, the only type a constant holds (max-pool
    indices of a constant stay computed).
    """
    graph = graph.copy()
    sources: set[str] = set()
    for node in graph.nodes:
        if node.op in ("input", "constant") or not node.inputs or node.type.dtype != "float32":
            continue
        if not all(graph.node(name).op == "constant" for name in node.inputs):
            continue
        operands = [graph.params[f"{name}.value"] for name in node.inputs]
        value = get_op(node.op).reference(operands, graph.node_params(node.name), node.attrs)
        replace_op(graph, node.name, "constant", (), {"shape": node.shape},
                   {"value": np.asarray(value, np.float32)}, node.meta)
        sources.update(node.inputs)
    for name in sources:
        if not graph.consumers(name) and name not in graph.outputs:
            graph.remove_node(name)
    return graph
