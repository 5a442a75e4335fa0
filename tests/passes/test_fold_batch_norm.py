"""fold_batch_norm: batch norms folded into the weights before or after them, and where they must stay."""

import numpy as np
import pytest

from cnncomp.passes.fold_batch_norm import fold_batch_norm
from cnncomp.passes.lower_depthwise import lower_depthwise
from cnncomp.passes.lower_pointwise import lower_pointwise
from frontends.builder import Builder
from tests.helpers import randomize
from tests.passes.models import assert_same_outputs, bottleneck_stage, mobile_blocks, op_counts, xception_blocks


def test_resnet_stage_loses_every_batch_norm():
    graph = randomize(bottleneck_stage())
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 0
    assert op_counts(folded)["conv2d"] == op_counts(graph)["conv2d"] == 7
    conv = folded.node("layer2.0.conv1")
    assert conv.attrs["bias"] and conv.meta["fused"] == ["layer2.0.bn1"] and conv.meta["block"] == "layer2.0"
    assert "layer2.0.bn1.running_var" not in folded.params
    assert_same_outputs(graph, folded)


def test_the_argument_graph_is_left_alone():
    graph = randomize(bottleneck_stage())
    before = (graph.to_json(), {k: v.copy() for k, v in graph.params.items()})
    fold_batch_norm(graph)
    assert graph.to_json() == before[0]
    assert all(np.array_equal(graph.params[k], v) for k, v in before[1].items())


@pytest.mark.parametrize("build", [xception_blocks, mobile_blocks, lambda: mobile_blocks(se=True)])
def test_mobile_and_xception_blocks(build):
    graph = randomize(build())
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 0
    assert_same_outputs(graph, folded)


@pytest.mark.parametrize("lower", [lower_depthwise, lower_pointwise])
def test_folds_into_the_lowered_ops_too(lower):
    graph = randomize(mobile_blocks())
    lowered = lower(graph)
    folded = fold_batch_norm(lowered)
    assert op_counts(folded)["batch_norm"] == 0
    assert_same_outputs(graph, folded)


def test_dense_then_batch_norm_1d():
    b = Builder("head", batch=3)
    x = b.input("x", (10,))
    graph = randomize(b.build(x.dense(6, bias=False).batch_norm(name="bn").relu(name="out")))
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 0
    assert_same_outputs(graph, folded)


@pytest.mark.parametrize("groups", [1, 2])
def test_transposed_conv_then_batch_norm(groups):
    b = Builder("up", batch=2)
    x = b.input("x", (4, 5, 5))
    graph = randomize(b.build(x.conv_transpose(6, 2, 2, groups=groups).batch_norm(name="bn")))
    folded = fold_batch_norm(graph)
    assert op_counts(folded) == {"input": 1, "conv_transpose2d": 1}
    assert folded.outputs == ["bn"]  # the batch norm was the output: the folded layer takes its name
    assert_same_outputs(graph, folded)


@pytest.mark.parametrize("groups,bias", [(1, True), (1, False), (2, True)])
def test_lone_batch_norm_folds_into_the_conv_after_it(groups, bias):
    b = Builder("lone", batch=2)
    x = b.input("x", (4, 7, 7))
    y = x.relu().batch_norm(name="bn").conv(6, 3, stride=2, groups=groups, bias=bias, name="conv")
    graph = randomize(b.build(y.relu()))
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 0
    assert folded.node("conv").inputs == ("relu1",) and folded.node("conv").meta["fused"] == ["bn"]
    assert_same_outputs(graph, folded)


def test_lone_batch_norm_folds_into_a_dense_layer():
    b = Builder("lone_dense", batch=2)
    x = b.input("x", (3, 4, 4))
    graph = randomize(b.build(x.relu().flatten().batch_norm().dense(5)))
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 0
    assert_same_outputs(graph, folded)


# ----- preconditions: each a case where folding would be wrong -------------------------------------------------
def test_no_fold_when_the_conv_output_is_read_twice():
    b = Builder("twice")
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, name="conv")
    graph = randomize(b.build(y.batch_norm(name="bn") + y))
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 1 and folded.node("conv").attrs == graph.node("conv").attrs
    assert_same_outputs(graph, folded)


def test_no_fold_when_the_conv_output_is_a_graph_output():
    b = Builder("output")
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3, name="conv")
    graph = randomize(b.build(y.batch_norm(name="bn"), y))
    assert op_counts(fold_batch_norm(graph))["batch_norm"] == 1


def test_no_fold_through_a_fused_activation():
    b = Builder("act")
    x = b.input("x", (3, 6, 6))
    graph = randomize(b.build(x.conv(4, 3, act="relu").batch_norm()))
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 1
    assert_same_outputs(graph, folded)


def test_no_fold_into_a_padded_conv_after_the_batch_norm():
    b = Builder("padded")
    x = b.input("x", (3, 6, 6))
    graph = randomize(b.build(x.relu().batch_norm().conv(4, 3, padding=1)))
    assert op_counts(fold_batch_norm(graph))["batch_norm"] == 1


def test_no_fold_of_a_lone_batch_norm_read_twice_or_as_a_residual():
    b = Builder("lone_twice")
    x = b.input("x", (4, 6, 6))
    bn = x.relu().batch_norm(name="bn")
    graph = randomize(b.build(bn.conv(4, 1) + bn.conv(4, 1)))
    assert op_counts(fold_batch_norm(graph))["batch_norm"] == 1
    b = Builder("lone_residual")
    x = b.input("x", (4, 6, 6))
    bn = x.relu().batch_norm(name="bn")
    graph = randomize(b.build(x.conv(4, 1, residual=bn)))
    folded = fold_batch_norm(graph)
    assert op_counts(folded)["batch_norm"] == 1
    assert_same_outputs(graph, folded)
