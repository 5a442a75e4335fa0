"""The building blocks of the zoo's models end to end on numba-cuda, in the simulator, at -O0 (every op on its own)
and -O3 (folded, lowered, fused, planned: the kernels the backend runs for real models), against the reference.

The simulator costs about 2 ms per simulated thread, so the CI set shrinks the blocks of tests/models.py to a few
channels on small maps (same structure); the blocks at the sizes of tests/models.py are in the slow set."""

from __future__ import annotations

import numpy as np
import pytest

import backends.numba_cuda as numba_cuda
from backends import reference
from cnncomp.ir import Graph
from cnncomp.pipeline import optimize
from frontends.builder import Builder
from tests import models
from tests.helpers import random_inputs, randomize

ATOL = 1e-4
RTOL = 1e-3


def residual_stage(batch: int = 1) -> Graph:
    """ResNet: a basic block with a projection shortcut (stride 2), then one with the identity shortcut."""
    b = Builder("residual_stage", batch=batch)
    x = b.input("x", (4, 7, 7))
    y = x.conv(6, 3, stride=2, padding=1, bias=False).batch_norm().relu().conv(6, 3, padding=1, bias=False)
    x = (y.batch_norm() + x.conv(6, 1, stride=2, bias=False).batch_norm()).relu()
    y = x.conv(6, 3, padding=1, bias=False).batch_norm().relu().conv(6, 3, padding=1, bias=False).batch_norm()
    return randomize(b.build((y + x).relu(name="out")))


def inception_module(batch: int = 1) -> Graph:
    b = Builder("inception", batch=batch)
    x = b.input("x", (6, 5, 5))
    branches = [
        x.conv(4, 1).relu(),
        x.conv(3, 1).relu().conv(4, 3, padding=1).relu(),
        x.conv(2, 1).relu().conv(3, 5, padding=2).relu(),
        x.max_pool(3, 1, 1).conv(2, 1).relu(),
    ]
    return randomize(b.build(b.concat(*branches, name="out")))


def mbconv(batch: int = 1) -> Graph:
    """EfficientNet: expand 1x1, depthwise 3x3, squeeze-and-excitation, project 1x1, residual."""
    b = Builder("mbconv", batch=batch)
    x = b.input("x", (4, 6, 6))
    y = x.conv(8, 1, bias=False).batch_norm().silu()
    y = y.conv(8, 3, padding=1, groups=8, bias=False).batch_norm().silu()
    gate = y.global_avg_pool().conv(2, 1).silu().conv(8, 1).sigmoid()
    y = (y * gate).conv(4, 1, bias=False).batch_norm()
    return randomize(b.build(y + x))


def unet_level(batch: int = 1) -> Graph:
    """U-Net: two valid convs, down, conv, up-convolution, copy-and-crop, concat, 1x1 conv."""
    b = Builder("unet_level", batch=batch)
    x = b.input("x", (2, 12, 12))
    enc = x.conv(4, 3).relu().conv(4, 3).relu()
    down = enc.max_pool(2).conv(6, 3).relu()
    up = down.conv_transpose(4, 2, stride=2)
    merged = b.concat(enc.crop(up), up)
    return randomize(b.build(merged.conv(2, 1, name="out")))


def separable_stack(batch: int = 1) -> Graph:
    """Xception: depthwise 3x3 then pointwise 1x1, twice, with a projection shortcut."""
    b = Builder("separable", batch=batch)
    x = b.input("x", (4, 6, 6))
    y = x.relu().conv(4, 3, padding=1, groups=4, bias=False).conv(6, 1, bias=False).batch_norm().relu()
    y = y.conv(6, 3, padding=1, groups=6, bias=False).conv(6, 1, bias=False).batch_norm()
    return randomize(b.build(y + x.conv(6, 1, bias=False).batch_norm()))


def fcn_head(batch: int = 1) -> Graph:
    """FCN-8s: fully convolutional scores at 1/8, 2x up-convolutions fused with scores of pool4 and pool3, then an
    up-convolution back to the input size and a softmax over the classes of every pixel."""
    b = Builder("fcn_head", batch=batch)
    x = b.input("image", (3, 8, 8))
    pool3 = x.conv(4, 3, padding="same").relu().max_pool(2)
    pool4 = pool3.conv(4, 3, padding="same").relu().max_pool(2)
    pool5 = pool4.conv(4, 3, padding="same").relu().max_pool(2)
    score = pool5.conv(8, 1).relu().dropout(0.5).conv(8, 1).relu().conv(3, 1)
    score = score.conv_transpose(3, 4, stride=2, padding=1, bias=False) + pool4.conv(3, 1)
    score = score.conv_transpose(3, 4, stride=2, padding=1, bias=False) + pool3.conv(3, 1)
    return randomize(b.build(score.conv_transpose(3, 4, stride=2, padding=1, bias=False).softmax()))


BLOCKS = [residual_stage, inception_module, mbconv, unet_level, separable_stack, fcn_head]


def check(graph: Graph, level: int) -> numba_cuda.CudaExecutable:
    optimized, _ = optimize(graph, level)
    inputs = random_inputs(graph)
    expected = reference.run(graph, inputs)
    executable = numba_cuda.compile(optimized)
    actual = executable(inputs)
    for name in graph.outputs:
        scale = float(np.abs(expected[name]).max())
        np.testing.assert_allclose(actual[name], expected[name], atol=ATOL * scale, rtol=RTOL, err_msg=name)
    return executable


@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("build", BLOCKS, ids=lambda build: build.__name__)
def test_block(build, level):
    check(build(batch=2 if build in (residual_stage, mbconv) else 1), level)


def test_lowered_kernels_run_at_o3():
    """-O3 turns the blocks into the fused and lowered ops; make sure the simulator ran them, not only conv2d."""
    ops = set()
    for build in BLOCKS:
        ops |= {node.op for node in optimize(build(), 3)[0].nodes}
    assert {"depthwise_conv2d", "pointwise_conv2d", "separable_conv2d"} <= ops
    mbconv_ops = [node for node in optimize(mbconv(), 3)[0].nodes if node.op == "pointwise_conv2d"]
    assert any(node.attrs["gate"] for node in mbconv_ops)


@pytest.mark.slow
@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("build", [models.basic_block, models.inception_module, models.unet_level, models.mbconv,
                                   models.separable_stack], ids=lambda build: build.__name__)
def test_block_at_the_size_of_the_cpu_tests(build, level):
    check(build(), level)
