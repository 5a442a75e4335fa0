"""fuse_epilogue: bias, affine, residual add, activation and SE's gate ride along with the layer before them;
and the cases where they must not."""

import numpy as np
import pytest

from cnncomp.ops.activation import ACTIVATIONS
from cnncomp.passes.fold_batch_norm import fold_batch_norm
from cnncomp.passes.fuse_epilogue import fuse_epilogue
from cnncomp.passes.lower_pointwise import lower_pointwise
from frontends.builder import Builder
from tests.helpers import randomize
from tests.passes.models import assert_same_outputs, bottleneck_stage, mobile_blocks, op_counts, resnet


def test_resnet_stage_becomes_convs_only():
    graph = randomize(bottleneck_stage())
    fused = fuse_epilogue(fold_batch_norm(graph))
    assert op_counts(fused) == {"input": 1, "conv2d": 7}
    # Block 0: the main branch's last conv adds the projected shortcut; the projection itself stays a conv.
    conv3 = fused.node("layer2.0.conv3")
    assert conv3.inputs == ("layer2.0.conv2", "layer2.0.downsample")
    assert (conv3.attrs["residual"], conv3.attrs["act"]) == (True, "relu")
    assert conv3.meta["fused"] == ["layer2.0.bn3", "layer2.0.add1", "layer2.0.relu3"]
    assert fused.node("layer2.0.downsample").attrs["act"] is None
    # Block 1: the identity shortcut (block 0's output, read by conv1 too) stays intact and becomes the residual.
    # Its last conv absorbs the relu that was the graph output, so it takes the output's name.
    assert fused.outputs == ["layer2.1.relu3"]
    assert fused.node("layer2.1.relu3").op == "conv2d"
    assert fused.node("layer2.1.relu3").inputs == ("layer2.1.conv2", "layer2.0.conv3")
    assert {c.name for c in fused.consumers("layer2.0.conv3")} == {"layer2.1.conv1", "layer2.1.relu3"}
    assert fused.node("layer2.1.relu3").meta["fused"] == ["layer2.1.conv3", "layer2.1.bn3", "layer2.1.add1"]
    assert_same_outputs(graph, fused)


def test_resnet50_keeps_no_batch_norm_add_or_relu():
    graph = resnet(size=32)
    fused = fuse_epilogue(fold_batch_norm(graph))
    counts = op_counts(fused)
    assert counts["batch_norm"] == counts["add"] == counts["relu"] == 0
    assert counts["conv2d"] == 53 and sum(n.attrs.get("residual", False) for n in fused.nodes) == 16


@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_each_activation(act):
    b = Builder("act", batch=2)
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, padding=1)
    y = getattr(y, act)(**({"alpha": 0.2} if "alpha" in ACTIVATIONS[act].attrs else {}))
    graph = randomize(b.build(y.max_pool(2)))
    fused = fuse_epilogue(graph)
    assert op_counts(fused) == {"input": 1, "conv2d": 1, "max_pool2d": 1}
    assert fused.node("conv1").attrs["act"] == act
    assert fused.node("conv1").attrs["alpha"] == (0.2 if "alpha" in ACTIVATIONS[act].attrs else 0.01)
    assert_same_outputs(graph, fused)


def test_batch_norm_becomes_the_affine_when_not_folded():
    b = Builder("affine", batch=2)
    x = b.input("x", (3, 6, 6))
    graph = randomize(b.build((x.conv(4, 3, padding=1).batch_norm() + x.conv(4, 1)).relu().max_pool(2)))
    fused = fuse_epilogue(graph)
    assert op_counts(fused) == {"input": 1, "conv2d": 2, "max_pool2d": 1}
    node = fused.node("conv1")
    assert (node.attrs["affine"], node.attrs["residual"], node.attrs["act"]) == (True, True, "relu")
    assert_same_outputs(graph, fused)


def constant(b, name, value):
    return b.op("constant", name=name, shape=value.shape, weights={"value": value})


def test_constant_per_channel_bias_and_scale():
    rng = np.random.default_rng(0)
    b = Builder("consts")
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, bias=False, name="conv")
    y = b.add(y, constant(b, "bias", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)))
    y = b.mul(constant(b, "scale", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)), y)
    y = b.add(y, constant(b, "shift", rng.standard_normal((1, 4, 1, 1)).astype(np.float32)))
    graph = b.build(y.relu().max_pool(2))
    fused = fuse_epilogue(graph)
    conv = fused.node("conv")
    assert (conv.attrs["bias"], conv.attrs["affine"], conv.attrs["act"]) == (True, True, "relu")
    assert conv.meta["fused"] == ["add1", "mul1", "add2", "relu1"]
    assert_same_outputs(graph, fused)


