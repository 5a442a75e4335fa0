"""conv2d and conv_transpose2d references against torch.nn.functional over their attribute space."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backends.torch_eager import torch_function
from cnncomp.ops.activation import ACTIVATIONS
from tests.helpers import assert_close, random, run_one_op

T = torch.from_numpy

CONV_CASES = [
    # (N, C, H, W), out_channels, kernel, stride, padding, dilation, groups
    ((1, 3, 8, 8), 4, 3, 1, 0, 1, 1),
    ((2, 3, 9, 7), 5, 3, 1, 1, 1, 1),  # odd sizes, batch 2
    ((1, 4, 11, 11), 6, 3, 2, 1, 1, 2),
    ((1, 3, 10, 10), 2, 2, 3, 0, 1, 1),  # stride > kernel
    ((1, 2, 13, 12), 3, 3, 1, 2, 2, 1),  # dilation with padding
    ((1, 3, 15, 15), 3, (3, 5), (2, 1), (1, 2), (2, 1), 1),  # non-square everything
    ((2, 6, 9, 9), 6, 3, 1, 1, 1, 6),  # depthwise: groups = in_channels
    ((1, 6, 9, 9), 12, 5, 2, 2, 1, 6),  # depthwise with channel multiplier 2
    ((1, 8, 7, 7), 4, 1, 1, 0, 1, 1),  # 1x1
    ((1, 3, 227, 227), 8, 11, 4, 0, 1, 1),  # AlexNet's first layer shape
    ((1, 1, 1, 1), 2, 1, 1, 0, 1, 1),  # 1 pixel
]


@pytest.mark.parametrize("shape,out,kernel,stride,padding,dilation,groups", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_matches_torch(shape, out, kernel, stride, padding, dilation, groups, bias):
    x = random(shape, 1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = random((out, shape[1] // groups, kh, kw), 2)
    params = {"weight": w}
    if bias:
        params["bias"] = random((out,), 3)
    y = run_one_op("conv2d", [x], dict(out_channels=out, kernel=kernel, stride=stride, padding=padding,
                                       dilation=dilation, groups=groups, bias=bias), params)
    expected = F.conv2d(T(x), T(w), T(params["bias"]) if bias else None, stride, padding, dilation, groups)
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_conv2d_asymmetric_pads_match_torch_pad_then_conv():
    x, w = random((1, 2, 9, 8), 1), random((3, 2, 3, 3), 2)
    y = run_one_op("conv2d", [x], dict(out_channels=3, kernel=3, padding=(0, 2, 1, 3), bias=False), {"weight": w})
    expected = F.conv2d(F.pad(T(x), (1, 3, 0, 2)), T(w))
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("kernel,dilation", [(3, 1), (5, 1), (3, 2), (4, 1)])
def test_conv2d_same_padding_keeps_size_like_torch(kernel, dilation):
    x, w = random((1, 2, 10, 7), 1), random((3, 2, kernel, kernel), 2)
    y = run_one_op("conv2d", [x], dict(out_channels=3, kernel=kernel, padding="same", dilation=dilation,
                                       bias=False), {"weight": w})
    expected = F.conv2d(T(x), T(w), padding="same", dilation=dilation)
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("act", [*ACTIVATIONS, None])
def test_conv2d_fused_epilogue_matches_torch_composition(act):
    """conv -> bias -> per-channel affine -> + residual -> activation, in that order."""
    x, w, b = random((2, 3, 8, 8), 1), random((4, 3, 3, 3), 2), random((4,), 3)
    scale, shift, skip = random((4,), 4), random((4,), 5), random((2, 4, 8, 8), 6)
    graph_params = {"weight": w, "bias": b, "scale": scale, "shift": shift}
    y = run_one_op("conv2d", [x, skip], dict(out_channels=4, kernel=3, padding=1, affine=True, residual=True,
                                             act=act, alpha=0.2), graph_params)
    z = F.conv2d(T(x), T(w), T(b), padding=1) * T(scale).view(1, -1, 1, 1) + T(shift).view(1, -1, 1, 1) + T(skip)
    if act is not None:
        spelling = ACTIVATIONS[act].torch
        z = torch_function(spelling.name)(z, **spelling.arguments({"alpha": 0.2}))
    assert_close(y, z, atol=1e-4, rtol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 2), c_per_group=st.integers(1, 3), groups=st.integers(1, 3), o_per_group=st.integers(1, 3),
    h=st.integers(1, 12), w=st.integers(1, 12), kh=st.integers(1, 4), kw=st.integers(1, 4),
    sh=st.integers(1, 4), sw=st.integers(1, 4), dh=st.integers(1, 3), dw=st.integers(1, 3),
    ph=st.integers(0, 3), pw=st.integers(0, 3),
)
def test_conv2d_random_attributes_match_torch(n, c_per_group, groups, o_per_group, h, w, kh, kw, sh, sw, dh, dw,
                                              ph, pw):
    if h + 2 * ph < dh * (kh - 1) + 1 or w + 2 * pw < dw * (kw - 1) + 1:
        return  # kernel larger than the padded input: refused at build time (tested in test_shape_errors)
    c, o = c_per_group * groups, o_per_group * groups
    x, weight = random((n, c, h, w), 1), random((o, c_per_group, kh, kw), 2)
    y = run_one_op("conv2d", [x], dict(out_channels=o, kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw),
                                       dilation=(dh, dw), groups=groups, bias=False), {"weight": weight})
    expected = F.conv2d(T(x), T(weight), None, (sh, sw), (ph, pw), (dh, dw), groups)
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


TRANSPOSE_CASES = [
    # (N, C, H, W), out_channels, kernel, stride, padding, output_padding, dilation, groups
    ((1, 4, 5, 5), 3, 2, 2, 0, 0, 1, 1),  # U-Net's 2x2 up-convolution
    ((2, 3, 4, 6), 2, 3, 2, 1, 1, 1, 1),
    ((1, 2, 3, 3), 4, 3, 1, 0, 0, 1, 1),
    ((1, 4, 5, 4), 4, 3, 3, 1, 2, 1, 2),  # groups, output_padding < stride
    ((1, 2, 4, 4), 2, 3, 1, 1, 0, 2, 1),  # dilation
    ((1, 3, 7, 7), 2, 4, 2, 1, 0, 1, 1),  # FCN-style 2x upsampling
    ((1, 2, 3, 5), 3, (2, 3), (3, 1), (0, 1), (1, 0), 1, 1),
    ((1, 3, 4, 4), 3, 16, 8, 4, 0, 1, 3),  # FCN-8s-like 8x, depthwise
]


@pytest.mark.parametrize("shape,out,kernel,stride,padding,output_padding,dilation,groups", TRANSPOSE_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_matches_torch(shape, out, kernel, stride, padding, output_padding, dilation, groups,
                                        bias):
    x = random(shape, 1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    w = random((shape[1], out // groups, kh, kw), 2)
    params = {"weight": w}
    if bias:
        params["bias"] = random((out,), 3)
    y = run_one_op("conv_transpose2d", [x], dict(out_channels=out, kernel=kernel, stride=stride, padding=padding,
                                                 output_padding=output_padding, dilation=dilation, groups=groups,
                                                 bias=bias), params)
    expected = F.conv_transpose2d(T(x), T(w), T(params["bias"]) if bias else None, stride, padding,
                                  output_padding, groups, dilation)
    assert_close(y, expected, atol=1e-4, rtol=1e-4)


def test_dense_matches_torch_linear():
    x, w, b = random((3, 20), 1), random((7, 20), 2), random((7,), 3)
    y = run_one_op("dense", [x], dict(out_features=7), {"weight": w, "bias": b})
    assert_close(y, F.linear(T(x), T(w), T(b)), atol=1e-5, rtol=1e-5)


def test_dense_epilogue_residual_and_activation():
    x, w, skip = random((2, 5), 1), random((4, 5), 2), random((2, 4), 3)
    y = run_one_op("dense", [x, skip], dict(out_features=4, bias=False, residual=True, act="relu"), {"weight": w})
    assert_close(y, F.relu(F.linear(T(x), T(w)) + T(skip)))


def test_conv_output_is_float32():
    y = run_one_op("conv2d", [random((1, 1, 4, 4))], dict(out_channels=1, kernel=3, bias=False),
                   {"weight": np.ones((1, 1, 3, 3), np.float32)})
    assert y.dtype == np.float32
