"""eliminate_identity: drop ops that pass their operand through unchanged."""

from __future__ import annotations

from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from cnncomp.passes.rewrite import repeat_until_fixed, replace_op, sole_consumer


def is_identity(graph: Graph, node: Node) -> bool:
    """What the op's registry entry says (`Op.is_identity`) of this node."""
    operands = [graph.node(name).type for name in node.inputs]
    return get_op(node.op).is_identity(node.attrs, operands, node.type)


def eliminate_identity(graph: Graph) -> Graph:
    """identity(x) => x, dropout(x) => x (inference), flatten(x) => x for x already N x features, concat(x) => x,
    channel_slice(x, 0, C) => x for x of C channels.

    Readers of the identity read x instead. Precondition: the identity is not a graph output; if it is, the
    output keeps its name by renaming x's producer to it, which needs x to be read by nothing else and to be
    neither a graph input nor a graph output (otherwise the identity stays).
    """

    def rewrite_once(graph: Graph) -> bool:
        changed = False
        for node in graph.nodes:
            if node.name not in graph:
                continue
            node = graph.node(node.name)  # an earlier rewrite may have changed its operands
            if not is_identity(graph, node):
                continue
            source = graph.node(node.inputs[0])
            if node.name not in graph.outputs:
                graph.replace_uses(node.name, source.name)
                graph.remove_node(node.name)
                changed = True
            elif source.op != "input" and sole_consumer(graph, source.name) is not None:
                replace_op(graph, node.name, source.op, source.inputs, source.attrs,
                           graph.node_params(source.name), source.meta)
                graph.remove_node(source.name)
                changed = True
        return changed

    return repeat_until_fixed(graph, rewrite_once)
