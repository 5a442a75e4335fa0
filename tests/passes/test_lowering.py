"""lower_pointwise and lower_depthwise: which convolutions become which kernels, with their epilogues."""

import pytest

from cnncomp.passes.fold_batch_norm import fold_batch_norm
from cnncomp.passes.fuse_epilogue import fuse_epilogue
from cnncomp.passes.lower_depthwise import lower_depthwise
from cnncomp.passes.lower_pointwise import lower_pointwise
from cnncomp.summary import summarize
from frontends.builder import Builder
from tests.helpers import randomize
from tests.passes.models import assert_same_outputs, bottleneck_stage, inception_net, mobile_blocks, op_counts


def test_inception_1x1_convs_become_pointwise():
    graph = randomize(inception_net())
    lowered = lower_pointwise(graph)
    counts = op_counts(lowered)
    assert counts["pointwise_conv2d"] == 8 and counts["conv2d"] == 4  # the 3x3 and 5x5 convs stay
    assert all(n.attrs["kernel"] != (1, 1) for n in lowered.nodes if n.op == "conv2d")
    node = lowered.node("inception_3a.1x1")
    assert node.inputs == ("x",) and lowered.params["inception_3a.1x1.weight"].shape == (8, 24)
    assert summarize(lowered)["macs"] == summarize(graph)["macs"]
    assert_same_outputs(graph, lowered)


def test_strided_1x1_conv_reads_a_strided_slice():
    graph = randomize(bottleneck_stage())
    lowered = lower_pointwise(graph)
    assert op_counts(lowered)["strided_slice"] == 1
    projection = lowered.node("layer2.0.downsample")
    (sliced,) = projection.inputs
    assert lowered.node(sliced).op == "strided_slice" and lowered.node(sliced).attrs["stride"] == (2, 2)
    assert lowered.node(sliced).inputs == ("x",) and lowered.node(sliced).meta["block"] == "layer2.0"
    assert_same_outputs(graph, lowered)


def test_fused_epilogue_comes_along():
    graph = randomize(bottleneck_stage())
    fused = fuse_epilogue(fold_batch_norm(graph))
    lowered = lower_pointwise(fused)
    conv3 = lowered.node("layer2.0.conv3")
    assert conv3.op == "pointwise_conv2d" and conv3.inputs == ("layer2.0.conv2", "layer2.0.downsample")
    assert (conv3.attrs["bias"], conv3.attrs["residual"], conv3.attrs["act"]) == (True, True, "relu")
    assert conv3.meta == fused.node("layer2.0.conv3").meta
    assert_same_outputs(graph, lowered)


@pytest.mark.parametrize("conv", [
    dict(out_channels=8, kernel=1, groups=2),  # grouped 1x1 (ShuffleNet): stays a grouped conv
    dict(out_channels=8, kernel=1, padding=1),  # padded 1x1: a border of bias only
    dict(out_channels=8, kernel=3, padding=1),
    dict(out_channels=8, kernel=(1, 3)),
])
def test_other_convs_are_not_pointwise(conv):
    b = Builder("not_pointwise")
    x = b.input("x", (4, 6, 6))
    graph = randomize(b.build(x.conv(**conv)))
    lowered = lower_pointwise(graph)
    assert op_counts(lowered) == {"input": 1, "conv2d": 1}


def test_depthwise_convs_become_depthwise_with_their_epilogue():
    graph = randomize(mobile_blocks())
    lowered = lower_depthwise(fuse_epilogue(fold_batch_norm(graph)))
    counts = op_counts(lowered)
    assert counts["depthwise_conv2d"] == 2
    node = lowered.node("block1.depthwise")
    assert (node.attrs["multiplier"], node.attrs["stride"], node.attrs["act"]) == (1, (2, 2), "relu6")
    assert summarize(lowered)["macs"] == summarize(graph)["macs"]
    assert_same_outputs(graph, lowered)


def test_channel_multiplier_and_residual():
    b = Builder("multiplier", batch=2)
    x = b.input("x", (3, 7, 7))
    skip = x.conv(6, 3, padding=1)
    graph = randomize(b.build(x.conv(6, 3, padding=2, dilation=2, groups=3, residual=skip, act="silu")))
    lowered = lower_depthwise(graph)
    node = lowered.node("conv2")
    assert node.op == "depthwise_conv2d" and node.attrs["multiplier"] == 2 and node.inputs == ("x", "conv1")
    assert_same_outputs(graph, lowered)


@pytest.mark.parametrize("channels,groups", [(8, 4), (8, 1), (1, 1)])
def test_other_grouped_convs_stay_grouped(channels, groups):
    b = Builder("grouped")
    x = b.input("x", (channels, 6, 6))
    graph = randomize(b.build(x.conv(8, 3, groups=groups)))
    assert op_counts(lower_depthwise(graph)) == {"input": 1, "conv2d": 1}
