"""Every worked example of the lecture, with the lecture's own numbers."""

from fractions import Fraction

import numpy as np
import pytest

from backends import reference
from cnncomp.errors import ShapeError
from cnncomp.summary import summarize
from frontends.builder import Builder
from tests.helpers import one_op_graph, run_one_op

SIGNAL = [4, 3, 2, -5, 3, 5, 2, 5, 5, 6]
BOX = np.full((1, 1, 1, 3), 1 / 3, np.float32)


def as_float32(values):
    return np.array([float(Fraction(v)) for v in values], np.float32)


def box_filter(padding):
    x = np.array(SIGNAL, np.float32).reshape(1, 1, 1, 10)
    y = run_one_op("conv2d", [x], dict(out_channels=1, kernel=(1, 3), padding=padding, bias=False),
                   {"weight": BOX})
    return y.reshape(-1)


def test_box_filter_shrink():
    np.testing.assert_allclose(box_filter(0), as_float32(["3", "0", "0", "1", "10/3", "4", "4", "16/3"]),
                               rtol=1e-6, atol=1e-6)


def test_box_filter_zero_padding():
    expected = as_float32(["7/3", "3", "0", "0", "1", "10/3", "4", "4", "16/3", "11/3"])
    np.testing.assert_allclose(box_filter((0, 1)), expected, rtol=1e-6, atol=1e-6)


FILTERS = {
    "edge": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
    "box_mean": np.ones((3, 3)) / 9,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    "gaussian": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16,
}


def direct_filter(image, kernel):
    """The definition, one output pixel at a time: sum of kernel-weighted neighbours (valid positions)."""
    h, w = image.shape
    out = np.zeros((h - 2, w - 2))
    for i in range(h - 2):
        for j in range(w - 2):
            out[i, j] = sum(kernel[a, b] * image[i + a, j + b] for a in range(3) for b in range(3))
    return out


@pytest.mark.parametrize("name", sorted(FILTERS))
def test_image_filters_match_a_direct_computation(name):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(12, 15)).astype(np.float32)
    kernel = FILTERS[name]
    y = run_one_op("conv2d", [image.reshape(1, 1, 12, 15)], dict(out_channels=1, kernel=3, bias=False),
                   {"weight": kernel.reshape(1, 1, 3, 3).astype(np.float32)})
    np.testing.assert_allclose(y[0, 0], direct_filter(image.astype(np.float64), kernel), rtol=1e-5, atol=1e-3)


