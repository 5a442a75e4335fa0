"""dense_to_conv: the FCN step, "convert fully connected layers to convolutional layers"."""

from __future__ import annotations

from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from cnncomp.ops.epilogue import EPILOGUE_ATTRS
from cnncomp.passes.rewrite import sole_consumer


def _head(graph: Graph, flatten: Node) -> tuple[Node, set[str]] | None:
    """The dense layer reading `flatten` and everything downstream of it, if all of it can run per pixel."""
    if flatten.op != "flatten" or graph.node(flatten.inputs[0]).type.rank != 4:
        return None
    first = sole_consumer(graph, flatten.name)
    if first is None or first.op != "dense" or first.attrs["residual"]:
        return None
    region, pending = {first.name}, [first.name]
    while pending:
        for consumer in graph.consumers(pending.pop()):
            if consumer.name not in region:
                region.add(consumer.name)
                pending.append(consumer.name)
    for name in region:
        node = graph.node(name)
        if not get_op(node.op).per_pixel(node.attrs):
            return None
        if name != first.name and any(operand not in region for operand in node.inputs):
            return None  # mixes the head with a value that stays N x F
    return first, region


def dense_to_conv(graph: Graph) -> Graph:
    """dense(flatten(x); W: O x (C*H*W))  =>  conv2d(x; W: O x C x H x W, kernel H x W)
    dense(h; W: O x I) downstream of it   =>  conv2d(h; W: O x I x 1 x 1)

    The first dense layer after a flatten becomes a conv whose kernel covers the whole feature map (flatten's
    C, H, W order is the conv weight's), and the dense layers after it 1x1 convs, so the classifier slides over
    larger inputs: at the size it was built for the output is N x classes x 1 x 1 with the same scores; on an
    input whose feature map is larger (`Graph.with_input_shapes`), a score map with one vector per window.
    Preconditions: the flatten reads an NCHW tensor and has one reader, a dense layer without residual; every
    op downstream of it works per pixel (its registry entry's `per_pixel`: activations, dropout, identity,
    batch_norm, add, mul, dense, softmax and concat along axis 1) and reads only values of the head. Graphs
    without such a head are returned as is.
    Output shapes change (N x F becomes N x F x 1 x 1), so the graph is rebuilt and its graph-level meta dropped.
    """
    flattens: dict[str, Node] = {}
    converted: set[str] = set()
    for node in graph.nodes:
        head = _head(graph, node)
        if head is not None:
            flattens[node.name] = head[0]
            converted |= head[1]
    if not flattens:
        return graph.copy()

    result = Graph(graph.name, graph.strict)
    for node in graph.nodes:
        if node.name in flattens:
            continue
        params = graph.node_params(node.name)
        op, inputs, attrs = node.op, node.inputs, dict(node.attrs)
        if node.name in converted and node.op == "dense":
            out, features = params["weight"].shape
            if node.inputs[0] in flattens:
                source = graph.node(graph.node(node.inputs[0]).inputs[0])
                inputs = (source.name, *node.inputs[1:])
                kernel = source.type.spatial
                params["weight"] = params["weight"].reshape(out, source.type.channels, *kernel)
            else:
                kernel = (1, 1)
                params["weight"] = params["weight"].reshape(out, features, 1, 1)
            op = "conv2d"
            attrs = {"out_channels": out, "kernel": kernel, "bias": node.attrs["bias"],
                     **{key: node.attrs[key] for key in EPILOGUE_ATTRS}}
        result.add_node(node.name, op, inputs, attrs, params=params, meta=node.meta)
    result.set_outputs(graph.outputs)
    return result
