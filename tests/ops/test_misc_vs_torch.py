"""Activations, normalizations, elementwise, shape ops and upsampling against torch."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backends.torch_eager import torch_function
from cnncomp.ops import get_op
from cnncomp.ops.activation import ACTIVATIONS
from tests.helpers import assert_close, random, run_one_op

T = torch.from_numpy


@pytest.mark.parametrize("op", [*ACTIVATIONS, "swish"])
def test_activation_matches_torch(op):
    """Each activation's numpy formula against the torch function its registry entry names."""
    x = random((2, 3, 5, 7), 1, scale=4.0)
    x[0, 0, 0, :4] = [-100.0, 100.0, 0.0, -3.0]  # saturation, zero and hardswish's knee
    spelling = get_op(op).torch
    expected = torch_function(spelling.name)(T(x), **spelling.arguments({"alpha": 0.01}))
    assert_close(run_one_op(op, [x]), expected, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("alpha", [0.01, 0.2])
def test_leaky_relu_matches_torch(alpha):
    x = random((1, 2, 4, 4), 1)
    assert_close(run_one_op("leaky_relu", [x], {"alpha": alpha}), F.leaky_relu(T(x), alpha), atol=0, rtol=0)


def test_sigmoid_does_not_overflow_for_large_inputs():
    x = np.array([[-1000.0, -88.0, 0.0, 88.0, 1000.0]], np.float32)
    with np.errstate(over="raise", invalid="raise"):
        y = run_one_op("sigmoid", [x])
    assert_close(y, torch.sigmoid(T(x)), atol=1e-7, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 4, 5, 5), (3, 6)])
def test_batch_norm_inference_matches_torch(shape):
    c = shape[1]
    x = random(shape, 1)
    params = {"weight": random((c,), 2), "bias": random((c,), 3), "running_mean": random((c,), 4),
              "running_var": np.abs(random((c,), 5)) + 0.1}
    y = run_one_op("batch_norm", [x], {"eps": 1e-3}, params)
    expected = F.batch_norm(T(x), T(params["running_mean"]), T(params["running_var"]), T(params["weight"]),
                            T(params["bias"]), training=False, eps=1e-3)
    assert_close(y, expected)


@pytest.mark.parametrize("size,alpha,beta,k", [(5, 1e-4, 0.75, 2.0), (3, 0.5, 0.5, 1.0), (4, 2e-3, 1.0, 1.5),
                                               (1, 1.0, 0.75, 1.0), (7, 1e-2, 0.75, 2.0)])
def test_lrn_matches_torch(size, alpha, beta, k):
    x = random((2, 6, 5, 5), 1, scale=3.0)
    y = run_one_op("lrn", [x], dict(size=size, alpha=alpha, beta=beta, k=k))
    assert_close(y, F.local_response_norm(T(x), size, alpha, beta, k))


@pytest.mark.parametrize("shape,axis", [((3, 10), 1), ((2, 5, 3, 3), 1), ((2, 5, 3, 4), 3)])
def test_softmax_matches_torch(shape, axis):
    x = random(shape, 1, scale=10.0)
    assert_close(run_one_op("softmax", [x], {"axis": axis}), F.softmax(T(x), axis), atol=1e-6, rtol=1e-5)


def test_flatten_dropout_identity():
    x = random((2, 3, 4, 5), 1)
    assert_close(run_one_op("flatten", [x]), torch.flatten(T(x), 1), atol=0, rtol=0)
    assert_close(run_one_op("dropout", [x], {"rate": 0.3}), x, atol=0, rtol=0)
    assert_close(run_one_op("identity", [x]), x, atol=0, rtol=0)


@pytest.mark.parametrize("op,fn", [("add", torch.add), ("mul", torch.mul)])
@pytest.mark.parametrize("shape_a,shape_b", [((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 3, 4, 4), (2, 3, 1, 1)),
                                             ((2, 3, 1, 1), (2, 3, 4, 4)), ((2, 7), (2, 7))])
def test_binary_ops_match_torch(op, fn, shape_a, shape_b):
    a, b = random(shape_a, 1), random(shape_b, 2)
    assert_close(run_one_op(op, [a, b]), fn(T(a), T(b)), atol=0, rtol=0)


