"""fold_batch_norm: fold inference-form batch norms into the weights of the layer before or after them."""

from __future__ import annotations

import numpy as np

from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from cnncomp.passes.rewrite import epilogue_is_empty, has_epilogue, merge, repeat_until_fixed, sole_consumer


def batch_norm_affine(graph: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """bn(x) = x * scale + shift per channel: scale = weight / sqrt(running_var + eps),
    shift = bias - running_mean * scale (computed as the reference computes it)."""
    p = graph.node_params(bn.name)
    scale = p["weight"] / np.sqrt(p["running_var"] + np.float32(bn.attrs["eps"]))
    return scale, p["bias"] - p["running_mean"] * scale


def _scale_output_channels(node: Node, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    if node.op == "conv_transpose2d":
        groups = node.attrs["groups"]
        c_in, og = weight.shape[:2]
        grouped = weight.reshape(groups, c_in // groups, og, *weight.shape[2:])
        return (grouped * scale.reshape(groups, 1, og, *(1,) * (weight.ndim - 2))).reshape(weight.shape)
    return weight * scale.reshape(-1, *(1,) * (weight.ndim - 1))


def fold_into_producer(graph: Graph, layer: Node, bn: Node) -> None:
    """bn(layer(x; w, b)) => layer(x; w * s, b * s + t)."""
    scale, shift = batch_norm_affine(graph, bn)
    params = dict(graph.node_params(layer.name))
    key = get_op(layer.op).output_weight
    params[key] = _scale_output_channels(layer, params[key], scale)
    params["bias"] = params["bias"] * scale + shift if "bias" in params else shift
    merge(graph, layer, bn, layer.op, layer.inputs, {**layer.attrs, "bias": True}, params)


def fold_into_consumer(graph: Graph, bn: Node, layer: Node) -> None:
    """layer(bn(x); w, b) => layer(x; w * s (per input channel), b + sum(w * t))."""
    scale, shift = batch_norm_affine(graph, bn)
    params: dict[str, np.ndarray] = dict(graph.node_params(layer.name))
    weight = params["weight"]
    if layer.op == "dense":
        folded, added = weight * scale[None, :], weight @ shift
    else:
        groups = layer.attrs["groups"]
        out, per_group = weight.shape[:2]
        # Output channel o of group g reads input channels g*Cg .. g*Cg + Cg - 1.
        by_output = np.repeat(scale.reshape(groups, per_group), out // groups, axis=0)
        shift_by_output = np.repeat(shift.reshape(groups, per_group), out // groups, axis=0)
        folded = weight * by_output[:, :, None, None]
        added = np.einsum("ojhw,oj->o", weight, shift_by_output)
    params["weight"] = folded
    params["bias"] = params.get("bias", np.zeros(weight.shape[0], np.float32)) + added
    inputs = (bn.inputs[0], *layer.inputs[1:])
    merge(graph, bn, layer, layer.op, inputs, {**layer.attrs, "bias": True}, params, keep="second")


def foldable_into_producer(graph: Graph, bn: Node) -> Node | None:
    layer = graph.node(bn.inputs[0])
    if get_op(layer.op).output_weight is None or sole_consumer(graph, layer.name) is None:
        return None
    if has_epilogue(layer) and not epilogue_is_empty(layer):
        return None  # an affine, residual or activation sits between the layer's product and the batch norm
    return layer


def foldable_into_consumer(graph: Graph, bn: Node) -> Node | None:
    layer = sole_consumer(graph, bn.name)
    if layer is None or layer.op not in ("conv2d", "dense") or layer.inputs[0] != bn.name:
        return None
    if layer.op == "conv2d" and any(layer.attrs["padding"]):
        return None  # the conv pads bn(x) with zeros, not with bn(0): the border would change
    return layer


def fold_batch_norm(graph: Graph) -> Graph:
    """Fold batch norms (inference form, y = x * s + t per channel, s = gamma / sqrt(var + eps),
    t = beta - mean * s) into the layer next to them:

        batch_norm(layer(x; w, b))  =>  layer(x; w * s, b * s + t)
        layer(batch_norm(x); w, b)  =>  layer(x; w * s_in, b + sum_in(w * t))

    The first for a layer whose registry entry names its `output_weight` (conv2d, dense, depthwise_conv2d,
    pointwise_conv2d, separable_conv2d's pointwise weight, conv_transpose2d's weight[:, o] per group), scaling
    output channels; the second (a lone batch
    norm a conv can absorb) for conv2d and dense, scaling input channels.
    Preconditions: the intermediate value has a single reader and is not a graph output; the layer's epilogue
    holds nothing after its bias (no affine, residual or activation between product and batch norm); for the
    second form the conv has no padding (it pads bn(x) with zeros, which bn(0) = t is not). Parameters are
    constants of the graph, so the folded weights are computed here once.
    """

    def rewrite_once(graph: Graph) -> bool:
        changed = False
        for bn in graph.nodes:
            if bn.op != "batch_norm" or bn.name not in graph:
                continue
            bn = graph.node(bn.name)
            if (layer := foldable_into_producer(graph, bn)) is not None:
                fold_into_producer(graph, layer, bn)
                changed = True
            elif (layer := foldable_into_consumer(graph, bn)) is not None:
                fold_into_consumer(graph, bn, layer)
                changed = True
        return changed

    return repeat_until_fixed(graph, rewrite_once)

