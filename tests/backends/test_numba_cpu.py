"""The numba-cpu backend against the reference backend: every kernel family over its attribute space, every
epilogue, the lowered ops, whole blocks, the kernel cache, and input checks."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import backends.numba_cpu as numba_cpu
from backends import reference
from backends.numba_cpu import lowering, resolve
from cnncomp.errors import GraphError, InputError
from cnncomp.ir import Graph
from cnncomp.ops.activation import ACTIVATIONS
from tests import models
from tests.helpers import (
    BACKEND_ATOL,
    BACKEND_RTOL,
    activation_cases,
    assert_memory_steady,
    assert_same_as_reference,
    random,
    random_inputs,
    random_op_graph,
)


@pytest.fixture(autouse=True)
def parallel_kernels(monkeypatch):
    """The ops here are small, and nodes with little work run serial kernels: test the parallel ones (the serial
    ones are tested below, and run in every zoo model)."""
    monkeypatch.setattr(lowering, "SERIAL_WORK", 0)


def algorithm_of(attrs, in_shape):
    graph = random_op_graph("conv2d", [in_shape], attrs)
    return resolve.conv2d_algorithm(graph.node("y").attrs, graph.node("x0").type, graph.node("y").type)


CONV_CASES = [
    # input shape, attrs, expected algorithm
    ((1, 3, 17, 17), dict(out_channels=8, kernel=3, padding=1), "im2col"),
    ((1, 3, 20, 20), dict(out_channels=8, kernel=7, stride=2, padding=3), "im2col"),
    ((2, 6, 9, 11), dict(out_channels=6, kernel=3, padding=1, groups=6), "direct"),
    ((1, 4, 10, 10), dict(out_channels=8, kernel=5, stride=2, padding=2, groups=2), "direct"),
    ((1, 16, 12, 12), dict(out_channels=24, kernel=1), "pointwise"),
    ((2, 32, 3, 5), dict(out_channels=40, kernel=1), "pointwise"),
    ((1, 16, 24, 22), dict(out_channels=20, kernel=3, padding=1), "winograd4"),
    ((1, 16, 14, 14), dict(out_channels=20, kernel=3, padding=1), "winograd2"),
    ((2, 24, 11, 9), dict(out_channels=16, kernel=3, padding=(0, 2, 1, 0)), "winograd2"),
    ((1, 16, 13, 13), dict(out_channels=16, kernel=3, stride=2, padding=1), "im2col"),
    ((1, 8, 15, 15), dict(out_channels=12, kernel=(3, 5), stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
     "im2col"),
    ((2, 16, 9, 9), dict(out_channels=8, kernel=1, stride=2), "im2col"),
    ((1, 24, 11, 11), dict(out_channels=12, kernel=3, padding=1, groups=3), "im2col"),
    ((1, 16, 4, 4), dict(out_channels=16, kernel=3, padding=1), "im2col"),  # 4x4: too small for Winograd
    ((1, 6, 1, 1), dict(out_channels=5, kernel=1), "pointwise"),
]


@pytest.mark.parametrize("shape,attrs,algorithm", CONV_CASES)
def test_conv2d_algorithms_match_the_reference(shape, attrs, algorithm):
    assert algorithm_of(attrs, shape) == algorithm
    assert_same_as_reference(random_op_graph("conv2d", [shape], attrs), numba_cpu)


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd2", "winograd4"])
@pytest.mark.parametrize("shape,attrs", [
    ((1, 5, 13, 10), dict(out_channels=6, kernel=3, padding=1)),  # odd sizes: partial tiles
    ((2, 8, 6, 7), dict(out_channels=3, kernel=3, padding=(2, 0, 1, 2))),  # uneven padding
    ((1, 4, 3, 3), dict(out_channels=2, kernel=3)),  # a single output pixel
])
def test_every_algorithm_on_3x3_convolutions(shape, attrs, algorithm):
    assert_same_as_reference(random_op_graph("conv2d", [shape], attrs),
                             numba_cpu, options={"conv2d_algorithms": {"y": algorithm}})


@pytest.mark.parametrize("algorithm", ["winograd2", "winograd4"])
def test_winograd_in_bands(monkeypatch, algorithm):
    """Large maps go through Winograd in bands of tile rows; force that path on a small one."""
    monkeypatch.setattr(lowering, "WINOGRAD_WHOLE_BYTES", 0)
    monkeypatch.setattr(lowering, "TILE_BYTES", 1 << 14)  # several bands per image
    monkeypatch.setattr(lowering, "MIN_WINOGRAD_TILES", 1)
    graph = random_op_graph("conv2d", [(2, 16, 23, 18), (2, 8, 23, 18)],
                     dict(out_channels=8, kernel=3, padding=1, residual=True, act="relu"))
    assert_same_as_reference(graph, numba_cpu, options={"conv2d_algorithms": {"y": algorithm}})


@pytest.mark.parametrize("wide_channels,kernel", [(4, "whole"), (64, "bands")])
def test_winograd_whole_or_in_bands_by_the_layers_width(monkeypatch, wide_channels, kernel):
    """Past WINOGRAD_WHOLE_BYTES a layer is still transformed whole when it is wide (o*c/(o+c) at least
    WINOGRAD_WIDE_CHANNELS) and its transform fits WINOGRAD_WIDE_WHOLE_BYTES; else in bands."""
    monkeypatch.setattr(lowering, "WINOGRAD_WHOLE_BYTES", 0)
    monkeypatch.setattr(lowering, "WINOGRAD_WIDE_CHANNELS", wide_channels)
    graph = random_op_graph("conv2d", [(2, 16, 13, 11), (2, 8, 13, 11)],
                     dict(out_channels=8, kernel=3, padding=1, residual=True, act="relu"))
    executable = assert_same_as_reference(graph, numba_cpu, options={"conv2d_algorithms": {"y": "winograd4"}})
    assert [step.kernel.family for step in executable.steps] == [f"conv2d_winograd_f4x4_3x3_{kernel}"]


def test_im2col_tiles_hold_enough_pixels_for_their_weight():
    """A 7x7 map under a large kernel: each GEMM takes whole images' rows (not one 7-pixel row) however large
    its columns grow."""
    graph = random_op_graph("conv2d", [(2, 64, 7, 7)], dict(out_channels=24, kernel=7, padding="same", act="relu"))
    executable = assert_same_as_reference(graph, numba_cpu, options={"conv2d_algorithms": {"y": "im2col"}})
    (args,) = executable.workspace.args
    assert args[-3] == 7  # rows per tile: the whole 7-row map


@pytest.mark.parametrize("gate", [False, True])
@pytest.mark.parametrize("share_rows,tiles", [(16, (143, 32)), (10**9, (80, 40))])
def test_pointwise_tiles_split_output_channels_or_pixels(monkeypatch, gate, share_rows, tiles):
    """A 1x1 conv's GEMM is split over output channels where each thread's share has at least
    MIN_GEMM_SHARE_ROWS rows, else over pixel tiles; both with remainders, gated or not (tiles for 2 threads)."""
    monkeypatch.setattr(lowering, "MIN_GEMM_SHARE_ROWS", share_rows)
    monkeypatch.setattr(lowering, "TILE_BYTES", 1 << 14)
    shapes = [(2, 16, 13, 11), (2, 16, 1, 1)] if gate else [(2, 16, 13, 11), (2, 40, 13, 11)]
    attrs = dict(out_channels=40, gate=True, act="relu") if gate else dict(out_channels=40, residual=True, act="relu")
    executable = assert_same_as_reference(random_op_graph("pointwise_conv2d", shapes, attrs),
                                          numba_cpu, options={"threads": 2})
    (args,) = executable.workspace.args
    assert args[-3:-1] == tiles


@pytest.mark.parametrize("attrs", [
    dict(out_channels=40, kernel=3, stride=2, padding=1, residual=True, act="relu"),
    dict(out_channels=24, kernel=(3, 5), stride=(2, 1), padding=(0, 2, 1, 2), dilation=(2, 1), affine=True,
         act="silu", groups=3),
    dict(out_channels=33, kernel=7, stride=2, padding=3, bias=False),
])
def test_im2col_whole_image_split_over_output_channels(monkeypatch, attrs):
    """An image that leaves threads idle on a small map: its whole im2col matrix, gathered by every thread (more
    threads than input channels here), multiplied in tiles of output channels with a remainder."""
    monkeypatch.setattr(lowering, "MIN_GEMM_SHARE_ROWS", 1)
    shapes = [(1, 6, 13, 11)]
    if attrs.get("residual"):
        shapes.append((1, 40, 7, 6))
    executable = assert_same_as_reference(random_op_graph("conv2d", shapes, attrs), numba_cpu,
                                          options={"threads": 4, "conv2d_algorithms": {"y": "im2col"}})
    assert [step.kernel.family for step in executable.steps] == ["conv2d_im2col_whole"]


@pytest.mark.parametrize("batch", [1, 3, 20])
@pytest.mark.parametrize("attrs, kernel_family", [
    (dict(out_channels=40, kernel=(5, 4), residual=True, act="relu"), None),
    (dict(out_channels=12, kernel=(5, 4), stride=3, affine=True, act="silu"), None),
    (dict(out_channels=12, kernel=(5, 4), padding=1), "conv2d_im2col"),
    (dict(out_channels=12, kernel=(3, 2), dilation=(2, 3)), "conv2d_im2col"),
])
def test_a_conv_whose_window_is_the_whole_map_runs_as_a_dense_layer(batch, attrs, kernel_family):
    """One unpadded, undilated window over the whole input (LeNet-5's c5) is a dense layer: the dense kernels
    (rows up to 16 images, BLAS above), with the conv's epilogue; padding or dilation keeps the GEMM."""
    shapes = [(batch, 6, 5, 4)]
    if attrs.get("residual"):
        shapes.append((batch, 40, 1, 1))
    executable = assert_same_as_reference(random_op_graph("conv2d", shapes, attrs), numba_cpu,
                                          options={"conv2d_algorithms": {"y": "im2col"}})
    expected = kernel_family or ("dense_rows" if batch <= lowering.DENSE_ROWS_MAX_BATCH else "dense")
    assert [step.kernel.family for step in executable.steps] == [expected]


def test_an_algorithm_that_cannot_compute_a_conv_is_refused():
    graph = random_op_graph("conv2d", [(1, 4, 8, 8)], dict(out_channels=4, kernel=3, stride=2))
    with pytest.raises(GraphError, match="algorithm 'winograd4' cannot compute this convolution; possible: direct"):
        numba_cpu.compile(graph, {"conv2d_algorithms": {"y": "winograd4"}})


EPILOGUE_ACTIVATIONS = activation_cases()


@pytest.mark.parametrize("epilogue", EPILOGUE_ACTIVATIONS, ids=lambda e: e["act"])
def test_every_activation_in_the_epilogue(epilogue):
    """The epilogue is the same generated code in every family: each activation once, on the cheapest kernel."""
    assert_same_as_reference(random_op_graph("conv2d", [(1, 16, 6, 6)], dict(out_channels=8, kernel=1, **epilogue)),
                             numba_cpu)


@pytest.mark.parametrize("shape,attrs", [
    ((1, 6, 9, 9), dict(out_channels=6, kernel=3, padding=1, groups=6)),  # direct
    ((1, 16, 10, 10), dict(out_channels=8, kernel=3, padding=1)),  # winograd, F(2x2)
    ((1, 16, 22, 22), dict(out_channels=8, kernel=3, padding=1)),  # winograd, F(4x4)
    ((1, 16, 10, 10), dict(out_channels=8, kernel=3, stride=2, padding=1)),  # im2col
])
def test_affine_epilogue_in_each_family(shape, attrs):
    attrs = {**attrs, "affine": True, "bias": False, "act": "relu6"}
    assert_same_as_reference(random_op_graph("conv2d", [shape], attrs), numba_cpu)


@pytest.mark.parametrize("shape,attrs", [
    ((1, 3, 9, 9), dict(out_channels=4, kernel=3, padding=1)),
    ((2, 16, 10, 10), dict(out_channels=8, kernel=3, padding=1)),
    ((1, 16, 7, 7), dict(out_channels=8, kernel=1)),
    ((1, 16, 9, 9), dict(out_channels=8, kernel=3, stride=1, padding=1, dilation=1, groups=2)),
])
def test_conv2d_residual_epilogue(shape, attrs):
    out_shape = (shape[0], attrs["out_channels"], shape[2], shape[3])
    assert_same_as_reference(random_op_graph("conv2d", [shape, out_shape], {**attrs, "residual": True, "act": "relu"}),
                             numba_cpu)


@pytest.mark.parametrize("shape,attrs", [
    ((1, 4, 5, 5), dict(out_channels=3, kernel=2, stride=2)),
    ((2, 3, 4, 6), dict(out_channels=2, kernel=3, stride=2, padding=1, output_padding=1)),
    ((1, 4, 5, 4), dict(out_channels=4, kernel=3, stride=3, padding=1, output_padding=2, groups=2)),
    ((1, 2, 4, 4), dict(out_channels=2, kernel=3, padding=1, dilation=2, bias=False)),
    ((1, 3, 4, 4), dict(out_channels=3, kernel=16, stride=8, padding=4, groups=3)),
])
def test_conv_transpose2d(shape, attrs):
    assert_same_as_reference(random_op_graph("conv_transpose2d", [shape], attrs), numba_cpu)


@pytest.mark.parametrize("batch", [1, 3, lowering.DENSE_ROWS_MAX_BATCH, lowering.DENSE_ROWS_MAX_BATCH + 1])
@pytest.mark.parametrize("attrs", [dict(out_features=7), dict(out_features=130, act="relu"),
                                   dict(out_features=5, bias=False, affine=True)])
def test_dense(batch, attrs):
    """Both dense kernels: weight rows streamed for up to DENSE_ROWS_MAX_BATCH images, BLAS above."""
    executable = assert_same_as_reference(random_op_graph("dense", [(batch, 37)], attrs), numba_cpu)
    expected = "dense_rows" if batch <= lowering.DENSE_ROWS_MAX_BATCH else "dense"
    assert [step.kernel.family for step in executable.steps] == [expected]


def test_dense_with_residual():
    assert_same_as_reference(random_op_graph("dense", [(2, 9), (2, 4)], dict(out_features=4, residual=True)), numba_cpu)


POOLS = [
    ((1, 2, 7, 7), dict(kernel=3, stride=2, padding=1, ceil_mode=True)),
    ((2, 3, 8, 9), dict(kernel=2)),
    ((1, 2, 10, 10), dict(kernel=2, stride=3)),
    ((1, 2, 11, 12), dict(kernel=(2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True)),
]


@pytest.mark.parametrize("shape,attrs", POOLS)
def test_max_pool2d_and_indices(shape, attrs):
    assert_same_as_reference(random_op_graph("max_pool2d", [shape], attrs), numba_cpu, atol=0, rtol=0)
    assert_same_as_reference(random_op_graph("max_pool2d_indices", [shape], attrs), numba_cpu, atol=0, rtol=0)


def test_max_pool2d_dilated():
    attrs = dict(kernel=3, stride=2, padding=1, dilation=2, ceil_mode=True)
    assert_same_as_reference(random_op_graph("max_pool2d", [(1, 2, 11, 12)], attrs), numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("seed", range(16))
def test_max_pool_over_drawn_shapes(seed):
    """The max-pool kernel (16 windows of a row in a vector, padding read as -inf) over drawn shapes: maps down to
    1x1 and rows of several vectors, kernels 1-5, strides 1-4, dilation, uneven padding up to half the kernel,
    ceil_mode, and a NaN and an inf."""
    rng = np.random.default_rng(seed)
    kernel, stride = int(rng.choice([1, 2, 3, 5])), int(rng.choice([1, 2, 3, 4]))
    dilation = int(rng.choice([1, 1, 2]))
    pads = tuple(int(p) for p in rng.integers(0, kernel // 2 + 1, size=4))
    extent = dilation * (kernel - 1) + 1
    height, width = max(int(rng.integers(1, 16)), extent), max(int(rng.integers(1, 70)), extent)
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), height, width)
    attrs = dict(kernel=kernel, stride=stride, dilation=dilation, padding=pads, ceil_mode=bool(seed % 2))
    graph = random_op_graph("max_pool2d", [shape], attrs, seed=seed)
    data = random(shape, seed)
    data[0, 0, rng.integers(height), rng.integers(width)] = np.nan
    data[-1, -1, rng.integers(height), rng.integers(width)] = np.inf
    out, expected = numba_cpu.compile(graph)({"x0": data})["y"], reference.run(graph, {"x0": data})["y"]
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("seed", range(12))
def test_avg_pool_over_drawn_shapes(seed):
    """The average-pool kernel (16 windows of a row in a vector, padding read as zeros, the op's divisors) over drawn
    shapes: maps down to 1x1 and rows of several vectors, kernels 1-5, strides 1-4, uneven padding, ceil_mode, with
    and without the padding counted."""
    rng = np.random.default_rng(seed)
    kernel, stride = int(rng.choice([1, 2, 3, 5])), int(rng.choice([1, 2, 3, 4]))
    pads = tuple(int(p) for p in rng.integers(0, kernel // 2 + 1, size=4))
    height, width = max(int(rng.integers(1, 16)), kernel), max(int(rng.integers(1, 70)), kernel)
    attrs = dict(kernel=kernel, stride=stride, padding=pads, ceil_mode=bool(seed % 2),
                 count_include_pad=bool(seed % 3))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 5)), height, width)
    assert_same_as_reference(random_op_graph("avg_pool2d", [shape], attrs, seed=seed), numba_cpu)


@pytest.mark.parametrize("attrs", [dict(kernel=7), dict(kernel=7, ceil_mode=True, count_include_pad=False)])
def test_avg_pool_of_the_whole_map_runs_the_global_average(attrs):
    graph = random_op_graph("avg_pool2d", [(2, 5, 7, 7)], attrs)
    assert [step.kernel.family for step in numba_cpu.compile(graph).steps] == ["global_avg_pool"]
    assert_same_as_reference(graph, numba_cpu)


@pytest.mark.parametrize("shape,attrs", POOLS)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d(shape, attrs, count_include_pad):
    assert_same_as_reference(random_op_graph("avg_pool2d", [shape], {**attrs, "count_include_pad": count_include_pad}),
                             numba_cpu)


def test_pool_unpool_chain():
    graph = Graph("pool_unpool")
    graph.add_node("x", "input", attrs={"shape": (2, 3, 8, 6)})
    graph.add_node("pooled", "max_pool2d", ["x"], dict(kernel=2))
    graph.add_node("indices", "max_pool2d_indices", ["x"], dict(kernel=2))
    graph.add_node("unpooled", "max_unpool2d", ["pooled", "indices"], dict(kernel=2))
    graph.set_outputs(["unpooled"])
    assert_same_as_reference(graph, numba_cpu, atol=0, rtol=0)


def test_bad_unpooling_index_is_a_clear_error():
    graph = Graph("bad_unpool")
    graph.add_node("x", "input", attrs={"shape": (1, 1, 8, 8)})
    graph.add_node("pooled", "max_pool2d", ["x"], dict(kernel=4))
    graph.add_node("indices", "max_pool2d_indices", ["x"], dict(kernel=4))
    graph.add_node("unpooled", "max_unpool2d", ["pooled", "indices"], dict(kernel=1))
    graph.set_outputs(["unpooled"])
    with pytest.raises(GraphError, match="node 'unpooled': an unpooling index lies outside"):
        numba_cpu.compile(graph)(random_inputs(graph))


@pytest.mark.parametrize("op,attrs", [("global_avg_pool", {}), ("adaptive_avg_pool2d", dict(output_size=(3, 4))),
                                      ("adaptive_avg_pool2d", dict(output_size=(7, 7)))])
def test_global_and_adaptive_pools(op, attrs):
    assert_same_as_reference(random_op_graph(op, [(2, 3, 10, 7)], attrs), numba_cpu)


@pytest.mark.parametrize("op", [*ACTIVATIONS, "identity", "dropout", "flatten"])
def test_unary_ops(op):
    assert_same_as_reference(random_op_graph(op, [(2, 3, 5, 7)]), numba_cpu)


def test_leaky_relu():
    assert_same_as_reference(random_op_graph("leaky_relu", [(1, 3, 4, 4)], dict(alpha=0.3)), numba_cpu)


@pytest.mark.parametrize("shape", [(2, 4, 5, 5), (3, 6)])
def test_batch_norm(shape):
    assert_same_as_reference(random_op_graph("batch_norm", [shape], dict(eps=1e-3)), numba_cpu)


@pytest.mark.parametrize("op", ["add", "mul"])
@pytest.mark.parametrize("a,b", [((2, 3, 4, 4), (2, 3, 4, 4)), ((2, 3, 4, 4), (2, 3, 1, 1)),
                                 ((2, 3, 1, 1), (2, 3, 4, 4)), ((2, 7), (2, 7))])
def test_binary_ops(op, a, b):
    assert_same_as_reference(random_op_graph(op, [a, b]), numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("shapes,axis", [([(2, 2, 3, 3), (2, 5, 3, 3), (2, 1, 3, 3)], 1),
                                         ([(1, 2, 3, 4), (1, 2, 2, 4)], 2), ([(2, 3), (2, 4)], 1)])
def test_concat(shapes, axis):
    assert_same_as_reference(random_op_graph("concat", shapes, dict(axis=axis)), numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate"])
def test_pad(mode):
    assert_same_as_reference(random_op_graph("pad", [(1, 2, 5, 6)], dict(pads=(0, 2, 3, 1), mode=mode)),
                             numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("shape,start,stop", [((2, 7, 4, 5), 2, 6), ((1, 5, 3, 3), 0, 5), ((3, 9), 4, 9)])
def test_channel_slice(shape, start, stop):
    """A view of its input in the arena (no kernel), read at batch > 1 with the input's batch stride."""
    executable = assert_same_as_reference(random_op_graph("channel_slice", [shape], dict(start=start, stop=stop)),
                                          numba_cpu,
                                          atol=0, rtol=0)
    assert executable.memory_plan["channel_slice_views"] == ["y"]
    assert [step.node for step in executable.steps] == []


def test_a_channel_slice_of_a_constant_is_copied():
    executable = assert_same_as_reference(models.channel_slice_of_a_constant(), numba_cpu, atol=0, rtol=0)
    assert executable.memory_plan["channel_slice_views"] == []
    assert [step.node for step in executable.steps] == ["s", "y"]


def test_channel_slices_around_concats():
    """Views of conv outputs, of a concat and of a view, read at batch 2; the concats copy the views they join."""
    graph = models.channel_slices_around_concats()
    executable = assert_same_as_reference(graph, numba_cpu)
    assert executable.memory_plan["channel_slice_views"] == ["first", "rest", "middle", "inner", "x_last"]
    copies = [step.node for step in executable.steps if step.kernel.family == "unary_copy"]
    assert copies == ["joined", "tail", "tail"]  # rest into joined; inner and x_last into tail


def test_crop():
    assert_same_as_reference(random_op_graph("crop", [(1, 2, 9, 10), (1, 1, 4, 5)]), numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("attrs", [dict(size=5, alpha=1e-4, beta=0.75, k=2.0), dict(size=4, alpha=0.5, beta=0.5),
                                   dict(size=3, alpha=0.2, beta=1.0), dict(size=5, alpha=0.1, beta=0.6, k=1.5)])
def test_lrn(attrs):
    assert_same_as_reference(random_op_graph("lrn", [(2, 7, 3, 4)], attrs), numba_cpu)


@pytest.mark.parametrize("shape,axis", [((3, 10), 1), ((2, 5, 3, 3), 1), ((2, 5, 3, 4), 3)])
def test_softmax(shape, axis):
    assert_same_as_reference(random_op_graph("softmax", [shape], dict(axis=axis)), numba_cpu, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attrs", [
    dict(mode="nearest", scale=2), dict(mode="nearest", size=(7, 11)), dict(mode="bilinear", scale=2),
    dict(mode="bilinear", size=(9, 13), align_corners=True), dict(mode="bicubic", scale=1.7),
    dict(mode="bicubic", size=(10, 7), align_corners=True),
])
def test_upsample(attrs):
    assert_same_as_reference(random_op_graph("upsample", [(2, 3, 5, 6)], attrs), numba_cpu)


@pytest.mark.parametrize("attrs", [
    dict(kernel=3, padding=1),
    dict(kernel=5, stride=2, padding=2, multiplier=2, act="relu6"),
    dict(kernel=3, padding=2, dilation=2, bias=False, affine=True, act="silu"),
])
def test_depthwise_conv2d(attrs):
    assert_same_as_reference(random_op_graph("depthwise_conv2d", [(2, 6, 11, 9)], attrs), numba_cpu)


@pytest.mark.parametrize("shape,attrs", [
    ((1, 3, 38, 37), dict(kernel=3, stride=2, padding=1)),
    ((1, 2, 23, 70), dict(kernel=5, stride=4, padding=(2, 1, 3, 0), act="relu6")),
    ((2, 2, 18, 50), dict(kernel=3, stride=2, dilation=3, padding=(3, 3, 0, 2), multiplier=2)),
    ((1, 2, 9, 33), dict(kernel=7, padding=3, act="silu")),
])
def test_depthwise_conv2d_on_rows_wider_than_a_vector(shape, attrs):
    """Rows of several 16-float vectors, the last one short, padded on one side or both, strides 2 and 4 (loaded
    as spans with every other lane kept), row counts that are not a multiple of the rows summed at once."""
    assert_same_as_reference(random_op_graph("depthwise_conv2d", [shape], attrs), numba_cpu)


@pytest.mark.parametrize("seed", range(24))
def test_depthwise_over_drawn_shapes(seed):
    """The depthwise kernel over the kinds of shape the fuzzer draws: odd and even sizes down to 1, strides 1 to 3,
    uneven padding, dilation, multipliers, epilogues and residuals."""
    rng = np.random.default_rng(seed)
    kernel, stride, dilation = int(rng.choice([1, 2, 3, 5, 7])), int(rng.choice([1, 2, 2, 3])), int(rng.choice([1, 2]))
    pads = tuple(int(p) for p in rng.integers(0, 4, size=4))
    height, width = (int(d) for d in rng.integers(1, 14, size=2))
    extent = dilation * (kernel - 1) + 1
    height, width = max(height, extent - pads[0] - pads[1]), max(width, extent - pads[2] - pads[3])
    attrs = dict(kernel=kernel, stride=stride, dilation=dilation, padding=pads, multiplier=int(rng.integers(1, 3)),
                 act=[None, "relu6", "silu"][seed % 3], residual=bool(seed % 4 == 0))
    channels = int(rng.integers(1, 6))
    shapes = [(int(rng.integers(1, 3)), channels, height, width)]
    graph = random_op_graph("depthwise_conv2d", shapes, {**attrs, "residual": False}, seed=seed)
    if attrs["residual"]:
        shapes.append((shapes[0][0], channels * attrs["multiplier"], *graph.node("y").shape[2:]))
        graph = random_op_graph("depthwise_conv2d", shapes, attrs, seed=seed)
    assert_same_as_reference(graph, numba_cpu)


@pytest.mark.parametrize("shapes,attrs", [
    ([(2, 16, 5, 7)], dict(out_channels=24, act="relu")),
    ([(2, 16, 5, 7), (2, 16, 1, 1)], dict(out_channels=24, gate=True)),
    ([(2, 16, 5, 7), (2, 16, 1, 1), (2, 8, 5, 7)], dict(out_channels=8, gate=True, residual=True)),
    ([(1, 16, 4, 4), (1, 8, 4, 4)], dict(out_channels=8, residual=True, affine=True)),
])
def test_pointwise_conv2d(shapes, attrs):
    assert_same_as_reference(random_op_graph("pointwise_conv2d", shapes, attrs), numba_cpu)


def test_strided_slice():
    assert_same_as_reference(random_op_graph("strided_slice", [(2, 3, 9, 8)], dict(stride=(2, 3))),
                             numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("attrs", [
    dict(out_channels=24, kernel=3, padding=1),
    dict(out_channels=12, kernel=3, stride=2, padding=1, mid_bias=True, mid_act="relu6", act="relu"),
    dict(out_channels=8, kernel=5, padding=2, multiplier=2, mid_bias=True, mid_act="leaky_relu", mid_alpha=0.3,
         bias=False),
])
def test_separable_conv2d(attrs):
    assert_same_as_reference(random_op_graph("separable_conv2d", [(2, 8, 13, 11)], attrs), numba_cpu)


@pytest.mark.parametrize("seed", range(20))
def test_separable_over_drawn_shapes(seed):
    """Both separable kernels (a band of rows per thread; on small maps, the whole map's depthwise step shared by
    the threads) over drawn shapes: maps down to 1x1, strides 1-3, dilation, uneven padding, multipliers, mid and
    output epilogues, residuals."""
    rng = np.random.default_rng(seed)
    kernel, stride, dilation = int(rng.choice([1, 3, 5])), int(rng.choice([1, 2, 2, 3])), int(rng.choice([1, 1, 2]))
    size = int(rng.integers(1, 10)) if seed % 2 else int(rng.integers(10, 30))
    pads = tuple(int(p) for p in rng.integers(0, dilation * (kernel // 2) + 2, size=4))
    size = max(size, dilation * (kernel - 1) + 1)
    out_high = (size + pads[0] + pads[1] - dilation * (kernel - 1) - 1) // stride + 1
    out_wide = (size + pads[2] + pads[3] - dilation * (kernel - 1) - 1) // stride + 1
    attrs = dict(out_channels=int(rng.choice([8, 40, 72])), kernel=kernel, stride=stride, dilation=dilation,
                 padding=pads, multiplier=int(rng.integers(1, 3)), mid_bias=bool(seed % 3),
                 mid_act=[None, "relu6", "silu"][seed % 3], act=["relu", None][seed % 2], residual=bool(seed % 4 == 1))
    shapes = [(int(rng.integers(1, 3)), int(rng.choice([3, 16, 33])), size, size)]
    if attrs["residual"]:
        shapes.append((shapes[0][0], attrs["out_channels"], out_high, out_wide))
    assert_same_as_reference(random_op_graph("separable_conv2d", shapes, attrs, seed=seed), numba_cpu)


def test_constant():
    graph = Graph("constant")
    graph.add_node("x", "input", attrs={"shape": (1, 3, 4, 4)})
    graph.add_node("c", "constant", attrs={"shape": (1, 3, 1, 1)},
                   params={"value": np.array([1, 2, 3], np.float32).reshape(1, 3, 1, 1)})
    graph.add_node("y", "mul", ["x", "c"])
    graph.set_outputs(["y"])
    assert_same_as_reference(graph, numba_cpu, atol=0, rtol=0)


@pytest.mark.parametrize("build", [models.basic_block, models.inception_module, models.unet_level, models.mbconv,
                                   models.separable_stack, models.dual_path_block, models.res2net_block])
@pytest.mark.parametrize("batch", [1, 2])
def test_blocks(build, batch):
    assert_same_as_reference(build(batch), numba_cpu)


def run_with_non_finite_pixels(attrs):
    graph = random_op_graph("conv2d", [(1, 16, 12, 12)], attrs)
    data = random((1, 16, 12, 12))
    data[0, 0, 2, 2], data[0, 1, 7, 7] = np.nan, np.inf
    return numba_cpu.compile(graph)({"x0": data})["y"], reference.run(graph, {"x0": data})["y"]


def test_nan_and_inf_propagate_like_the_reference():
    out, expected = run_with_non_finite_pixels(dict(out_channels=8, kernel=3, stride=2, padding=1, act="relu"))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
    finite = np.isfinite(expected)
    assert not finite.all()
    np.testing.assert_allclose(out[finite], expected[finite], atol=BACKEND_ATOL, rtol=BACKEND_RTOL)


def test_winograd_keeps_non_finite_values_non_finite():
    """Winograd's transforms mix a whole input tile, so an inf may become NaN (inf - inf) and reach every output
    of the tiles that read it (F(4x4): up to 8x8 outputs around a pixel, here 2 pixels on a 12x12 map); every
    output the reference finds non-finite is non-finite here too, and every output both find finite is equal."""
    out, expected = run_with_non_finite_pixels(dict(out_channels=8, kernel=3, padding=1))
    assert (~np.isfinite(expected) <= ~np.isfinite(out)).all()
    both = np.isfinite(expected) & np.isfinite(out)
    assert both.mean() > 0.5
    np.testing.assert_allclose(out[both], expected[both], atol=BACKEND_ATOL, rtol=BACKEND_RTOL)


def test_inputs_are_checked():
    executable = numba_cpu.compile(models.unet_level())
    with pytest.raises(InputError, match="input 'x': shape 1x2x20x21, expected 1x2x20x20"):
        executable({"x": random((1, 2, 20, 21))})
    with pytest.raises(InputError, match="dtype float64"):
        executable({"x": random((1, 2, 20, 20)).astype(np.float64)})


def test_outputs_are_fresh_arrays_and_calls_are_repeatable():
    graph = models.basic_block()
    executable = numba_cpu.compile(graph)
    inputs = random_inputs(graph)
    first = executable(inputs)["out"]
    second = executable(random_inputs(graph, seed=7))["out"]
    np.testing.assert_array_equal(executable(inputs)["out"], first)
    assert not np.shares_memory(first, second)


def test_memory_does_not_grow_over_calls():
    graph = models.inception_module()
    executable = numba_cpu.compile(graph)
    inputs = random_inputs(graph)
    assert_memory_steady(lambda: executable(inputs), warmup=5, calls=100)


def test_generated_source_is_readable():
    graph = random_op_graph("conv2d", [(1, 16, 24, 24)], dict(out_channels=8, kernel=3, padding=1))
    executable = numba_cpu.compile(graph)
    sources = executable.source
    assert sources and all("def kernel(" in text for text in sources.values())
    winograd = [text for name, text in sources.items() if "winograd" in name]
    assert winograd and "F(4x4, 3x3)" in winograd[0]


def test_second_compile_in_a_fresh_process_loads_every_kernel_from_the_cache(tmp_path):
    """...and computes bit for bit what the first one did (kernels are always compiled in worker processes and
    loaded from the cache, so no process runs code it compiled itself)."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import backends.numba_cpu as numba_cpu
        from tests import models
        graph = models.unet_level()
        executable = numba_cpu.compile(graph, {{"cache_dir": {str(tmp_path)!r}}})
        x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape).astype(np.float32)
        np.save(sys.argv[1], executable({{"x": x}})["out"])
        stats = executable.stats
        print(stats["kernels"], stats["compiled"], stats["from_cache"])
    """)

    def run(output):
        result = subprocess.run([sys.executable, "-c", script, str(output)], capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr
        return [int(v) for v in result.stdout.split()]

    kernels, compiled, cached = run(tmp_path / "first.npy")
    assert compiled == kernels and cached == 0
    kernels, compiled, cached = run(tmp_path / "second.npy")
    assert compiled == 0 and cached == kernels
    np.testing.assert_array_equal(np.load(tmp_path / "first.npy"), np.load(tmp_path / "second.npy"))


def on_each_value(scalar_function):
    """A compiled loop applying one of mathlib's inlined scalar functions to each value of an array."""
    from numba import njit

    @njit
    def apply(values):
        out = np.empty_like(values)
        for i in range(values.size):
            out[i] = scalar_function(values[i])
        return out

    return apply


def test_fast_exp_is_exp_to_float32_precision():
    from backends.numba_cpu.mathlib import fast_exp

    exp_all = on_each_value(fast_exp)
    x = np.linspace(-87, 88, 200_001).astype(np.float32)
    np.testing.assert_allclose(exp_all(x), np.exp(x.astype(np.float64)), rtol=2e-7, atol=0)
    special = exp_all(np.array([np.nan, np.inf, -np.inf, 0.0], np.float32))
    assert np.isnan(special[0]) and special[1] == np.inf and 0 <= special[2] < 1e-37 and special[3] == 1.0


def test_fast_tanh_is_tanh_to_float32_precision():
    from backends.numba_cpu.mathlib import fast_tanh

    tanh_all = on_each_value(fast_tanh)
    tiny = np.logspace(-30, 1, 10_001)
    x = np.concatenate([np.linspace(-12, 12, 200_001), tiny, -tiny, [0.625, -0.625, 0.6249999]]).astype(np.float32)
    np.testing.assert_allclose(tanh_all(x), np.tanh(x.astype(np.float64)), rtol=3e-7, atol=0)
    special = tanh_all(np.array([np.nan, np.inf, -np.inf, 0.0, 100.0, -100.0], np.float32))
    assert np.isnan(special[0]) and list(special[1:]) == [1.0, -1.0, 0.0, 1.0, -1.0]


def test_max_pool_lets_nan_win_like_the_reference():
    graph = random_op_graph("max_pool2d", [(1, 2, 6, 6)], dict(kernel=3, stride=2, padding=1, ceil_mode=True))
    data = random((1, 2, 6, 6))
    data[0, 0, 1, 1], data[0, 1, 4, 4] = np.nan, np.inf
    out, expected = numba_cpu.compile(graph)({"x0": data})["y"], reference.run(graph, {"x0": data})["y"]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert np.isnan(out).any() and np.isinf(out).any()
    np.testing.assert_array_equal(out[~np.isnan(out)], expected[~np.isnan(expected)])


def test_a_kernel_that_fails_to_compile_is_one_error_and_the_workers_serve_on(tmp_path):
    from numba.core import types

    from backends.numba_cpu.kernels import KernelCache, KernelSource

    header = "import numpy as np\nfrom numba import njit\n\n\n@njit(cache=True)\n"
    broken = KernelSource("test_broken", header + "def kernel(x):\n    return x.no_such_attribute\n")
    working = KernelSource("test_working", header + "def kernel(x):\n    return x + 1.0\n")
    cache = KernelCache(tmp_path)
    signature = [(types.float32,)]
    with pytest.raises(RuntimeError, match="a kernel failed to compile: cnncomp_kernel_test_broken_.*TypingError"):
        cache.compile_in_workers([(broken, signature)], False, 1)
    cache.compile_in_workers([(working, signature)], False, 1)
    assert cache.missing(working, signature) == []


def test_a_worker_that_compiled_its_share_is_replaced(tmp_path, monkeypatch):
    from numba.core import types

    from backends.numba_cpu import kernels

    monkeypatch.setattr(kernels, "WORKER_KERNELS", 1)
    header = "import numpy as np\nfrom numba import njit\n\n\n@njit(cache=True)\n"
    cache = kernels.KernelCache(tmp_path)
    signature = [(types.float32,)]
    pids = []
    for step in range(2):
        kernel = kernels.KernelSource("test_recycled", header + f"def kernel(x):\n    return x + {step}.5\n")
        cache.compile_in_workers([(kernel, signature)], False, 1)
        assert cache.missing(kernel, signature) == []
        pids.append(kernels._WORKERS[0].process.pid)
    assert pids[0] != pids[1]


def test_a_worker_slow_to_exit_is_killed_and_never_reused(monkeypatch):
    import subprocess

    from backends.numba_cpu import kernels

    worker = kernels._Worker()
    wait = worker.process.wait

    def slow_wait(timeout=None):
        if timeout is not None:
            raise subprocess.TimeoutExpired("compile_worker", timeout)
        return wait()

    monkeypatch.setattr(worker.process, "wait", slow_wait)
    worker.close()
    assert not worker.alive() and worker.process.returncode is not None


def test_nodes_with_little_work_run_serial_kernels_that_match_the_reference(monkeypatch):
    monkeypatch.setattr(lowering, "SERIAL_WORK", 1 << 16)
    monkeypatch.setattr(lowering, "SERIAL_MACS", 1 << 16)  # the module is small: some of its nodes run parallel
    graph = models.inception_module()
    executable = assert_same_as_reference(graph, numba_cpu)
    small = {node.name for node in graph.nodes if node.op not in ("input", "constant")
             and lowering.runs_serial(node, graph)}
    assert small and len(small) < len(graph.nodes) - 1
    for step in executable.steps:
        assert ("parallel=True" not in step.kernel.source) == (step.node in small), step.node