def test_concat_keeps_operand_order_like_torch_cat():
    a, b, c = random((1, 2, 3, 3), 1), random((1, 5, 3, 3), 2), random((1, 1, 3, 3), 3)
    assert_close(run_one_op("concat", [a, b, c]), torch.cat([T(a), T(b), T(c)], 1), atol=0, rtol=0)
    assert_close(run_one_op("concat", [c, a]), torch.cat([T(c), T(a)], 1), atol=0, rtol=0)


@pytest.mark.parametrize("shape,start,stop", [((2, 7, 3, 4), 2, 6), ((1, 5, 2, 2), 0, 5), ((3, 9), 4, 9),
                                              ((2, 6, 1, 1), 5, 6)])
def test_channel_slice_matches_torch_narrow(shape, start, stop):
    x = random(shape, 1)
    assert_close(run_one_op("channel_slice", [x], {"start": start, "stop": stop}),
                 torch.narrow(T(x), 1, start, stop - start), atol=0, rtol=0)


def test_channel_slices_of_a_split_match_torch_split():
    """Res2Net's scales: torch.split's parts, each a channel_slice."""
    x = random((2, 10, 3, 3), 1)
    start = 0
    for part in torch.split(T(x), [3, 3, 3, 1], 1):
        stop = start + part.shape[1]
        assert_close(run_one_op("channel_slice", [x], {"start": start, "stop": stop}), part, atol=0, rtol=0)
        start = stop


@pytest.mark.parametrize("mode,torch_mode", [("zeros", "constant"), ("reflect", "reflect"),
                                             ("replicate", "replicate")])
@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 2, 3, 1), (2, 0, 0, 1)])
def test_pad_matches_torch(mode, torch_mode, pads):
    x = random((1, 2, 5, 6), 1)
    top, bottom, left, right = pads
    y = run_one_op("pad", [x], {"pads": pads, "mode": mode})
    assert_close(y, F.pad(T(x), (left, right, top, bottom), mode=torch_mode), atol=0, rtol=0)


@pytest.mark.parametrize("big,small", [((1, 2, 64, 64), (1, 3, 56, 56)), ((1, 1, 7, 9), (1, 1, 4, 4)),
                                       ((2, 2, 5, 5), (2, 1, 5, 5))])
def test_crop_takes_the_center(big, small):
    x, ref = random(big, 1), random(small, 2)
    top, left = (big[2] - small[2]) // 2, (big[3] - small[3]) // 2
    expected = x[:, :, top: top + small[2], left: left + small[3]]
    assert_close(run_one_op("crop", [x, ref]), expected, atol=0, rtol=0)


UPSAMPLE_CASES = [
    # mode, align_corners, scale, size, input H x W
    ("nearest", False, 2, None, (5, 6)),
    ("nearest", False, 3, None, (4, 3)),
    ("nearest", False, 1.5, None, (5, 7)),
    ("nearest", False, None, (7, 11), (5, 3)),
    ("nearest", False, None, (3, 2), (8, 7)),  # downsampling
    ("bilinear", False, 2, None, (5, 6)),
    ("bilinear", True, 2, None, (5, 6)),
    ("bilinear", False, 1.7, None, (6, 5)),
    ("bilinear", False, None, (9, 13), (4, 5)),
    ("bilinear", True, None, (9, 13), (4, 5)),
    ("bilinear", True, None, (1, 1), (4, 5)),
    ("bicubic", False, 2, None, (5, 6)),
    ("bicubic", True, 2, None, (5, 6)),
    ("bicubic", False, None, (10, 7), (4, 6)),
    ("bicubic", True, None, (10, 7), (4, 6)),
    ("bilinear", False, 10, None, (3, 3)),  # the lecture's x10
    ("bicubic", False, 10, None, (3, 3)),
]


@pytest.mark.parametrize("mode,align_corners,scale,size,hw", UPSAMPLE_CASES)
def test_upsample_matches_torch_interpolate(mode, align_corners, scale, size, hw):
    x = random((2, 3, *hw), 1)
    attrs = {"mode": mode, "align_corners": align_corners}
    attrs.update({"scale": scale} if scale is not None else {"size": size})
    y = run_one_op("upsample", [x], attrs)
    expected = F.interpolate(T(x), size=size, scale_factor=scale, mode=mode,
                             align_corners=align_corners if mode != "nearest" else None)
    assert_close(y, expected, atol=1e-5, rtol=1e-5)
