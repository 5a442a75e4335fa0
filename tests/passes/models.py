"""Models written with the builder for the pass tests (the patterns of the lecture's architectures), and the
check the pass tests share: outputs before and after a rewrite compared on the reference backend (on
`tests.helpers.random_inputs`)."""

from __future__ import annotations

import runpy
from collections import Counter
from pathlib import Path

import numpy as np

from backends import reference
from cnncomp.ir import Graph
from frontends.builder import Builder, Value
from tests.helpers import random_inputs

EXAMPLES = Path(__file__).parents[2] / "examples"


def assert_same_outputs(before: Graph, after: Graph, seed: int = 0, rtol: float = 1e-4, atol: float = 1e-4) -> None:
    """Both graphs on the reference backend, on the same random inputs: equal outputs (names and shapes too)."""
    assert_outputs(reference.run(before, random_inputs(before, seed)), after, seed, rtol, atol)


def assert_outputs(expected: dict[str, np.ndarray], after: Graph, seed: int = 0, rtol: float = 1e-4,
                   atol: float = 1e-4) -> None:
    """`after` on the reference backend gives `expected` on the random inputs of `seed`. `atol` is relative to
    the largest magnitude of each output, so deep nets with large activations compare fairly and near-zero
    values do not make the relative error meaningless."""
    actual = reference.run(after, random_inputs(after, seed))
    assert list(actual) == list(expected)
    for name, value in expected.items():
        assert actual[name].shape == value.shape, name
        scale = max(float(np.abs(value).max()), 1.0)
        np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=atol * scale, err_msg=name)


def op_counts(graph: Graph) -> Counter:
    return Counter(node.op for node in graph.nodes)


# ----- the models ------------------------------------------------------------------------------------------
def bottleneck(b: Builder, x: Value, width: int, stride: int, project: bool) -> Value:
    """ResNet-50's bottleneck (v1.5: the stride on the 3x3 conv), batch norm after every conv."""
    y = x.conv(width, 1, bias=False, name="conv1").batch_norm(name="bn1").relu(name="relu1")
    y = y.conv(width, 3, stride, padding=1, bias=False, name="conv2").batch_norm(name="bn2").relu(name="relu2")
    y = y.conv(width * 4, 1, bias=False, name="conv3").batch_norm(name="bn3")
    shortcut = x
    if project:
        shortcut = x.conv(width * 4, 1, stride, bias=False, name="downsample").batch_norm(name="downsample_bn")
    return (y + shortcut).relu(name="relu3")


def resnet(depths=(3, 4, 6, 3), size: int = 224, classes: int = 1000, batch: int = 1,
           name: str = "resnet50") -> Graph:
    """ResNet-50 (depths 3, 4, 6, 3) as torchvision builds it."""
    b = Builder(name, batch=batch)
    x = b.input("image", (3, size, size))
    with b.scope("stem"):
        x = x.conv(64, 7, 2, padding=3, bias=False, name="conv").batch_norm(name="bn").relu(name="relu")
        x = x.max_pool(3, 2, padding=1, name="pool")
    channels = 64
    for stage, (depth, width) in enumerate(zip(depths, (64, 128, 256, 512), strict=True), start=1):
        for index in range(depth):
            with b.scope(f"layer{stage}"), b.scope(str(index)):
                stride = 2 if index == 0 and stage > 1 else 1
                x = bottleneck(b, x, width, stride, project=index == 0)
        channels = width * 4
    del channels
    return b.build(x.global_avg_pool(name="pool").flatten(name="flatten").dense(classes, name="fc"))


def bottleneck_stage(size: int = 12, batch: int = 2) -> Graph:
    """A ResNet stage: a strided bottleneck with projection, then one with the identity shortcut."""
    b = Builder("bottleneck_stage", batch=batch)
    x = b.input("x", (16, size, size))
    for index in range(2):
        with b.scope("layer2"), b.scope(str(index)):
            x = bottleneck(b, x, 8, 2 if index == 0 else 1, project=index == 0)
    return b.build(x)


def inception(b: Builder, x: Value, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool: int) -> Value:
    """GoogLeNet's inception module with dimension reductions (biases and ReLUs, no batch norm)."""
    branch1 = x.conv(c1, 1, name="1x1").relu()
    branch2 = x.conv(c3r, 1, name="3x3_reduce").relu().conv(c3, 3, padding=1, name="3x3").relu()
    branch3 = x.conv(c5r, 1, name="5x5_reduce").relu().conv(c5, 5, padding=2, name="5x5").relu()
    branch4 = x.max_pool(3, 1, padding=1).conv(pool, 1, name="pool_proj").relu()
    return b.concat(branch1, branch2, branch3, branch4, name="output")


