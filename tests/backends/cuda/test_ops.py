"""Every op of the registry on the numba-cuda backend against the reference backend, in the simulator: small shapes
that still leave partial tiles, with strides, padding, dilation, groups and every epilogue. The simulator costs
about 2 ms per simulated thread, so shapes are tiny and channel counts few.

OP_CASES is the list of what runs; a new op in the registry without a case here fails
`test_every_registry_op_has_a_kernel_and_a_case`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import backends.numba_cuda as numba_cuda
from backends import reference
from backends.numba_cuda import lowering
from backends.numba_cuda.templates import conv
from cnncomp.ir import Graph
from cnncomp.ops import op_names
from cnncomp.ops.activation import ACTIVATIONS
from tests import models
from tests.helpers import activation_cases, assert_same_as_reference, random_op_graph

EXACT = dict(atol=0, rtol=0)


def pool_unpool(shape=(2, 2, 6, 4), kernel=2, stride=None):
    graph = Graph("pool_unpool")
    graph.add_node("x", "input", attrs={"shape": shape})
    graph.add_node("pooled", "max_pool2d", ["x"], dict(kernel=kernel, stride=stride))
    graph.add_node("indices", "max_pool2d_indices", ["x"], dict(kernel=kernel, stride=stride))
    graph.add_node("unpooled", "max_unpool2d", ["pooled", "indices"], dict(kernel=kernel, stride=stride))
    graph.set_outputs(["unpooled"])
    return graph


def constant_scale():
    graph = Graph("constant")
    graph.add_node("x", "input", attrs={"shape": (1, 3, 4, 4)})
    graph.add_node("c", "constant", attrs={"shape": (1, 3, 1, 1)},
                   params={"value": np.array([1, -2, 3], np.float32).reshape(1, 3, 1, 1)})
    graph.add_node("bias", "constant", attrs={"shape": (1, 3, 4, 4)},
                   params={"value": np.arange(48, dtype=np.float32).reshape(1, 3, 4, 4)})
    graph.add_node("scaled", "mul", ["x", "c"])
    graph.add_node("y", "add", ["bias", "scaled"])
    graph.set_outputs(["y"])
    return graph


def concat_with_a_repeated_operand():
    """An operand read twice by one concat cannot live inside it: both slots are copied."""
    graph = Graph("concat_twice")
    graph.add_node("a", "input", attrs={"shape": (2, 2, 3, 3)})
    graph.add_node("b", "input", attrs={"shape": (2, 1, 3, 3)})
    graph.add_node("y", "concat", ["a", "b", "a"])
    graph.set_outputs(["y"])
    return graph


# op -> cases: (input shapes, attrs, exact) or a function building the graph (then its tolerance is the default).
Case = tuple[list[tuple[int, ...]], dict, bool] | Callable[[], Graph]
OP_CASES: dict[str, list[Case]] = {
    "conv2d": [
        ([(1, 3, 7, 9)], dict(out_channels=5, kernel=3, padding=1), False),
        ([(2, 4, 9, 8)], dict(out_channels=6, kernel=(3, 2), stride=2, padding=(0, 2, 1, 0), dilation=(2, 1)), False),
        ([(1, 4, 6, 6)], dict(out_channels=6, kernel=3, padding=1, groups=2), False),
        ([(1, 6, 5, 7)], dict(out_channels=9, kernel=1), False),  # pointwise
        ([(1, 4, 7, 7)], dict(out_channels=3, kernel=1, stride=2, bias=False), False),
        ([(2, 4, 6, 5)], dict(out_channels=4, kernel=3, padding=1, groups=4), False),  # depthwise
        ([(1, 3, 6, 6)], dict(out_channels=6, kernel=3, stride=2, padding=1, groups=3), False),  # multiplier 2
    ],
    "conv_transpose2d": [
        ([(1, 4, 3, 3)], dict(out_channels=3, kernel=2, stride=2), False),
        ([(2, 3, 3, 4)], dict(out_channels=2, kernel=3, stride=2, padding=1, output_padding=1), False),
        ([(1, 4, 3, 2)], dict(out_channels=4, kernel=3, stride=3, padding=1, output_padding=2, groups=2), False),
        ([(1, 2, 3, 3)], dict(out_channels=2, kernel=3, padding=1, dilation=2, bias=False), False),
        ([(1, 2, 2, 2)], dict(out_channels=2, kernel=8, stride=4, padding=2, groups=2), False),  # FCN's upsampling
    ],
    "depthwise_conv2d": [
        ([(2, 3, 7, 6)], dict(kernel=3, padding=1), False),
        ([(1, 2, 9, 7)], dict(kernel=5, stride=2, padding=2, multiplier=2, act="relu6"), False),
        ([(1, 3, 6, 6)], dict(kernel=3, padding=2, dilation=2, bias=False, affine=True, act="silu"), False),
        ([(1, 2, 3, 9)], dict(kernel=3, padding=1), False),  # 2 outputs per thread, the last pair half outside
        ([(1, 1, 2, 35)], dict(kernel=(1, 3), padding=(0, 1)), False),  # 4 per thread
        ([(1, 1, 9, 130)], dict(kernel=(2, 3), padding=(1, 0, 2, 2), dilation=(1, 2)), False),  # 2 x 2 tiles
    ],
    "pointwise_conv2d": [
        ([(2, 6, 3, 5)], dict(out_channels=10, act="relu"), False),
        ([(2, 6, 3, 5), (2, 6, 1, 1)], dict(out_channels=7, gate=True), False),
        ([(2, 6, 3, 3), (2, 6, 1, 1), (2, 4, 3, 3)], dict(out_channels=4, gate=True, residual=True), False),
        ([(1, 5, 4, 4), (1, 3, 4, 4)], dict(out_channels=3, residual=True, affine=True), False),
    ],
    "separable_conv2d": [
        ([(1, 4, 6, 5)], dict(out_channels=6, kernel=3, padding=1), False),
        ([(2, 3, 7, 7)], dict(out_channels=5, kernel=3, stride=2, padding=1, mid_bias=True, mid_act="relu6",
                              act="relu"), False),
        ([(1, 2, 6, 6)], dict(out_channels=4, kernel=5, padding=2, multiplier=2, mid_bias=True, mid_act="leaky_relu",
                              mid_alpha=0.3, bias=False), False),
    ],
    "strided_slice": [([(2, 3, 9, 8)], dict(stride=(2, 3)), True)],
    "dense": [
        ([(1, 37)], dict(out_features=7), False),
        ([(3, 37)], dict(out_features=9, act="relu"), False),
        ([(2, 9), (2, 4)], dict(out_features=4, residual=True), False),
        ([(2, 11)], dict(out_features=5, bias=False, affine=True, act="sigmoid"), False),
    ],
    "max_pool2d": [
        ([(1, 2, 7, 7)], dict(kernel=3, stride=2, padding=1, ceil_mode=True), True),
        ([(2, 3, 8, 9)], dict(kernel=2), True),
        ([(1, 2, 11, 12)], dict(kernel=3, stride=2, padding=1, dilation=2, ceil_mode=True), True),
    ],
    "max_pool2d_indices": [
        ([(1, 2, 7, 7)], dict(kernel=3, stride=2, padding=1, ceil_mode=True), True),
        ([(1, 2, 11, 12)], dict(kernel=(2, 3), stride=(1, 2), padding=(1, 1), ceil_mode=True), True),
    ],
    "avg_pool2d": [
        ([(1, 2, 7, 7)], dict(kernel=3, stride=2, padding=1, ceil_mode=True), False),
        ([(1, 2, 7, 7)], dict(kernel=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False), False),
        ([(2, 2, 6, 7)], dict(kernel=(2, 3), stride=(1, 2), padding=(1, 1), count_include_pad=False), False),
    ],
    "max_unpool2d": [pool_unpool, lambda: pool_unpool((1, 2, 7, 7), kernel=3, stride=2)],
    "global_avg_pool": [([(2, 3, 5, 7)], {}, False), ([(1, 1, 20, 20)], {}, False), ([(1, 1, 50, 50)], {}, False)],
    "adaptive_avg_pool2d": [([(1, 2, 7, 5)], dict(output_size=(3, 2)), False),
                            ([(1, 2, 4, 4)], dict(output_size=(6, 5)), False)],
    "batch_norm": [([(2, 3, 4, 4)], dict(eps=1e-3), False), ([(3, 6)], {}, False)],
    "add": [([(2, 3, 4, 4), (2, 3, 4, 4)], {}, True), ([(2, 3, 4, 4), (2, 3, 1, 1)], {}, True),
            ([(2, 7), (2, 7)], {}, True)],
    "mul": [([(2, 3, 1, 1), (2, 3, 4, 4)], {}, True), ([(1, 2, 3, 3), (1, 2, 3, 3)], {}, True)],
    "concat": [
        ([(2, 2, 3, 3), (2, 5, 3, 3), (2, 1, 3, 3)], dict(axis=1), True),
        ([(1, 2, 3, 4), (1, 2, 2, 4)], dict(axis=2), True),
        ([(2, 2, 3, 2), (2, 2, 3, 3)], dict(axis=3), True),
        ([(2, 3), (2, 4)], dict(axis=1), True),
        concat_with_a_repeated_operand,
    ],
    "identity": [([(2, 3, 4, 5)], {}, True)],
    "dropout": [([(2, 3, 4, 5)], {}, True)],
    "flatten": [([(2, 3, 4, 5)], {}, True)],
    "pad": [([(1, 2, 5, 6)], dict(pads=(0, 2, 3, 1), mode=mode), True) for mode in ("zeros", "reflect", "replicate")],
    "crop": [([(1, 2, 9, 10), (1, 1, 4, 5)], {}, True)],
    "channel_slice": [([(2, 7, 3, 4)], dict(start=2, stop=6), True), ([(3, 9)], dict(start=4, stop=9), True),
                      models.channel_slices_around_concats, models.channel_slice_of_a_constant],
    "lrn": [([(2, 7, 3, 4)], dict(size=5, alpha=1e-4, beta=0.75, k=2.0), False),
            ([(1, 6, 2, 3)], dict(size=4, alpha=0.5, beta=0.5), False)],
    "softmax": [([(3, 10)], dict(axis=1), False), ([(2, 5, 3, 3)], dict(axis=1), False),
                ([(1, 2, 2, 4)], dict(axis=3), False), ([(1, 300)], dict(axis=1), False)],
    "upsample": [([(1, 2, 3, 4)], attrs, False) for attrs in (
        dict(mode="nearest", scale=2), dict(mode="nearest", size=(5, 7)), dict(mode="bilinear", scale=2),
        dict(mode="bilinear", size=(5, 7), align_corners=True), dict(mode="bicubic", scale=1.7),
        dict(mode="bicubic", size=(6, 5), align_corners=True))],
    **{name: [([(2, 3, 5, 7)], {}, False)] for name in ACTIVATIONS},
    "relu": [([(2, 3, 5, 7)], {}, True)],
    "relu6": [([(2, 3, 5, 7)], {}, True)],
    "leaky_relu": [([(1, 3, 4, 4)], dict(alpha=0.3), False)],
    "constant": [constant_scale],
}


def _cases():
    for op, cases in OP_CASES.items():
        for index, case in enumerate(cases):
            yield pytest.param(op, case, id=f"{op}-{index}")


def case_graph(op: str, case: Case) -> tuple[Graph, dict]:
    """The graph of one case of OP_CASES and the tolerance to check it with."""
    if callable(case):
        return case(), {}
    shapes, attrs, exact = case
    return random_op_graph(op, shapes, attrs), (EXACT if exact else {})


@pytest.mark.parametrize("op,case", list(_cases()))
def test_op_matches_the_reference(op, case):
    graph, tolerance = case_graph(op, case)
    assert op in {node.op for node in graph.nodes}
    assert_same_as_reference(graph, numba_cuda, **tolerance)


def test_every_registry_op_has_a_kernel_and_a_case():
    """An op added to the registry needs a CUDA lowering and a simulator case here (input needs neither)."""
    ops = set(op_names()) - {"input"}
    assert ops - set(lowering.LOWERINGS) - set(lowering.NO_LAUNCH) == set(), "ops without a CUDA kernel"
    assert ops - set(OP_CASES) == set(), "ops without a simulator case in OP_CASES"
    assert set(OP_CASES) - ops == set(), "cases for ops the registry does not have"


def test_channel_slices_are_views_without_a_launch():
    """Each channel slice sits in its input's slot at its first channel, with the input's batch stride; only the
    concats run copies (of the views they join: rest into joined, inner and x_last into tail)."""
    graph = models.channel_slices_around_concats()
    lowered = numba_cuda.lower_graph(graph)
    views = ["first", "rest", "middle", "inner", "x_last"]
    assert lowered.plan["channel_slice_views"] == views
    assert not {launch.node for launch in lowered.launches} & set(views)
    assert [launch.node for launch in lowered.launches if launch.kernel.family == "strided_copy"] == \
        ["joined", "tail", "tail"]
    for name in views:
        node = graph.node(name)
        source = lowered.slots[node.inputs[0]]
        start = node.attrs["start"] * node.shape[2] * node.shape[3]
        assert (lowered.slots[name].at, lowered.slots[name].batch) == (source.at + start, source.batch)


EPILOGUE_ACTIVATIONS = activation_cases()


@pytest.mark.parametrize("epilogue", EPILOGUE_ACTIVATIONS, ids=lambda e: e["act"])
def test_every_activation_in_the_epilogue(epilogue):
    """The epilogue is the same generated code in every family: each activation once, on a small 1x1 conv."""
    graph = random_op_graph("conv2d", [(1, 4, 4, 4)], dict(out_channels=6, kernel=1, **epilogue))
    assert_same_as_reference(graph, numba_cuda)


# (op, input shapes, attrs): bias, affine, residual and an activation together, in every family with an epilogue.
FULL_EPILOGUES = [
    ("conv2d", [(1, 3, 5, 5), (1, 4, 5, 5)], dict(out_channels=4, kernel=3, padding=1)),  # gemm conv
    ("conv2d", [(1, 5, 4, 4), (1, 3, 4, 4)], dict(out_channels=3, kernel=1)),  # gemm pointwise
    ("conv2d", [(1, 3, 5, 5), (1, 3, 5, 5)], dict(out_channels=3, kernel=3, padding=1, groups=3)),  # depthwise
    ("depthwise_conv2d", [(1, 2, 5, 5), (1, 4, 3, 3)], dict(kernel=3, stride=2, padding=1, multiplier=2)),
    ("separable_conv2d", [(1, 3, 5, 5), (1, 4, 5, 5)], dict(out_channels=4, kernel=3, padding=1, mid_bias=True,
                                                            mid_act="silu")),
    ("dense", [(2, 13), (2, 6)], dict(out_features=6)),
]


@pytest.mark.parametrize("op,shapes,attrs", FULL_EPILOGUES, ids=lambda v: v if isinstance(v, str) else None)
def test_full_epilogue_in_every_family(op, shapes, attrs):
    assert_same_as_reference(random_op_graph(op, shapes, {**attrs, "affine": True, "residual": True,
                                                           "act": "leaky_relu", "alpha": 0.1}), numba_cuda)


LARGE_TILES = [
    ((1, 6, 7, 9), dict(out_channels=40, kernel=3, padding=1), (64, 64)),  # MO = MP = 4, both sides partial
    ((2, 4, 6, 5), dict(out_channels=20, kernel=3, padding=(1, 0, 2, 1), stride=(1, 2)), (32, 32)),
    ((1, 8, 3, 5), dict(out_channels=12, kernel=1), (16, 16)),
]


@pytest.mark.parametrize("shape,attrs,tile", LARGE_TILES)
def test_large_gemm_tiles(monkeypatch, shape, attrs, tile):
    """Layers big enough for large tiles are too slow for the simulator: a small layer keeps its largest tile
    when the GPU-filling rule (TARGET_BLOCKS) is switched off."""
    monkeypatch.setattr(conv, "TARGET_BLOCKS", 1)
    executable = assert_same_as_reference(random_op_graph("conv2d", [shape], attrs), numba_cuda)
    (step,) = executable.steps
    specialization = dict(step.kernel.specialization)
    assert (specialization["TO"], specialization["TP"]) == tile


def test_gemm_tiles_fill_the_gpu_and_keep_their_invariants():
    for out_per_group in (1, 3, 8, 40, 64, 512, 2048):
        for columns in (1, 7, 49, 196, 3136, 100352):
            for groups in (1, 32):
                tile = conv.gemm_tile(out_per_group, columns, groups)
                assert tile.threads % tile.tp == 0 and tile.mo * tile.lanes_o == tile.to
                blocks = groups * -(-out_per_group // tile.to) * -(-columns // tile.tp)
                assert blocks >= conv.TARGET_BLOCKS or (tile.to, tile.tp) == (16, 16)
                assert tile.tk * (tile.to + tile.tp) * 4 <= 8192


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # numpy, in the simulated threads
def test_nan_and_inf_propagate_like_the_reference():
    graph = random_op_graph("conv2d", [(1, 3, 5, 5)], dict(out_channels=4, kernel=3, stride=2, padding=1, act="relu"))
    data = np.random.default_rng(0).standard_normal((1, 3, 5, 5)).astype(np.float32)
    data[0, 0, 1, 1], data[0, 1, 3, 3] = np.nan, np.inf
    out = numba_cuda.compile(graph)({"x0": data})["y"]
    expected = reference.run(graph, {"x0": data})["y"]
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
    assert not np.isfinite(expected).all()
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], atol=1e-4, rtol=1e-4)


def simulated_graphs() -> list[tuple[Graph, bool]]:
    """Every graph the tests above run, each with whether it wants the large tiles (TARGET_BLOCKS = 1): what the
    PTX checks compile too, so that no kernel the simulator ran escapes them."""
    graphs = [(case_graph(op, case)[0], False) for op, cases in OP_CASES.items() for case in cases]
    graphs += [(random_op_graph("conv2d", [(1, 4, 4, 4)], dict(out_channels=6, kernel=1, **epilogue)), False)
               for epilogue in EPILOGUE_ACTIVATIONS]
    graphs += [(random_op_graph(op, shapes, {**attrs, "affine": True, "residual": True, "act": "leaky_relu",
                                             "alpha": 0.1}), False) for op, shapes, attrs in FULL_EPILOGUES]
    graphs += [(random_op_graph("conv2d", [shape], attrs), True) for shape, attrs, _ in LARGE_TILES]
    return graphs
