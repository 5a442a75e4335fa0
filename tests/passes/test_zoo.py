"""The passes on the zoo: every model computes the same at -O0 and -O3 on the reference backend (small batch,
reduced input size where the model allows) with the same MAC total; the op counts and memory plans the issue
asks for on ResNet-50, Xception, EfficientNet-B0, GoogLeNet and U-Net."""

import numpy as np
import pytest

from backends import reference
from cnncomp.driver import load_model, zoo_models
from cnncomp.pipeline import optimize
from cnncomp.planner import describe_plan, memory_plan
from cnncomp.summary import summarize
from tests.helpers import random_inputs, randomize
from tests.passes.models import assert_outputs, op_counts

# name: (model parameters, input shape or None for the model's own at batch 2). Models that end in dense layers
# after a flatten keep their size; the others run smaller.
FAST = {
    "edge_detect": ({"size": 16}, None),
    "box_mean": ({"size": 16}, None),
    "sharpen": ({"size": 16}, None),
    "gaussian_blur": ({"size": 16}, None),
    "lenet5": ({}, None),
    "resnet18": ({}, (2, 3, 64, 64)),
    "resnet50": ({}, (2, 3, 32, 32)),
    "inception_naive": ({}, (2, 192, 14, 14)),
    "inception": ({}, (2, 192, 14, 14)),
    "xception": ({}, (2, 3, 71, 71)),
    "unet": ({"size": 188, "width": 8}, None),
    "efficientnet_b0": ({}, (2, 3, 64, 64)),
    "mobilenet_v2": ({}, (2, 3, 64, 64)),
}
SLOW = {
    "alexnet": ({}, (1, 3, 227, 227)),
    "vgg11": ({}, (1, 3, 224, 224)),
    "vgg11_lrn": ({}, (1, 3, 224, 224)),
    "vgg13": ({}, (1, 3, 224, 224)),
    "vgg16_c": ({}, (1, 3, 224, 224)),
    "vgg16": ({}, (1, 3, 224, 224)),
    "vgg19": ({}, (1, 3, 224, 224)),
    "resnet34": ({}, (2, 3, 64, 64)),
    "resnet101": ({}, (2, 3, 64, 64)),
    "resnet152": ({}, (2, 3, 64, 64)),
    "googlenet": ({}, (1, 3, 224, 224)),
    "fcn32s": ({"height": 64, "width": 64}, None),
    "fcn16s": ({"height": 64, "width": 64}, None),
    "fcn8s": ({"height": 64, "width": 64}, None),
}


def test_every_zoo_model_is_covered():
    assert set(FAST) | set(SLOW) == set(zoo_models())


def load_case(name, cases):
    params, shape = cases[name]
    graph = load_model(name, **params)
    graph = graph.with_input_shapes({graph.inputs[0].name: shape}) if shape else graph.with_batch(2)
    return randomize(graph)


