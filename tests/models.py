"""Small networks written with the builder, shared by backend and pass tests (random weights and statistics)."""

from __future__ import annotations

import numpy as np

from cnncomp.ir import Graph
from frontends.builder import Builder
from tests.helpers import randomize


def basic_block(batch: int = 1) -> Graph:
    """A ResNet basic block with a projection shortcut (stride 2)."""
    b = Builder("block", batch=batch)
    x = b.input("x", (16, 10, 10))
    y = x.conv(32, 3, stride=2, padding=1, bias=False, name="conv1").batch_norm(name="bn1").relu()
    y = y.conv(32, 3, padding=1, bias=False, name="conv2").batch_norm(name="bn2")
    shortcut = x.conv(32, 1, stride=2, bias=False, name="proj").batch_norm(name="proj_bn")
    return randomize(b.build((y + shortcut).relu(name="out")))


def inception_module(batch: int = 1) -> Graph:
    b = Builder("inception", batch=batch)
    x = b.input("x", (32, 9, 9))
    branches = [
        x.conv(16, 1, name="b1").relu(),
        x.conv(12, 1, name="b2r").relu().conv(16, 3, padding=1, name="b2").relu(),
        x.conv(4, 1, name="b3r").relu().conv(8, 5, padding=2, name="b3").relu(),
        x.max_pool(3, 1, 1).conv(8, 1, name="b4").relu(),
    ]
    return randomize(b.build(b.concat(*branches, name="out")))


def unet_level(batch: int = 1) -> Graph:
    b = Builder("unet_level", batch=batch)
    x = b.input("x", (2, 20, 20))
    enc = x.conv(8, 3, name="e1").relu().conv(8, 3, name="e2").relu()
    down = enc.max_pool(2).conv(16, 3, name="d1").relu()
    up = down.conv_transpose(8, 2, stride=2, name="up")
    merged = b.concat(enc.crop(up), up, name="merged")
    return randomize(b.build(merged.conv(2, 1, name="out")))


def mbconv(batch: int = 1) -> Graph:
    """EfficientNet's MBConv: expand 1x1, depthwise 3x3, squeeze-and-excitation, project 1x1, residual."""
    b = Builder("mbconv", batch=batch)
    x = b.input("x", (16, 12, 12))
    y = x.conv(64, 1, bias=False, name="expand").batch_norm(name="bn0").silu()
    y = y.conv(64, 3, padding=1, groups=64, bias=False, name="dw").batch_norm(name="bn1").silu()
    gate = y.global_avg_pool().conv(4, 1, name="se_reduce").silu().conv(64, 1, name="se_expand").sigmoid()
    y = (y * gate).conv(16, 1, bias=False, name="project").batch_norm(name="bn2")
    return randomize(b.build(y + x))


def separable_stack(batch: int = 1) -> Graph:
    """Xception-style: depthwise 3x3 then pointwise 1x1, twice, with a residual."""
    b = Builder("separable", batch=batch)
    x = b.input("x", (16, 14, 14))
    y = x.relu().conv(16, 3, padding=1, groups=16, bias=False, name="dw1").conv(32, 1, bias=False, name="pw1")
    y = y.batch_norm(name="bn1").relu().conv(32, 3, padding=1, groups=32, bias=False, name="dw2")
    y = y.conv(32, 1, bias=False, name="pw2").batch_norm(name="bn2")
    shortcut = x.conv(32, 1, bias=False, name="proj").batch_norm(name="proj_bn")
    return randomize(b.build(y + shortcut))


def dual_path_block(batch: int = 1) -> Graph:
    """DPN's block: the input's first 16 channels are the residual path, added to the convs' first 16; its other
    8 the dense path, concatenated with the convs' last 8."""
    b = Builder("dual_path", batch=batch)
    x = b.input("x", (24, 9, 9))
    y = x.conv(16, 1, bias=False, name="conv1").batch_norm(name="bn1").relu()
    y = y.conv(16, 3, padding=1, groups=4, bias=False, name="conv2").batch_norm(name="bn2").relu()
    y = y.conv(24, 1, bias=False, name="conv3")
    residual = x.channel_slice(0, 16, name="x_residual") + y.channel_slice(0, 16, name="y_residual")
    dense = b.concat(x.channel_slice(16, 24, name="x_dense"), y.channel_slice(16, 24, name="y_dense"))
    return randomize(b.build(b.concat(residual, dense, name="joined").relu(name="out")))


def res2net_block(batch: int = 1) -> Graph:
    """Res2Net's block: a 1x1 conv's 24 channels in 4 scales of 6; each scale but the first is added to the
    previous scale's output before its 3x3 conv; the last scale passes through; concatenated, a 1x1 conv and the
    residual."""
    b = Builder("res2net", batch=batch)
    x = b.input("x", (16, 8, 8))
    y = x.conv(24, 1, bias=False, name="conv1").batch_norm(name="bn1").relu()
    scales = [y.channel_slice(6 * i, 6 * i + 6, name=f"scale{i}") for i in range(4)]
    outputs: list = []
    for i, scale in enumerate(scales[:3]):
        z = scale if i == 0 else scale + outputs[-1]
        outputs.append(z.conv(6, 3, padding=1, bias=False, name=f"conv_scale{i}").batch_norm(name=f"bn_scale{i}")
                       .relu())
    y = b.concat(*outputs, scales[3]).conv(16, 1, bias=False, name="conv3").batch_norm(name="bn3")
    return randomize(b.build((y + x).relu(name="out")))


def channel_slices_around_concats(batch: int = 2) -> Graph:
    """Channel slices where the memory plan meets concats: slices of a conv, one feeding a concat (which copies
    it, a view cannot live inside the concat too); a slice of that concat; a slice of a slice, a graph output
    and a concat operand; a slice of the graph input."""
    b = Builder("slices", batch=batch)
    x = b.input("x", (4, 5, 5))
    a = x.conv(6, 1, name="a")
    first = a.channel_slice(0, 2, name="first").conv(3, 3, padding=1, name="c1")
    joined = b.concat(first, a.channel_slice(2, 6, name="rest"), name="joined")
    middle = joined.channel_slice(1, 5, name="middle")
    inner = middle.channel_slice(1, 3, name="inner")
    tail = b.concat(inner, x.channel_slice(3, 4, name="x_last"), name="tail")
    return randomize(b.build(middle.relu(name="y"), inner, tail))


def channel_slice_of_a_constant() -> Graph:
    """A constant lives among the parameters, not in the arena: its channel slice is a copy, not a view."""
    graph = Graph("slice_of_constant")
    graph.add_node("x", "input", attrs={"shape": (2, 3, 4, 4)})
    graph.add_node("c", "constant", attrs={"shape": (2, 5, 4, 4)},
                   params={"value": np.random.default_rng(9).standard_normal((2, 5, 4, 4)).astype(np.float32)})
    graph.add_node("s", "channel_slice", ["c"], attrs={"start": 1, "stop": 4})
    graph.add_node("y", "add", ["x", "s"])
    graph.set_outputs(["y"])
    return graph
