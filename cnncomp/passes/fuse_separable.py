"""fuse_separable: a depthwise conv and the pointwise conv that reads it become one separable conv."""

from __future__ import annotations

import numpy as np

from cnncomp.ir import Graph, Node
from cnncomp.ops.epilogue import EPILOGUE_ATTRS
from cnncomp.passes.rewrite import merge, sole_consumer


def separable_pair(graph: Graph, pointwise: Node) -> Node | None:
    """The depthwise conv that `pointwise` can absorb, or None."""
    if pointwise.op != "pointwise_conv2d" or pointwise.attrs["gate"]:
        return None
    depthwise = graph.node(pointwise.inputs[0])
    if depthwise.op != "depthwise_conv2d" or depthwise.attrs["residual"]:
        return None
    if sole_consumer(graph, depthwise.name) is None:
        return None
    return depthwise


def fuse_separable(graph: Graph) -> Graph:
    """pointwise_conv2d(mid_act(depthwise_conv2d(x; wd) + bd); wp, epilogue)
        =>  separable_conv2d(x; depthwise_weight=wd, mid_bias=bd, mid_act, pointwise_weight=wp, epilogue)

    (Xception's separable convs have no mid_bias or mid_act; MobileNet's and EfficientNet's carry the folded
    batch norm and relu6/silu there.) A depthwise affine (batch norm not folded) is folded into wd and bd.
    Preconditions: the depthwise output has a single reader, the pointwise conv, as its data operand, and is
    not a graph output; the depthwise conv has no residual (nothing but a bias and an activation may sit between
    the two steps); the pointwise conv has no SE gate. Any stride, padding, dilation and multiplier.
    """
    graph = graph.copy()
    for node in graph.nodes:
        if node.name not in graph:
            continue
        pointwise = graph.node(node.name)
        depthwise = separable_pair(graph, pointwise)
        if depthwise is None:
            continue
        dw, pw = graph.node_params(depthwise.name), graph.node_params(pointwise.name)
        weight, mid_bias = dw["weight"], dw.get("bias")
        if depthwise.attrs["affine"]:
            scale, shift = dw["scale"], dw["shift"]
            weight = weight * scale[:, None, None, None]
            mid_bias = (mid_bias * scale if mid_bias is not None else np.zeros_like(scale)) + shift
        params = {"depthwise_weight": weight, "pointwise_weight": pw["weight"],
                  **{key: pw[key] for key in ("bias", "scale", "shift") if key in pw}}
        if mid_bias is not None:
            params["mid_bias"] = mid_bias
        attrs = {key: depthwise.attrs[key] for key in ("kernel", "stride", "padding", "dilation", "multiplier")}
        attrs.update(out_channels=pointwise.attrs["out_channels"], bias=pointwise.attrs["bias"],
                     mid_bias=mid_bias is not None, mid_act=depthwise.attrs["act"], mid_alpha=depthwise.attrs["alpha"])
        attrs.update({key: pointwise.attrs[key] for key in EPILOGUE_ATTRS})
        merge(graph, depthwise, pointwise, "separable_conv2d", (depthwise.inputs[0], *pointwise.inputs[1:]), attrs,
              params, keep="second")
    return graph
