"""lower_depthwise: convolutions with one group per input channel become depthwise convolutions."""

from __future__ import annotations

from cnncomp.ir import Graph, Node
from cnncomp.ops.conv import is_depthwise
from cnncomp.ops.epilogue import EPILOGUE_ATTRS
from cnncomp.passes.rewrite import replace_op


def lowers(graph: Graph, node: Node) -> bool:
    """A depthwise conv2d of more than one group: a conv on a one-channel image stays an ordinary conv."""
    return (node.op == "conv2d" and node.attrs["groups"] > 1
            and is_depthwise(node.attrs, graph.node(node.inputs[0]).type.channels))


def lower_depthwise(graph: Graph) -> Graph:
    """conv2d(x; groups=C, out_channels=C*M)  =>  depthwise_conv2d(x; multiplier=M)

    Same weight (C*M x 1 x KH x KW), bias, stride, padding, dilation and epilogue; MACs stay equal.
    Preconditions: groups equals the input channels and is above 1 (other grouped convs, ResNeXt's or
    AlexNet's, stay grouped conv2d; a conv on a one-channel image is an ordinary conv).
    """
    graph = graph.copy()
    for node in graph.nodes:
        if not lowers(graph, node):
            continue
        attrs = {key: node.attrs[key] for key in ("kernel", "stride", "padding", "dilation", "bias")}
        attrs["multiplier"] = node.attrs["out_channels"] // node.attrs["groups"]
        attrs.update({key: node.attrs[key] for key in EPILOGUE_ATTRS})
        replace_op(graph, node.name, "depthwise_conv2d", node.inputs, attrs, graph.node_params(node.name),
                   node.meta)
    return graph
