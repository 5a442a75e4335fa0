"""lower_pointwise: 1x1 convolutions become matrix products over (channels x pixels)."""

from __future__ import annotations

from cnncomp.ir import Graph
from cnncomp.ops.conv import is_pointwise
from cnncomp.ops.epilogue import EPILOGUE_ATTRS
from cnncomp.passes.rewrite import fresh_name, replace_op


def lower_pointwise(graph: Graph) -> Graph:
    """conv2d(x; w: O x C x 1 x 1, stride 1)  =>  pointwise_conv2d(x; w: O x C), y[n] = w @ x[n] (C x H*W)
    conv2d(x; w: O x C x 1 x 1, stride S)  =>  pointwise_conv2d(strided_slice(x; S); w: O x C)

    The bias and the epilogue (affine, residual, activation) come along unchanged; MACs stay equal.
    Preconditions: kernel 1x1, groups 1 (a grouped 1x1 conv stays conv2d), no padding (a padded 1x1 conv
    produces a border of bias only, which the product does not). Dilation does not matter for a 1x1 kernel.
    """
    graph = graph.copy()
    for node in graph.nodes:
        if node.op != "conv2d" or not is_pointwise(node.attrs, any_stride=True):
            continue
        source = node.inputs[0]
        if node.attrs["stride"] != (1, 1):
            slice_name = fresh_name(graph, f"{node.name}_slice")
            block = {"block": node.meta["block"]} if "block" in node.meta else {}
            graph.add_node(slice_name, "strided_slice", [source], {"stride": node.attrs["stride"]}, meta=block)
            source = slice_name
        params = graph.node_params(node.name)
        params["weight"] = params["weight"].reshape(params["weight"].shape[:2])
        attrs = {"out_channels": node.attrs["out_channels"], "bias": node.attrs["bias"],
                 **{key: node.attrs[key] for key in EPILOGUE_ATTRS}}
        replace_op(graph, node.name, "pointwise_conv2d", (source, *node.inputs[1:]), attrs, params, node.meta)
    return graph