def inception_net(size: int = 14, batch: int = 2) -> Graph:
    b = Builder("inception", batch=batch)
    x = b.input("x", (24, size, size))
    with b.scope("inception_3a"):
        x = inception(b, x, 8, 6, 8, 2, 4, 4)
    with b.scope("inception_3b"):
        x = inception(b, x, 8, 8, 12, 4, 6, 6)
    return b.build(x.max_pool(3, 2, padding=1).global_avg_pool().flatten().dropout(0.4).dense(10, name="fc"))


def separable(x: Value, out: int, name: str) -> Value:
    """Xception's separable conv: depthwise 3x3 then pointwise, no bias and nothing between."""
    depthwise = x.conv(x.channels, 3, padding=1, groups=x.channels, bias=False, name=f"{name}_depthwise")
    return depthwise.conv(out, 1, bias=False, name=f"{name}_pointwise")


def xception_blocks(size: int = 16, batch: int = 2) -> Graph:
    """An Xception entry-flow block (strided, with a 1x1 stride-2 projection) and a middle-flow block."""
    b = Builder("xception_blocks", batch=batch)
    x = b.input("x", (8, size, size))
    with b.scope("entry_block"):
        residual = x.conv(16, 1, 2, bias=False, name="residual").batch_norm(name="residual_bn")
        y = separable(x, 16, "sep1").batch_norm(name="bn1").relu()
        y = separable(y, 16, "sep2").batch_norm(name="bn2").max_pool(3, 2, padding=1)
        x = y + residual
    with b.scope("middle_block"):
        y = x
        for index in range(1, 4):
            y = separable(y.relu(), 16, f"sep{index}").batch_norm(name=f"bn{index}")
        x = y + x
    return b.build(x.relu())


def inverted_residual(x: Value, expand: int, out: int, stride: int, kernel: int = 3, act: str = "relu6",
                      se: bool = False) -> Value:
    """MobileNetV2's inverted residual (relu6); with act="silu" and se=True, EfficientNet's MBConv."""
    hidden = x.channels * expand
    y = x.conv(hidden, 1, bias=False, name="expand").batch_norm(name="expand_bn")
    y = getattr(y, act)(name="expand_act")
    y = y.conv(hidden, kernel, stride, padding="same", groups=hidden, bias=False, name="depthwise")
    y = getattr(y.batch_norm(name="depthwise_bn"), act)(name="depthwise_act")
    if se:
        squeezed = max(1, x.channels // 4)
        gate = y.global_avg_pool(name="se_pool").conv(squeezed, 1, name="se_reduce").silu()
        gate = gate.conv(hidden, 1, name="se_expand").sigmoid(name="se_gate")
        y = y * gate
    y = y.conv(out, 1, bias=False, name="project").batch_norm(name="project_bn")
    return y + x if stride == 1 and x.channels == out else y


def mobile_blocks(size: int = 12, batch: int = 2, se: bool = False) -> Graph:
    """Two MobileNetV2 blocks (or, with se=True, two EfficientNet MBConv blocks with SE and silu)."""
    act = "silu" if se else "relu6"
    b = Builder("mbconv_se" if se else "mobilenet_v2_blocks", batch=batch)
    x = b.input("x", (8, size, size))
    with b.scope("block1"):
        x = inverted_residual(x, 4, 12, 2, kernel=5 if se else 3, act=act, se=se)
    with b.scope("block2"):
        x = inverted_residual(x, 4, 12, 1, act=act, se=se)
    return b.build(x)


def unet_level(size: int = 20, batch: int = 1, padded: bool = False) -> Graph:
    """One U-Net level: two 3x3 convs (unpadded as in the paper, or padded), 2x2 max pool, the bottom two
    convs, a 2x2 up-convolution halving the channels, copy-and-crop of the skip, concat, two convs, 1x1 conv."""
    padding = 1 if padded else 0
    b = Builder("unet_padded" if padded else "unet_level", batch=batch)
    x = b.input("image", (1, size, size))
    with b.scope("down1"):
        skip = x.conv(8, 3, padding=padding).relu().conv(8, 3, padding=padding).relu(name="skip")
    with b.scope("bottom"):
        y = skip.max_pool(2).conv(16, 3, padding=padding).relu().conv(16, 3, padding=padding).relu()
    with b.scope("up1"):
        up = y.conv_transpose(8, 2, 2, name="upconv")
        copied = skip if padded else skip.crop(up, name="crop")
        y = b.concat(copied, up, name="concat").conv(8, 3, padding=padding).relu()
        y = y.conv(8, 3, padding=padding).relu()
    return b.build(y.conv(2, 1, name="classes"))


def vgg16(size: int = 224) -> Graph:
    return runpy.run_path(str(EXAMPLES / "vgg16.py"))["build"](size=size)
