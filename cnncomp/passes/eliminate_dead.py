"""eliminate_dead: drop what no graph output depends on."""

from __future__ import annotations

from cnncomp.ir import Graph


def eliminate_dead(graph: Graph) -> Graph:
    """Remove every node that no graph output depends on, with its parameters (a max-pool's unused indices, a
    branch that fold_constants or a fusion left unread). Graph inputs stay even when unread: they are the
    model's interface, and a caller still passes them.
    """
    graph = graph.copy()
    live: set[str] = set()
    pending = list(graph.outputs)
    while pending:
        name = pending.pop()
        if name not in live:
            live.add(name)
            pending.extend(graph.node(name).inputs)
    for node in reversed(graph.nodes):
        if node.name not in live and node.op != "input":
            graph.remove_node(node.name)
    return graph