def check_levels(graph):
    expected = reference.run(graph, random_inputs(graph))
    optimized, _ = optimize(graph, 3)
    assert summarize(optimized)["macs"] == summarize(graph)["macs"]
    assert len(optimized) <= len(graph)
    assert_outputs(expected, optimized, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("name", FAST)
def test_zoo_model_at_O0_and_O3(name):
    check_levels(load_case(name, FAST))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_heavy_zoo_model_at_O0_and_O3(name):
    check_levels(load_case(name, SLOW))


@pytest.fixture(scope="module")
def resnet50():
    return optimize(load_model("resnet50"), 3)[0]


def test_resnet50_after_O3_is_convs_with_fused_batch_norm_residual_and_relu(resnet50):
    counts = op_counts(resnet50)
    assert counts["batch_norm"] == counts["add"] == counts["relu"] == 0
    assert counts["conv2d"] + counts["pointwise_conv2d"] == 53
    assert counts["pointwise_conv2d"] == 36 and counts["strided_slice"] == 3  # 1x1 convs; 3 strided projections
    assert sum(n.attrs.get("residual", False) for n in resnet50.nodes) == 16  # one per bottleneck
    assert sum(n.attrs.get("act") == "relu" for n in resnet50.nodes) == 49
    assert summarize(resnet50)["macs"] == 4_089_184_256


def test_resnet50_memory_plan_at_batch_1_is_within_1_1x_of_the_lower_bound(resnet50):
    plan = memory_plan(resnet50)
    assert resnet50.node("image").shape == (1, 3, 224, 224)
    assert plan["arena_bytes"] <= 1.1 * plan["lower_bound_bytes"], describe_plan(plan)
    assert plan["lower_bound_bytes"] == (256 + 64 + 256) * 56 * 56 * 4  # layer1: residual, 3x3 out, block out


def test_xception_separable_convs_are_separable_nodes():
    graph = load_model("xception")
    depthwise = sum(1 for n in graph.nodes if n.op == "conv2d" and n.attrs["groups"] > 1)
    optimized, _ = optimize(graph, 3)
    counts = op_counts(optimized)
    assert depthwise == counts["separable_conv2d"] == 34 and counts["depthwise_conv2d"] == 0
    assert counts["batch_norm"] == counts["add"] == 0
    assert all(n.attrs["mid_act"] is None and not n.attrs["mid_bias"]  # nothing between the steps
               for n in optimized.nodes if n.op == "separable_conv2d")


def test_efficientnet_b0_depthwise_convs_feed_squeeze_and_excitation():
    # Every MBConv of EfficientNet-B0 has squeeze-and-excitation: the depthwise output is read by the SE pool and
    # by the gating mul, so it must exist whole and cannot become the hidden middle of a separable conv. The
    # pipeline leaves no depthwise-pointwise pair unfused: each depthwise conv (its batch norm and swish fused)
    # feeds the SE pool and the projection, which takes the SE gate as its input scale.
    graph = load_model("efficientnet_b0")
    optimized, _ = optimize(graph, 3)
    counts = op_counts(optimized)
    assert counts["depthwise_conv2d"] == 16 and counts["separable_conv2d"] == 0
    assert counts["mul"] == counts["sigmoid"] == counts["silu"] == counts["batch_norm"] == counts["add"] == 0
    for node in optimized.nodes:
        if node.op == "depthwise_conv2d":
            assert node.attrs["act"] == "silu"
            readers = sorted(c.op for c in optimized.consumers(node.name))
            assert readers == ["global_avg_pool", "pointwise_conv2d"]
            projection = next(c for c in optimized.consumers(node.name) if c.op == "pointwise_conv2d")
            assert projection.attrs["gate"] and projection.inputs[0] == node.name
    assert sum(n.attrs.get("gate", False) for n in optimized.nodes) == 16
    assert sum(n.attrs.get("residual", False) for n in optimized.nodes) == 9


def test_googlenet_1x1_convs_are_all_lowered():
    graph = load_model("googlenet")
    ones = sum(1 for n in graph.nodes if n.op == "conv2d" and n.attrs["kernel"] == (1, 1))
    optimized, _ = optimize(graph, 3)
    assert ones == op_counts(optimized)["pointwise_conv2d"] == 37
    assert not any(n.op == "conv2d" and n.attrs["kernel"] == (1, 1) for n in optimized.nodes)
    assert len(memory_plan(optimized)["in_place_concats"]) == 9  # each inception module's filter concatenation


def test_unet_concat_skips_cost_no_copy():
    optimized, _ = optimize(load_model("unet"), 3)
    plan = memory_plan(optimized)
    concats = [n for n in optimized.nodes if n.op == "concat"]
    assert len(concats) == 4 and sorted(plan["in_place_concats"]) == sorted(n.name for n in concats)
    for concat in concats:
        crop, up = (optimized.node(name) for name in concat.inputs)
        assert crop.op == "crop" and up.op == "conv_transpose2d"
        # The crop of the skip and the up-convolution write straight into their halves of the concat.
        for operand in (crop, up):
            assert plan["tensors"][operand.name]["view_of"] == concat.name
        assert plan["tensors"][up.name]["offset"] - plan["tensors"][crop.name]["offset"] == crop.type.nbytes
    assert plan["arena_bytes"] <= 1.1 * plan["lower_bound_bytes"], describe_plan(plan)


def test_unet_runs_in_its_plan_at_a_small_size():
    from tests.passes.test_plan_memory import run_in_arena

    graph = randomize(load_model("unet", size=188, width=8))
    optimized, _ = optimize(graph, 3)
    inputs = random_inputs(graph)
    expected = reference.run(graph, inputs)["segmentation"]
    actual = run_in_arena(optimized, inputs)["segmentation"]
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
