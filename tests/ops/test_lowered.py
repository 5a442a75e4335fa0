"""The lowered ops (depthwise, pointwise, strided slice, separable) and constant: each against the unlowered
conv2d graph it stands for and against torch.nn.functional, with equal MACs, parameters and receptive fields."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from backends import reference
from cnncomp.errors import GraphError, ShapeError
from cnncomp.ir import Graph
from cnncomp.ops import get_op
from cnncomp.ops.activation import ACTIVATIONS
from cnncomp.summary import receptive_fields, summarize
from tests.helpers import assert_close, one_op_graph, random, run_one_op

T = torch.from_numpy
TOL = dict(atol=1e-4, rtol=1e-4)

DEPTHWISE_CASES = [
    # (N, C, H, W), multiplier, kernel, stride, padding, dilation
    ((1, 3, 8, 8), 1, 3, 1, 1, 1),
    ((2, 4, 9, 7), 1, 3, 2, 1, 1),  # batch 2, odd sizes, stride 2
    ((1, 3, 11, 10), 2, 5, 1, 2, 1),  # channel multiplier 2
    ((1, 2, 13, 12), 3, 3, 1, 2, 2),  # dilation with padding, multiplier 3
    ((1, 5, 15, 15), 1, (3, 5), (2, 1), (1, 1, 2, 2), (2, 1)),  # non-square everything
    ((1, 2, 1, 1), 1, 1, 1, 0, 1),  # 1 pixel
]


def conv_attrs(shape, multiplier, kernel, stride, padding, dilation):
    c = shape[1]
    return dict(out_channels=c * multiplier, kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                groups=c)


@pytest.mark.parametrize("shape,multiplier,kernel,stride,padding,dilation", DEPTHWISE_CASES)
def test_depthwise_matches_grouped_conv2d_and_torch(shape, multiplier, kernel, stride, padding, dilation):
    x = random(shape, 1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    c = shape[1]
    params = {"weight": random((c * multiplier, 1, kh, kw), 2), "bias": random((c * multiplier,), 3)}
    attrs = dict(multiplier=multiplier, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    y = run_one_op("depthwise_conv2d", [x], attrs, params)
    grouped = run_one_op("conv2d", [x], conv_attrs(shape, multiplier, kernel, stride, padding, dilation), params)
    assert_close(y, grouped, **TOL)
    if isinstance(padding, tuple) and len(padding) == 4:
        top, bottom, left, right = padding
        tx, tpad = F.pad(T(x), (left, right, top, bottom)), 0
    else:
        tx, tpad = T(x), padding
    expected = F.conv2d(tx, T(params["weight"]), T(params["bias"]), stride, tpad, dilation, groups=c)
    assert_close(y, expected, **TOL)


@pytest.mark.parametrize("shape,multiplier,kernel,stride,padding,dilation", DEPTHWISE_CASES)
def test_depthwise_costs_and_receptive_field_equal_the_grouped_conv(shape, multiplier, kernel, stride, padding,
                                                                     dilation):
    attrs = dict(multiplier=multiplier, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    lowered = summarize(one_op_graph("depthwise_conv2d", [shape], attrs))
    grouped = summarize(one_op_graph("conv2d", [shape], conv_attrs(shape, multiplier, kernel, stride, padding,
                                                                   dilation)))
    for key in ("params", "macs"):
        assert lowered[key] == grouped[key]
    assert lowered["layers"][0]["receptive_field"] == grouped["layers"][0]["receptive_field"]
    assert lowered["layers"][0]["output_shape"] == grouped["layers"][0]["output_shape"]


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_depthwise_epilogue_matches_conv2d_epilogue(act):
    x, skip = random((2, 4, 6, 6), 1), random((2, 4, 6, 6), 2)
    params = {"weight": random((4, 1, 3, 3), 3), "bias": random((4,), 4), "scale": random((4,), 5),
              "shift": random((4,), 6)}
    epilogue = dict(affine=True, residual=True, act=act, alpha=0.2)
    y = run_one_op("depthwise_conv2d", [x, skip], dict(kernel=3, padding=1, **epilogue), params)
    z = run_one_op("conv2d", [x, skip], dict(out_channels=4, kernel=3, padding=1, groups=4, **epilogue), params)
    assert_close(y, z, **TOL)


@pytest.mark.parametrize("shape,out", [((1, 8, 7, 7), 4), ((3, 5, 4, 6), 9), ((2, 16, 1, 1), 4)])
def test_pointwise_matches_1x1_conv2d_and_torch(shape, out):
    x = random(shape, 1)
    w, b = random((out, shape[1]), 2), random((out,), 3)
    y = run_one_op("pointwise_conv2d", [x], dict(out_channels=out), {"weight": w, "bias": b})
    conv = run_one_op("conv2d", [x], dict(out_channels=out, kernel=1), {"weight": w[:, :, None, None], "bias": b})
    assert_close(y, conv, **TOL)
    assert_close(y, F.conv2d(T(x), T(w[:, :, None, None]), T(b)), **TOL)
    lowered = summarize(one_op_graph("pointwise_conv2d", [shape], dict(out_channels=out)))
    unlowered = summarize(one_op_graph("conv2d", [shape], dict(out_channels=out, kernel=1)))
    assert (lowered["params"], lowered["macs"]) == (unlowered["params"], unlowered["macs"])
    assert lowered["macs"] == math.prod((shape[0], out, *shape[2:])) * shape[1]


def test_pointwise_gate_and_residual_match_mul_then_conv_then_add():
    x, gate, skip = random((2, 6, 5, 4), 1), random((2, 6, 1, 1), 2), random((2, 3, 5, 4), 3)
    params = {"weight": random((3, 6), 4), "bias": random((3,), 5)}
    y = run_one_op("pointwise_conv2d", [x, gate, skip], dict(out_channels=3, gate=True, residual=True, act="relu"),
                   params)
    expected = F.relu(F.conv2d(T(x) * T(gate), T(params["weight"][:, :, None, None]), T(params["bias"])) + T(skip))
    assert_close(y, expected, **TOL)


def test_pointwise_gate_without_residual():
    x, gate = random((1, 4, 3, 3), 1), random((1, 4, 1, 1), 2)
    w = random((2, 4), 3)
    y = run_one_op("pointwise_conv2d", [x, gate], dict(out_channels=2, bias=False, gate=True), {"weight": w})
    assert_close(y, F.conv2d(T(x) * T(gate), T(w[:, :, None, None])), **TOL)


@pytest.mark.parametrize("operands,attrs,message", [
    ([(1, 4, 3, 3), (1, 3, 1, 1)], dict(gate=True), "gate has shape 1x3x1x1, expected N x C x 1 x 1 = 1x4x1x1"),
    ([(2, 4, 3, 3), (1, 4, 1, 1)], dict(gate=True), "gate has shape 1x4x1x1"),
    ([(1, 4, 3, 3)], dict(gate=True), "expects a gate operand"),
    ([(1, 4, 3, 3), (1, 4, 1, 1), (1, 3, 3, 3)], dict(gate=True, residual=True), "residual operand has shape 1x3x3x3"),
    ([(1, 4, 3, 3), (1, 2, 3, 3)], dict(), "one data operand"),
])
def test_pointwise_operand_errors_name_the_node(operands, attrs, message):
    with pytest.raises(GraphError, match=message) as info:
        one_op_graph("pointwise_conv2d", operands, dict(out_channels=2, **attrs))
    assert "node 'y' (pointwise_conv2d)" in str(info.value)


@pytest.mark.parametrize("shape,stride", [((1, 3, 8, 8), 2), ((2, 2, 9, 7), (2, 3)), ((1, 1, 5, 5), 1),
                                          ((1, 2, 1, 4), 2)])
def test_strided_slice_then_pointwise_is_a_strided_1x1_conv(shape, stride):
    x = random(shape, 1)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    sliced = run_one_op("strided_slice", [x], dict(stride=stride))
    np.testing.assert_array_equal(sliced, x[:, :, ::sh, ::sw])
    w = random((4, shape[1]), 2)
    y = run_one_op("pointwise_conv2d", [sliced], dict(out_channels=4, bias=False), {"weight": w})
    assert_close(y, F.conv2d(T(x), T(w[:, :, None, None]), stride=stride), **TOL)


def test_strided_slice_keeps_the_strided_conv_receptive_field():
    graph = Graph("sliced")
    graph.add_node("x", "input", attrs={"shape": (1, 3, 9, 9)})
    graph.add_node("a", "conv2d", ["x"], dict(out_channels=3, kernel=3))
    graph.add_node("s", "strided_slice", ["a"], dict(stride=2))
    graph.add_node("b", "conv2d", ["s"], dict(out_channels=3, kernel=3))
    conv = Graph("conv")
    conv.add_node("x", "input", attrs={"shape": (1, 3, 9, 9)})
    conv.add_node("a", "conv2d", ["x"], dict(out_channels=3, kernel=3))
    conv.add_node("s", "conv2d", ["a"], dict(out_channels=3, kernel=1, stride=2))
    conv.add_node("b", "conv2d", ["s"], dict(out_channels=3, kernel=3))
    assert receptive_fields(graph)["b"] == receptive_fields(conv)["b"] == (7, 7)


def test_strict_mode_refuses_a_slice_that_does_not_divide():
    with pytest.raises(ShapeError, match="fractions are illegal"):
        one_op_graph("strided_slice", [(1, 2, 8, 8)], dict(stride=2), strict=True)


SEPARABLE_CASES = [
    # (N, C, H, W), out, multiplier, kernel, stride, padding, dilation, mid_act
    ((1, 4, 8, 8), 6, 1, 3, 1, 1, 1, None),  # Xception: nothing between the steps
    ((2, 3, 9, 9), 5, 1, 3, 2, 1, 1, "relu6"),  # MobileNet: bias and relu6 between
    ((1, 3, 10, 10), 4, 2, 5, 1, 2, 1, "silu"),  # EfficientNet's 5x5, with a multiplier
    ((1, 2, 11, 11), 3, 1, 3, 1, 2, 2, "leaky_relu"),
]


@pytest.mark.parametrize("shape,out,multiplier,kernel,stride,padding,dilation,mid_act", SEPARABLE_CASES)
def test_separable_matches_depthwise_then_pointwise_and_torch(shape, out, multiplier, kernel, stride, padding,
                                                              dilation, mid_act):
    c = shape[1]
    mid = c * multiplier
    x = random(shape, 1)
    params = {"depthwise_weight": random((mid, 1, kernel, kernel), 2), "pointwise_weight": random((out, mid), 3),
              "bias": random((out,), 4)}
    if mid_act is not None:
        params["mid_bias"] = random((mid,), 5)
    attrs = dict(out_channels=out, multiplier=multiplier, kernel=kernel, stride=stride, padding=padding,
                 dilation=dilation, mid_bias=mid_act is not None, mid_act=mid_act, mid_alpha=0.1, act="relu")
    graph = one_op_graph("separable_conv2d", [shape], attrs, params)
    y = reference.run(graph, {"x0": x})["y"]

    t = F.conv2d(T(x), T(params["depthwise_weight"]), None, stride, padding, dilation, groups=c)
    if mid_act is not None:
        t = t + T(params["mid_bias"]).reshape(1, -1, 1, 1)
        t = {"relu6": F.relu6, "silu": F.silu, "leaky_relu": lambda v: F.leaky_relu(v, 0.1)}[mid_act](t)
    expected = F.relu(F.conv2d(t, T(params["pointwise_weight"][:, :, None, None]), T(params["bias"])))
    assert_close(y, expected, **TOL)

    # The same MACs and parameters as the depthwise and pointwise convolutions it replaces.
    dw = one_op_graph("depthwise_conv2d", [shape], dict(multiplier=multiplier, kernel=kernel, stride=stride,
                                                        padding=padding, dilation=dilation, bias=mid_act is not None))
    dw_type = dw.node("y").shape
    pw = one_op_graph("pointwise_conv2d", [dw_type], dict(out_channels=out))
    assert summarize(graph)["macs"] == summarize(dw)["macs"] + summarize(pw)["macs"]
    assert summarize(graph)["params"] == summarize(dw)["params"] + summarize(pw)["params"]
    assert receptive_fields(graph)["y"] == receptive_fields(dw)["y"]


def test_separable_with_residual_and_affine():
    x, skip = random((2, 4, 6, 6), 1), random((2, 5, 6, 6), 2)
    params = {"depthwise_weight": random((4, 1, 3, 3), 3), "pointwise_weight": random((5, 4), 4),
              "scale": random((5,), 5), "shift": random((5,), 6)}
    y = run_one_op("separable_conv2d", [x, skip], dict(out_channels=5, kernel=3, padding=1, bias=False,
                                                       affine=True, residual=True, act="silu"), params)
    t = F.conv2d(F.conv2d(T(x), T(params["depthwise_weight"]), padding=1, groups=4),
                 T(params["pointwise_weight"][:, :, None, None]))
    expected = F.silu(t * T(params["scale"]).reshape(1, -1, 1, 1) + T(params["shift"]).reshape(1, -1, 1, 1)
                      + T(skip))
    assert_close(y, expected, **TOL)


def test_separable_weight_layouts_are_declared():
    node = one_op_graph("separable_conv2d", [(1, 3, 5, 5)], dict(out_channels=7, kernel=3, multiplier=2,
                                                                 mid_bias=True)).node("y")
    specs = get_op(node.op).params(node.attrs, [one_op_graph("identity", [(1, 3, 5, 5)]).node("x0").type])
    assert {k: s.shape for k, s in specs.items()} == {
        "depthwise_weight": (6, 1, 3, 3), "mid_bias": (6,), "pointwise_weight": (7, 6), "bias": (7,)}


def test_constant_yields_its_value_and_is_not_a_learned_parameter():
    value = random((1, 3, 1, 1), 1)
    graph = Graph("const")
    graph.add_node("c", "constant", attrs={"shape": (1, 3, 1, 1)}, params={"value": value})
    graph.set_outputs(["c"])
    out = reference.run(graph, {})["c"]
    np.testing.assert_array_equal(out, value)
    out[...] = 0  # the caller owns what it gets; the graph's value stays
    np.testing.assert_array_equal(graph.params["c.value"], value)
    summary = summarize(graph)
    assert (summary["params"], summary["buffers"]) == (0, 3)
    with pytest.raises(GraphError, match="parameter 'value' has shape"):
        graph.set_node_params("c", {"value": np.zeros((3,), np.float32)})