def test_rgb_image_filter_with_one_kernel_per_channel():
    """A filter over an RGB image: the same kernel on each channel, as a depthwise convolution."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(3, 10, 10)).astype(np.float32)
    kernel = FILTERS["gaussian"].astype(np.float32)
    y = run_one_op("conv2d", [image[None]], dict(out_channels=3, kernel=3, groups=3, bias=False),
                   {"weight": np.stack([kernel] * 3)[:, None]})
    for c in range(3):
        np.testing.assert_allclose(y[0, c], direct_filter(image[c].astype(np.float64), kernel), rtol=1e-5,
                                   atol=1e-3)


@pytest.mark.parametrize("stride,expected", [(1, 5), (2, 3)])
def test_output_size_n7_f3(stride, expected):
    graph = one_op_graph("conv2d", [(1, 1, 7, 7)], dict(out_channels=1, kernel=3, stride=stride), strict=True)
    assert graph.node("y").shape == (1, 1, expected, expected)


def test_output_size_n7_f3_s3_is_refused_in_strict_mode():
    with pytest.raises(ShapeError) as error:
        one_op_graph("conv2d", [(1, 1, 7, 7)], dict(out_channels=1, kernel=3, stride=3), strict=True)
    message = str(error.value)
    assert "node 'y' (conv2d)" in message and "2.3333" in message and "fractions are illegal" in message
    # Without strict mode the lecture's remark applies: integer division, floor(4/3) + 1 = 2.
    assert one_op_graph("conv2d", [(1, 1, 7, 7)], dict(out_channels=1, kernel=3, stride=3)).node("y").shape[2] == 2


def test_same_padding_is_f_minus_1_over_2():
    for kernel in (1, 3, 5, 7):
        graph = one_op_graph("conv2d", [(1, 1, 9, 9)], dict(out_channels=1, kernel=kernel, padding="same"))
        pad = (kernel - 1) // 2
        assert graph.node("y").attrs["padding"] == (pad, pad, pad, pad)
        assert graph.node("y").shape == (1, 1, 9, 9)


def test_64x64_f3_p1_s2_gives_32x32():
    graph = one_op_graph("conv2d", [(1, 3, 64, 64)], dict(out_channels=8, kernel=3, padding=1, stride=2))
    assert graph.node("y").shape == (1, 8, 32, 32)


def test_max_pool_example():
    x = np.array([[3, 1, 3, 5], [6, 0, 7, 9], [3, 2, 1, 4], [0, 2, 4, 3]], np.float32).reshape(1, 1, 4, 4)
    y = run_one_op("max_pool2d", [x], dict(kernel=2, stride=2))
    np.testing.assert_array_equal(y[0, 0], [[6, 9], [3, 4]])


def test_1x1_convolution_scales_the_image_by_2():
    image = np.array([[-5, 3, 2, -5, 3], [4, 3, 2, 1, -3], [1, 0, 3, 3, 5], [-2, 0, 1, 4, 4], [5, 6, 7, 9, -1]],
                     np.float32)
    y = run_one_op("conv2d", [image.reshape(1, 1, 5, 5)], dict(out_channels=1, kernel=1, bias=False),
                   {"weight": np.full((1, 1, 1, 1), 2, np.float32)})
    expected = [[-10, 6, 4, -10, 6], [8, 6, 4, 2, -6], [2, 0, 6, 6, 10], [-4, 0, 2, 8, 8], [10, 12, 14, 18, -2]]
    np.testing.assert_array_equal(y[0, 0], expected)


def test_1x1_convolution_is_a_fully_connected_layer_per_pixel():
    """'Same as having a 3 neuron fully connected layer': 5 filters 1x1x3 = a 3 -> 5 dense layer at each pixel."""
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 3, 4, 4)).astype(np.float32), rng.standard_normal((5, 3)).astype(np.float32)
    y = run_one_op("conv2d", [x], dict(out_channels=5, kernel=1, bias=False), {"weight": w.reshape(5, 3, 1, 1)})
    np.testing.assert_allclose(y, np.einsum("oc,nchw->nohw", w, x), rtol=1e-5, atol=1e-5)


def test_two_stacked_3x3_convs_have_a_5x5_receptive_field():
    b = Builder("stack")
    x = b.input("image", (1, 7, 7))
    first = x.conv(1, 3, name="first")
    second = first.conv(1, 3, name="second")
    summary = summarize(b.build(second))
    fields = {layer["name"]: layer["receptive_field"] for layer in summary["layers"]}
    assert fields == {"first": [3, 3], "second": [5, 5]}
    # "one output value is connected to 25 input pixels": check it numerically on the 7x7 input.
    graph = b.graph
    graph.load_params({"first.weight": np.ones((1, 1, 3, 3), np.float32), "first.bias": np.zeros(1, np.float32),
                       "second.weight": np.ones((1, 1, 3, 3), np.float32), "second.bias": np.zeros(1, np.float32)})
    run = reference.compile(graph)
    base = run({"image": np.zeros((1, 1, 7, 7), np.float32)})["second"][0, 0, 1, 1]
    touched = 0
    for i in range(7):
        for j in range(7):
            image = np.zeros((1, 1, 7, 7), np.float32)
            image[0, 0, i, j] = 1
            touched += run({"image": image})["second"][0, 0, 1, 1] != base
    assert touched == 25


def macs_of(build):
    b = Builder("cost")
    out = build(b.input("x", (200, 32, 32)))
    return summarize(b.build(out))["macs"]


def test_inception_cost_of_a_5x5_conv():
    assert macs_of(lambda x: x.conv(92, 5, padding="same")) == 471_040_000


def test_inception_cost_with_a_1x1_reduction():
    assert macs_of(lambda x: x.conv(16, 1).conv(92, 5, padding="same")) == 40_960_000


def test_depthwise_separable_cost_example():
    def cost(build):
        b = Builder("cost")
        return [layer["macs"] for layer in summarize(b.build(build(b.input("x", (3, 12, 12)))))["layers"]]

    assert cost(lambda x: x.conv(256, 5)) == [1_228_800]
    assert cost(lambda x: x.conv(3, 5, groups=3).conv(256, 1)) == [4_800, 49_152]


def test_a_broadcast_gate_widens_the_field_but_keeps_the_grid():
    """Squeeze-and-excitation: x * gate(global_pool(x)). The product sees the whole map through its gate, but its
    values are x's pixels, one input pixel apart: a 3x3 conv after it adds 2 pixels, not 2 map widths."""
    b = Builder("se")
    x = b.input("image", (4, 9, 9))
    gate = x.global_avg_pool().conv(4, 1, name="squeeze").sigmoid()
    gated = b.mul(x, gate, name="gated")
    summary = summarize(b.build(gated.conv(4, 3, name="after")))
    fields = {layer["name"]: layer["receptive_field"] for layer in summary["layers"]}
    assert fields["gated"] == [9, 9] and fields["after"] == [11, 11]