def test_dense_takes_residual_and_activation():
    b = Builder("dense", batch=4)
    x = b.input("x", (12,))
    graph = randomize(b.build((x.dense(12) + x).tanh(name="out")))
    fused = fuse_epilogue(graph)
    assert op_counts(fused) == {"input": 1, "dense": 1} and fused.outputs == ["out"]
    assert_same_outputs(graph, fused)


def test_add_of_two_layers_fuses_into_the_left_one():
    b = Builder("two", batch=2)
    x = b.input("x", (3, 6, 6))
    graph = randomize(b.build((x.conv(4, 3, name="left") + x.conv(4, 3, name="right")).relu().max_pool(2)))
    fused = fuse_epilogue(graph)
    assert fused.node("left").inputs == ("x", "right") and fused.node("left").attrs["act"] == "relu"
    assert_same_outputs(graph, fused)


def test_squeeze_and_excitation_gate_rides_on_the_projection():
    graph = randomize(mobile_blocks(se=True))
    fused = fuse_epilogue(lower_pointwise(fold_batch_norm(graph)))
    counts = op_counts(fused)
    assert counts["mul"] == counts["sigmoid"] == counts["silu"] == counts["add"] == 0
    project = fused.node("block2.add1")  # the residual add was the graph output: its name stays
    assert project.op == "pointwise_conv2d" and project.attrs["gate"] and project.attrs["residual"]
    assert project.inputs == ("block2.depthwise", "block2.se_expand", "block1.project")
    assert sorted(project.meta["fused"]) == ["block2.mul1", "block2.project", "block2.project_bn"]
    assert_same_outputs(graph, fused)


# ----- preconditions: each a case where fusing would be wrong --------------------------------------------------
def test_no_fusion_when_the_intermediate_is_used_twice():
    b = Builder("twice")
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, name="conv")
    graph = randomize(b.build(y.relu() + y.sigmoid()))
    fused = fuse_epilogue(graph)
    assert fused.node("conv").attrs["act"] is None and op_counts(fused)["relu"] == 1
    assert_same_outputs(graph, fused)


def test_no_fusion_of_a_graph_output():
    b = Builder("output")
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, name="conv")
    graph = randomize(b.build(y.relu(), y))
    assert op_counts(fuse_epilogue(graph))["relu"] == 1


def test_no_residual_fusion_when_shapes_differ():
    b = Builder("shapes")
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, padding=1, name="conv")
    squeezed = x.global_avg_pool().conv(4, 1)  # N x 4 x 1 x 1: broadcast by the add, not a residual
    graph = randomize(b.build(b.add(y, squeezed).relu()))
    fused = fuse_epilogue(graph)
    assert not fused.node("conv").attrs["residual"] and op_counts(fused)["add"] == 1
    assert_same_outputs(graph, fused)


def test_no_bias_fusion_when_the_addend_is_not_per_channel():
    rng = np.random.default_rng(0)
    b = Builder("per_sample", batch=2)
    x = b.input("x", (3, 6, 6))
    per_sample = rng.standard_normal((2, 4, 1, 1)).astype(np.float32)  # differs between the two samples
    graph = randomize(b.build(b.add(x.conv(4, 3, name="conv"), constant(b, "c", per_sample)).relu()))
    fused = fuse_epilogue(graph)
    assert op_counts(fused)["add"] == 1
    assert fused.node("conv").attrs == graph.node("conv").attrs
    assert_same_outputs(graph, fused)


def test_no_linear_step_after_an_activation():
    b = Builder("order")
    x = b.input("x", (3, 6, 6))
    graph = randomize(b.build(x.conv(4, 3, act="relu", name="conv").batch_norm().sigmoid()))
    fused = fuse_epilogue(graph)
    assert op_counts(fused)["batch_norm"] == 1 and op_counts(fused)["sigmoid"] == 1
    assert_same_outputs(graph, fused)


def test_no_second_residual():
    b = Builder("residuals")
    x = b.input("x", (4, 6, 6))
    graph = randomize(b.build(x.conv(4, 3, padding=1, residual=x, name="conv") + x))
    fused = fuse_epilogue(graph)
    assert op_counts(fused)["add"] == 1
    assert_same_outputs(graph, fused)


def test_no_gate_fusion_into_a_conv_that_is_not_pointwise_or_reads_the_gate_elsewhere():
    b = Builder("gates")
    x = b.input("x", (4, 6, 6))
    gate = x.global_avg_pool().sigmoid()
    gated = x * gate
    graph = randomize(b.build(gated.conv(4, 3), (x * gate).conv(5, 1) + gated.conv(5, 1)))
    fused = fuse_epilogue(lower_pointwise(graph))
    assert op_counts(fused)["mul"] == 1  # the second mul rides on its 1x1 conv; the first is read three times
    assert sum(n.attrs.get("gate", False) for n in fused.nodes) == 1
    assert_same_outputs(graph, fused)
