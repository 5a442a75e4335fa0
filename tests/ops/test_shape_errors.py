"""Bad graphs are refused when built, each with one line that names the node, the numbers and the rule."""

import pytest

from cnncomp.errors import GraphError, ShapeError
from cnncomp.ir import Graph
from frontends.builder import Builder
from tests.helpers import one_op_graph


def refused(build, error=GraphError):
    with pytest.raises(error) as info:
        build()
    message = str(info.value)
    assert "\n" not in message, "errors are one line"
    return message


def two_inputs(a, b, op, **attrs):
    return lambda: one_op_graph(op, [a, b], attrs)


def test_add_of_mismatched_shapes():
    message = refused(two_inputs((1, 3, 4, 4), (1, 3, 5, 5), "add"), ShapeError)
    assert "node 'y' (add)" in message and "1x3x4x4" in message and "1x3x5x5" in message


def test_mul_with_a_broadcast_that_is_not_per_channel():
    message = refused(two_inputs((1, 3, 4, 4), (1, 3, 4, 1), "mul"), ShapeError)
    assert "node 'y' (mul)" in message and "per channel" in message


def test_concat_of_mismatched_sizes():
    message = refused(two_inputs((1, 3, 28, 28), (1, 5, 27, 27), "concat"), ShapeError)
    assert "node 'y' (concat)" in message and "1x5x27x27" in message and "1x*x28x28" in message


@pytest.mark.parametrize("channels,out,groups,which", [(6, 4, 4, "6 input"), (6, 4, 3, "4 output")])
def test_groups_that_do_not_divide_the_channels(channels, out, groups, which):
    message = refused(lambda: one_op_graph("conv2d", [(1, channels, 8, 8)],
                                           dict(out_channels=out, kernel=3, groups=groups)), ShapeError)
    assert "node 'y' (conv2d)" in message and f"groups={groups}" in message and which in message


def test_kernel_larger_than_the_padded_input():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 4, 4)], dict(out_channels=1, kernel=7, padding=1)),
                      ShapeError)
    assert "kernel extent 7" in message and "padded input 6" in message and "N=4" in message


def test_dilated_kernel_larger_than_the_input():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 6, 6)], dict(out_channels=1, kernel=3, dilation=3)),
                      ShapeError)
    assert "kernel extent 7 (F=3, D=3)" in message


def test_pool_window_larger_than_the_input():
    message = refused(lambda: one_op_graph("max_pool2d", [(1, 1, 1, 1)], dict(kernel=2)), ShapeError)
    assert "node 'y' (max_pool2d)" in message and "kernel extent 2" in message


def test_non_positive_output_size_of_a_transposed_conv():
    message = refused(lambda: one_op_graph("conv_transpose2d", [(1, 1, 1, 1)],
                                           dict(out_channels=1, kernel=2, padding=1)), ShapeError)
    assert "node 'y' (conv_transpose2d)" in message and "is not positive" in message and "= 0" in message


def test_non_positive_output_size_of_an_upsample():
    message = refused(lambda: one_op_graph("upsample", [(1, 1, 5, 5)], dict(scale=0.1)), ShapeError)
    assert "output height must be positive, got 0" in message


def test_strict_mode_refuses_fractional_sizes_in_pools_too():
    message = refused(lambda: one_op_graph("max_pool2d", [(1, 1, 7, 7)], dict(kernel=2), strict=True), ShapeError)
    assert "node 'y' (max_pool2d)" in message and "fractions are illegal" in message


def test_residual_of_another_shape():
    message = refused(two_inputs((1, 3, 8, 8), (1, 4, 8, 8), "conv2d", out_channels=4, kernel=3, residual=True),
                      ShapeError)
    assert "residual operand has shape 1x4x8x8, expected the output shape 1x4x6x6" in message


def test_dense_on_an_unflattened_input():
    message = refused(lambda: one_op_graph("dense", [(1, 3, 4, 4)], dict(out_features=10)), ShapeError)
    assert "node 'y' (dense)" in message and "flatten" in message


def test_crop_to_a_larger_reference():
    message = refused(two_inputs((1, 1, 4, 4), (1, 1, 6, 6), "crop"), ShapeError)
    assert "node 'y' (crop)" in message and "larger" in message


@pytest.mark.parametrize("start,stop,error,fragment", [
    (2, 7, ShapeError, "channels 2:7 reach past the 6 of 1x6x4x4"),
    (3, 3, GraphError, "channels 3:3: expected 0 <= start < stop"),
    (-1, 2, GraphError, "channels -1:2: expected 0 <= start < stop"),
])
def test_channel_slice_outside_the_channels(start, stop, error, fragment):
    message = refused(lambda: one_op_graph("channel_slice", [(1, 6, 4, 4)], {"start": start, "stop": stop}), error)
    assert "node 'y' (channel_slice)" in message and fragment in message


