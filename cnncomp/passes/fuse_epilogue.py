"""fuse_epilogue: fuse the elementwise tail of a conv or dense layer (and SE's gate) into the layer."""

from __future__ import annotations

import numpy as np

from cnncomp.ir import Graph, Node
from cnncomp.ops import Fusion, get_op
from cnncomp.ops.activation import ACTIVATIONS, DEFAULT_LEAKY_ALPHA
from cnncomp.passes.fold_batch_norm import batch_norm_affine
from cnncomp.passes.rewrite import (
    batch_uniform_channels,
    has_epilogue,
    is_per_channel_of,
    merge,
    repeat_until_fixed,
    sole_consumer,
)


def _linear_step(graph: Graph, layer: Node, step: Node) -> tuple[np.ndarray | None, np.ndarray | None] | None:
    """`step` as y * scale + shift per channel of `layer`'s output (either part None when absent), or None when
    it is not such a step: a batch norm, or add/mul with a constant per-channel operand."""
    if step.op == "batch_norm":
        return batch_norm_affine(graph, step)
    if step.op not in ("add", "mul"):
        return None
    other = graph.node(step.inputs[1] if step.inputs[0] == layer.name else step.inputs[0])
    if not is_per_channel_of(other, layer):
        return None
    values = batch_uniform_channels(graph, other)
    if values is None:
        return None  # a per-sample or computed addend is not a parameter the layer can hold
    return (None, values) if step.op == "add" else (values, None)


def _absorb_linear(graph: Graph, layer: Node, step: Node, scale: np.ndarray | None,
                   shift: np.ndarray | None) -> None:
    """Compose the step with what the epilogue already holds: into the bias while there is no affine, else into
    the affine (bias, then affine, is the epilogue's order)."""
    attrs, params = dict(layer.attrs), graph.node_params(layer.name)
    channels = layer.type.channels
    if scale is None and not attrs["affine"]:
        params["bias"] = params.get("bias", np.zeros(channels, np.float32)) + shift
        attrs["bias"] = True
    else:
        old_scale = params.get("scale", np.ones(channels, np.float32))
        old_shift = params.get("shift", np.zeros(channels, np.float32))
        scale = np.ones(channels, np.float32) if scale is None else scale
        shift = np.zeros(channels, np.float32) if shift is None else shift
        params["scale"], params["shift"] = old_scale * scale, old_shift * scale + shift
        attrs["affine"] = True
    merge(graph, layer, step, layer.op, layer.inputs, attrs, params)


def residual_operand(graph: Graph, add: Node) -> tuple[Node, Node] | None:
    """(layer, skip) for add(layer, skip) or add(skip, layer): the layer (tried left operand first) is read only
    by the add, its epilogue has no residual or activation yet, and skip has the add's shape."""
    if add.op != "add" or add.inputs[0] == add.inputs[1]:
        return None
    for mine, other in ((0, 1), (1, 0)):
        layer, skip = graph.node(add.inputs[mine]), graph.node(add.inputs[other])
        if (has_epilogue(layer) and sole_consumer(graph, layer.name) is not None and not layer.attrs["residual"]
                and layer.attrs["act"] is None and layer.type == skip.type == add.type):
            return layer, skip
    return None


def fuse_into_layer(graph: Graph, layer: Node) -> bool:
    """Absorb the one op that reads `layer`, if it can ride along; True if it did."""
    step = sole_consumer(graph, layer.name)
    if step is None or get_op(step.op).fusion > Fusion.BROADCAST:
        return False  # only elementwise and broadcast ops ride in an epilogue (TVM's rule): never another conv
    attrs, params = dict(layer.attrs), graph.node_params(layer.name)
    if step.op in ACTIVATIONS and attrs["act"] is None:
        attrs.update(act=step.op, alpha=step.attrs.get("alpha", DEFAULT_LEAKY_ALPHA))
        merge(graph, layer, step, layer.op, layer.inputs, attrs, params)
        return True
    if attrs["residual"] or attrs["act"] is not None:
        return False  # the remaining steps come before the residual and the activation
    linear = _linear_step(graph, layer, step)
    if linear is not None:
        _absorb_linear(graph, layer, step, *linear)
        return True
    pair = residual_operand(graph, step)
    if pair is not None and pair[0].name == layer.name:
        merge(graph, layer, step, layer.op, (*layer.inputs, pair[1].name), {**attrs, "residual": True}, params)
        return True
    return False


def fuse_gate(graph: Graph, mul: Node) -> bool:
    """pointwise_conv2d(mul(x, g)) => pointwise_conv2d(x, g, gate=True) for g an N x C x 1 x 1 scale of x."""
    conv = sole_consumer(graph, mul.name)
    if conv is None or conv.op != "pointwise_conv2d" or conv.attrs["gate"] or conv.inputs[0] != mul.name:
        return False
    a, b = (graph.node(name) for name in mul.inputs)
    if a.type == mul.type and is_per_channel_of(b, a):
        x, gate = a, b
    elif b.type == mul.type and is_per_channel_of(a, b):
        x, gate = b, a
    else:
        return False
    inputs = (x.name, gate.name, *conv.inputs[1:])
    merge(graph, mul, conv, conv.op, inputs, {**conv.attrs, "gate": True}, graph.node_params(conv.name),
          keep="second")
    return True


def fuse_epilogue(graph: Graph) -> Graph:
    """Fuse what follows a layer with an epilogue (conv2d, dense, depthwise/pointwise/separable conv) into it:

        act(affine(layer(x) + b) + skip)  =>  layer(x, skip; bias=b, affine, residual, act)
        pointwise_conv2d(x * g)           =>  pointwise_conv2d(x, g; gate)      (squeeze-and-excitation)

    one step at a time, in the epilogue's order: a per-channel bias (add of a constant 1 x C x 1 x 1, the same for
    every sample) and per-channel affine (batch_norm, or mul by such a constant) while no residual or activation
    is fused; then the residual add of a tensor of the output's shape (the left operand of `a + b` when both
    are layers that qualify); then one activation (any of `cnncomp.ops.activation.ACTIVATIONS`). The layers are
    the ops whose registry entries carry the epilogue, the steps ops of fusion class ELEMWISE or BROADCAST.
    SE's channel-wise mul rides along as the gate of the pointwise conv that reads it (run lower_pointwise first).
    Preconditions: the layer's output has a single reader and is not a graph output (ResNet's shortcut,
    read by the next block too, stays); residual shapes are equal; bias and affine operands are per-channel
    constants (a computed or per-sample N x C x 1 x 1 tensor is not). Fused nodes list what they absorbed in
    meta["fused"]; a fusion whose last step is a graph output takes that output's name.
    """

    def rewrite_once(graph: Graph) -> bool:
        changed = False
        for node in graph.nodes:
            if node.name not in graph:
                continue
            node = graph.node(node.name)
            if has_epilogue(node):
                changed |= fuse_into_layer(graph, node)
            elif node.op == "mul":
                changed |= fuse_gate(graph, node)
        return changed

    return repeat_until_fixed(graph, rewrite_once)
