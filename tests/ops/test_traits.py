"""The op facts the passes and frontends read from the registry: consistent with each other and with what the
passes do with them (a table a pass once kept by name is now a trait; these check the trait says what the pass
needs)."""

import numpy as np
import pytest

from backends import reference
from cnncomp.ir import Graph
from cnncomp.ops import Fusion, get_op, op_names
from cnncomp.ops.activation import ACTIVATIONS, Activation
from cnncomp.ops.epilogue import carries_epilogue
from cnncomp.passes.eliminate_identity import eliminate_identity
from cnncomp.passes.fuse_epilogue import fuse_epilogue
from frontends.builder import initialize_params
from tests.helpers import random

OPS = [get_op(name) for name in op_names()]


def test_every_activation_of_the_registry_is_an_epilogue_choice():
    registered = {op.name for op in OPS if isinstance(op, Activation)}
    assert set(ACTIVATIONS) == registered
    assert set(get_op("conv2d").attrs["act"].choices) == registered
    assert set(get_op("separable_conv2d").attrs["mid_act"].choices) == registered


def test_epilogue_layers_are_out_elementwise_fusable_and_activations_elementwise():
    """fuse_epilogue fuses steps of class ELEMWISE/BROADCAST into layers that carry the epilogue: every such layer
    is OUT_ELEMWISE_FUSABLE, every activation ELEMWISE, and no layer can ride in another's epilogue."""
    layers = [op for op in OPS if carries_epilogue(op)]
    assert {op.name for op in layers} == {"conv2d", "dense", "depthwise_conv2d", "pointwise_conv2d",
                                          "separable_conv2d"}
    assert all(op.fusion == Fusion.OUT_ELEMWISE_FUSABLE for op in layers)
    assert all(op.fusion == Fusion.ELEMWISE for op in ACTIVATIONS.values())


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_fuse_epilogue_takes_every_activation_of_the_registry(act):
    graph = Graph("g")
    graph.add_node("x", "input", [], {"shape": (1, 3, 6, 6)})
    graph.add_node("conv", "conv2d", ["x"], {"out_channels": 4, "kernel": 3})
    graph.add_node("act", act, ["conv"])
    graph.set_outputs(["act"])
    initialize_params(graph)
    fused = fuse_epilogue(graph)
    assert [(node.op, node.attrs.get("act")) for node in fused.nodes][1:] == [("conv2d", act)]
    inputs = {"x": random((1, 3, 6, 6), 1)}
    np.testing.assert_allclose(reference.compile(fused)(inputs)["act"], reference.compile(graph)(inputs)["act"],
                               atol=1e-5, rtol=1e-5)


def test_output_weight_is_a_parameter_of_the_op():
    """fold_batch_norm scales the `output_weight` parameter: each op naming one has it, with output channels
    along axis 0 (conv_transpose2d: axis 1 per group)."""
    named = {op.name: op.output_weight for op in OPS if op.output_weight is not None}
    assert named == {"conv2d": "weight", "conv_transpose2d": "weight", "dense": "weight",
                     "depthwise_conv2d": "weight", "pointwise_conv2d": "weight",
                     "separable_conv2d": "pointwise_weight"}


@pytest.mark.parametrize("op", [op.name for op in OPS if op.copies_operand])
def test_an_op_that_copies_its_operand_computes_it_unchanged_and_is_eliminated_where_its_type_is_unchanged(op):
    graph = Graph("g")
    graph.add_node("x", "input", [], {"shape": (2, 5)})
    graph.add_node("a", "relu", ["x"])
    graph.add_node("copy", op, ["a"])
    graph.add_node("b", "relu", ["copy"])
    graph.set_outputs(["b"])
    x = random((2, 5), 1)
    np.testing.assert_array_equal(get_op(op).reference([x], {}, graph.node("copy").attrs), x)
    assert [node.op for node in eliminate_identity(graph).nodes] == ["input", "relu", "relu"]


def test_per_pixel_ops_are_those_dense_to_conv_may_cross():
    per_pixel = {op.name for op in OPS if op.per_pixel({"axis": 1})}
    assert per_pixel == {*ACTIVATIONS, "dropout", "identity", "batch_norm", "add", "mul", "dense", "softmax",
                         "concat"}
    assert not get_op("softmax").per_pixel({"axis": 2}) and not get_op("concat").per_pixel({"axis": 2})