def test_reflect_padding_as_large_as_the_input():
    message = refused(lambda: one_op_graph("pad", [(1, 1, 3, 3)], dict(pads=3, mode="reflect")), ShapeError)
    assert "reflect padding" in message


def test_pool_padding_over_half_the_kernel():
    message = refused(lambda: one_op_graph("max_pool2d", [(1, 1, 8, 8)], dict(kernel=2, padding=2)))
    assert "at most half the kernel" in message


def test_conv_of_a_non_image():
    message = refused(lambda: one_op_graph("conv2d", [(1, 10)], dict(out_channels=1, kernel=1)), ShapeError)
    assert "expected a NCHW tensor" in message


def test_unknown_op():
    message = refused(lambda: one_op_graph("convolution", [(1, 1, 4, 4)]))
    assert "unknown op 'convolution'" in message and "conv2d" in message


def test_unknown_attribute():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 4, 4)], dict(out_channels=1, kernel=3, strides=2)))
    assert "unknown attribute 'strides'" in message and "stride" in message


def test_attribute_of_the_wrong_type():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 4, 4)], dict(out_channels=1, kernel="3")))
    assert "attribute 'kernel'" in message and "expected an int or a pair of ints" in message


def test_bad_padding_string():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 4, 4)], dict(out_channels=1, kernel=3,
                                                                          padding="full")))
    assert "attribute 'padding'" in message and '"same"' in message


def test_missing_required_attribute():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 4, 4)], dict(kernel=3)))
    assert "missing required attribute 'out_channels'" in message


def test_zero_stride():
    message = refused(lambda: one_op_graph("conv2d", [(1, 1, 4, 4)], dict(out_channels=1, kernel=3, stride=0)))
    assert "stride must be positive, got 0" in message


def test_wrong_operand_count():
    message = refused(two_inputs((1, 1, 4, 4), (1, 1, 4, 4), "relu"))
    assert "node 'y' (relu): takes 1 operand(s), got 2" in message


def test_undefined_operand():
    graph = Graph()
    message = refused(lambda: graph.add_node("y", "relu", ["nowhere"]))
    assert "operand 'nowhere' is not a value of the graph" in message


def test_duplicate_node_name():
    b = Builder()
    x = b.input("image", (1, 4, 4))
    x.relu(name="act")
    message = refused(lambda: x.relu(name="act"))
    assert "duplicate node name 'act'" in message


def test_parameter_of_the_wrong_shape():
    import numpy as np

    message = refused(lambda: one_op_graph("conv2d", [(1, 2, 4, 4)], dict(out_channels=3, kernel=3, bias=False),
                                           params={"weight": np.zeros((3, 3, 3, 3), np.float32)}))
    assert "parameter 'weight' has shape (3, 3, 3, 3), expected (3, 2, 3, 3)" in message


def test_unpooling_indices_of_another_shape():
    graph = Graph()
    graph.add_node("x", "input", attrs={"shape": (1, 1, 8, 8)})
    graph.add_node("indices", "max_pool2d_indices", ["x"], dict(kernel=2))
    graph.add_node("small", "max_pool2d", ["x"], dict(kernel=4))
    message = refused(lambda: graph.add_node("y", "max_unpool2d", ["small", "indices"], dict(kernel=2)),
                      ShapeError)
    assert "node 'y' (max_unpool2d)" in message and "same shape" in message


def test_indices_are_not_an_image():
    graph = Graph()
    graph.add_node("x", "input", attrs={"shape": (1, 1, 8, 8)})
    graph.add_node("indices", "max_pool2d_indices", ["x"], dict(kernel=2))
    message = refused(lambda: graph.add_node("y", "relu", ["indices"]), ShapeError)
    assert "dtype int64, expected float32" in message


def test_a_dilated_pool_window_that_reads_padding_only():
    # Width 3, kernel 2 dilated by 2, padding 1: the window at -1 reads columns -1 and 1 ... and fits; at height 1
    # the window at row -1 reads rows -1 and 1, neither of which exists.
    build = lambda: one_op_graph("max_pool2d", [(1, 1, 1, 3)],  # noqa: E731
                                 {"kernel": 2, "stride": 1, "padding": 1, "dilation": 2})
    message = refused(build, ShapeError)
    assert "node 'y' (max_pool2d)" in message and "height: the window at -1" in message
    assert "reads padding only" in message
    assert one_op_graph("max_pool2d", [(1, 1, 3, 3)], {"kernel": 2, "stride": 1, "padding": 1, "dilation": 2})
