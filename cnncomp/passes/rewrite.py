"""Helpers the passes share: finding a value's only reader, replacing a node by another op, and merging two
nodes into one while keeping graph output names and recording what was absorbed in `meta["fused"]`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from cnncomp.ops.epilogue import carries_epilogue


def sole_consumer(graph: Graph, name: str) -> Node | None:
    """The node that reads `name`, if exactly one node reads it, once, and it is not a graph output: the
    precondition of every fusion (a value read twice must still exist after the rewrite)."""
    if name in graph.outputs:
        return None
    consumers = graph.consumers(name)
    if len(consumers) != 1 or consumers[0].inputs.count(name) != 1:
        return None
    return consumers[0]


def has_epilogue(node: Node) -> bool:
    """Whether the node's op carries conv2d's epilogue act(affine(y + bias) + residual)."""
    return carries_epilogue(get_op(node.op))


def epilogue_is_empty(node: Node) -> bool:
    """Nothing fused after the op's own bias: an affine, residual or activation would come before what follows."""
    return not node.attrs["affine"] and not node.attrs["residual"] and node.attrs["act"] is None


def is_per_channel_of(small: Node, full: Node) -> bool:
    """`small` is N x C x 1 x 1 and scales or shifts each channel of the NCHW `full`."""
    return full.type.rank == 4 and small.shape == (full.type.batch, full.type.channels, 1, 1)


def batch_uniform_channels(graph: Graph, node: Node) -> np.ndarray | None:
    """The C values of a constant N x C x 1 x 1 node that holds the same vector for every sample, else None."""
    if node.op != "constant" or node.type.rank != 4 or node.shape[2:] != (1, 1):
        return None
    value = graph.params[f"{node.name}.value"].reshape(node.shape[0], node.shape[1])
    return value[0] if np.all(value == value[:1]) else None


def fresh_name(graph: Graph, base: str) -> str:
    if base not in graph:
        return base
    index = 1
    while f"{base}_{index}" in graph:
        index += 1
    return f"{base}_{index}"


def replace_op(graph: Graph, name: str, op: str, inputs: Sequence[str], attrs: Mapping[str, Any],
               params: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Put a node of another op, computing the same value (same type), in place of node `name`; its parameters
    are replaced by `params`."""
    graph.replace_node(name, graph.make_node(name, op, inputs, attrs, meta))
    for key in [k for k in graph.params if k.startswith(name + ".")]:
        del graph.params[key]
    graph.set_node_params(name, params)


def merge(graph: Graph, first: Node, second: Node, op: str, inputs: Sequence[str], attrs: Mapping[str, Any],
          params: Mapping[str, np.ndarray], keep: str = "first") -> str:
    """Replace `first` and its only reader `second` by one node computing `second`'s value; return its name.

    The node keeps `first`'s name when `keep="first"` (a conv absorbing what follows it), except when `second` is
    a graph output, whose name must not change; `keep="second"` keeps `second`'s (a conv absorbing its prologue).
    `meta["fused"]` lists every node merged into the result other than the one whose name it keeps, in the order
    they were absorbed.
    """
    kept, dropped = (first, second) if keep == "first" and second.name not in graph.outputs else (second, first)
    merged = [first.name, *first.meta.get("fused", ()), second.name, *second.meta.get("fused", ())]
    meta = {**dropped.meta, **kept.meta, "fused": [name for name in merged if name != kept.name]}
    replace_op(graph, kept.name, op, inputs, attrs, params, meta)
    if kept is first:
        graph.replace_uses(second.name, first.name)
    graph.remove_node(dropped.name)
    return kept.name


def repeat_until_fixed(graph: Graph, rewrite_once: Any) -> Graph:
    """Run `rewrite_once(graph) -> bool` on a copy until it reports no change; return the copy."""
    graph = graph.copy()
    while rewrite_once(graph):
        pass
    return graph
