"""plan_memory: every model run through one arena exactly as the plan places its tensors (any overlap of live
tensors would corrupt the outputs), the arena against its lower bound, concats and channel slices without copies,
and the plan saved with the graph."""

import json

import numpy as np
import pytest

from backends import reference
from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.ops import get_op
from cnncomp.pipeline import optimize
from cnncomp.planner import PLAN_KEY, check_plan, describe_plan, memory_plan, plan_memory, plan_of
from frontends.builder import Builder
from tests.helpers import random_inputs, randomize
from tests.models import channel_slices_around_concats, dual_path_block, res2net_block
from tests.passes.models import bottleneck_stage, inception_net, mobile_blocks, resnet, unet_level, xception_blocks


def arena_view(arena: np.ndarray, slot: dict, node) -> np.ndarray:
    """The tensor of `node` inside the arena, as the plan places it (offset, per-sample stride)."""
    dtype = np.dtype(node.type.dtype)
    sample_shape = node.shape[1:]
    sample_strides = np.empty(sample_shape, dtype).strides if sample_shape else ()
    strides = (slot["batch_stride"] * dtype.itemsize, *sample_strides)
    return np.ndarray(node.shape, dtype, buffer=arena, offset=slot["offset"], strides=strides)


def run_in_arena(graph: Graph, inputs: dict) -> dict:
    """Execute the graph the way a backend following the plan would: every tensor lives in its arena slot, a
    concat copies only the operands that are not already in their slice, a channel slice that is a view copies
    nothing. The arena starts full of NaNs."""
    plan = memory_plan(graph)
    arena = np.full(plan["arena_bytes"] // 4 + 1, np.nan, np.float32).view(np.uint8)
    tensors = plan["tensors"]

    def value(name):
        node = graph.node(name)
        if node.op == "constant":
            return graph.params[f"{name}.value"]
        return arena_view(arena, tensors[name], node).copy()

    for node in graph.nodes:
        target = arena_view(arena, tensors[node.name], node) if node.name in tensors else None
        if node.op == "input":
            target[...] = inputs[node.name]
        elif node.op == "concat" and node.attrs["axis"] == 1:
            start = 0
            for operand in node.inputs:
                width = graph.node(operand).shape[1]
                if tensors.get(operand, {}).get("view_of") != node.name:
                    target[:, start:start + width] = value(operand)
                start += width
        elif node.name in plan["channel_slice_views"]:
            continue
        elif target is not None:
            operands = [value(name) for name in node.inputs]
            target[...] = get_op(node.op).reference(operands, graph.node_params(node.name), node.attrs)
    return {name: value(name) for name in graph.outputs}


MODELS = {
    "bottleneck_stage": bottleneck_stage,
    "inception": inception_net,
    "xception": xception_blocks,
    "mbconv_se": lambda: mobile_blocks(se=True),
    "unet": unet_level,
    "unet_padded": lambda: unet_level(padded=True),
    "dual_path": lambda: dual_path_block(batch=2),
    "res2net": lambda: res2net_block(batch=2),
    "slices_around_concats": channel_slices_around_concats,
}


@pytest.mark.parametrize("level", [0, 2])
@pytest.mark.parametrize("model", MODELS)
def test_running_in_the_planned_arena_gives_the_reference_outputs(model, level):
    graph = randomize(MODELS[model]())
    optimized, _ = optimize(graph, level)
    planned = plan_memory(optimized)
    inputs = random_inputs(graph)
    expected = reference.run(graph, inputs)
    actual = run_in_arena(planned, inputs)
    for name in expected:
        scale = max(1.0, float(np.abs(expected[name]).max()))
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-4, atol=1e-4 * scale, err_msg=name)
    plan = plan_of(planned)
    assert plan["lower_bound_bytes"] <= plan["arena_bytes"] < plan["total_bytes"]


def test_resnet50_at_batch_1_is_within_1_1x_of_the_lower_bound():
    graph = plan_memory(optimize(resnet(), 2)[0])
    plan = plan_of(graph)
    assert plan["arena_bytes"] <= 1.1 * plan["lower_bound_bytes"], describe_plan(plan)
    assert plan["arena_bytes"] < plan["total_bytes"] / 5
    # The lower bound is the most bytes live at one step: in layer1, the block input (the residual, 256x56x56),
    # the 3x3 conv's output (64x56x56) and the last conv's output (256x56x56).
    assert plan["lower_bound_bytes"] == (256 + 64 + 256) * 56 * 56 * 4


def test_resnet50_at_32x32_runs_in_its_arena():
    graph = randomize(resnet(size=32))
    planned = plan_memory(optimize(graph, 2)[0])
    inputs = random_inputs(graph)
    expected = reference.run(graph, inputs)["fc"]
    np.testing.assert_allclose(run_in_arena(planned, inputs)["fc"], expected, rtol=1e-3,
                               atol=1e-4 * np.abs(expected).max())


@pytest.mark.parametrize("padded", [False, True])
def test_unet_skip_concat_costs_no_copy(padded):
    graph = plan_memory(optimize(unet_level(padded=padded, size=36), 2)[0])
    plan = plan_of(graph)
    assert plan["in_place_concats"] == ["up1.concat"]
    copied = graph.node("up1.concat").inputs[0]
    assert copied == ("down1.conv2" if padded else "up1.crop")  # the skip: the second conv, relu fused
    skip, up = plan["tensors"][copied], plan["tensors"]["up1.upconv"]
    concat = plan["tensors"]["up1.concat"]
    # The skip (or its crop) and the up-convolution write straight into their channel slices of the concat.
    assert skip["view_of"] == up["view_of"] == "up1.concat"
    assert skip["offset"] == concat["offset"]
    assert up["offset"] == concat["offset"] + skip["bytes"]  # batch 1: the slices follow each other
    assert skip["batch_stride"] == up["batch_stride"] == graph.node("up1.concat").type.size


def test_concat_views_at_batch_2_stride_over_the_whole_concat():
    graph = plan_memory(optimize(inception_net(batch=2), 2)[0])
    plan = plan_of(graph)
    concat = graph.node("inception_3a.output")
    assert "inception_3a.output" in plan["in_place_concats"]
    first, second = (plan["tensors"][name] for name in concat.inputs[:2])
    per_sample = concat.type.size // 2
    assert first["batch_stride"] == second["batch_stride"] == per_sample
    channels = graph.node(concat.inputs[0]).shape[1]
    assert second["offset"] - first["offset"] == channels * concat.shape[2] * concat.shape[3] * 4


def test_operand_of_two_concats_and_nested_concats():
    b = Builder("concats", batch=2)
    x = b.input("x", (2, 4, 4))
    a, c = x.conv(3, 1, name="a"), x.conv(2, 1, name="c")
    inner = b.concat(a, c, name="inner")
    outer = b.concat(x.conv(1, 1, name="d"), inner, name="outer")
    graph = randomize(b.build(outer.relu(), b.concat(a, x, name="again")))
    planned = plan_memory(graph)
    tensors = plan_of(planned)["tensors"]
    assert tensors["a"]["view_of"] is None  # read by two concats: it keeps its own memory, both copy it
    assert tensors["c"]["view_of"] == "inner" and tensors["inner"]["view_of"] == "outer"
    assert tensors["c"]["offset"] == tensors["outer"]["offset"] + (1 + 3) * 16 * 4
    assert tensors["c"]["batch_stride"] == 6 * 16
    inputs = random_inputs(graph)
    expected = reference.run(graph, inputs)
    for name, value in run_in_arena(planned, inputs).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6)


def test_constants_live_in_the_parameters():
    b = Builder("constant")
    x = b.input("x", (2, 3, 3))
    c = b.op("constant", name="c", shape=(1, 2, 3, 3), weights={"value": np.ones((1, 2, 3, 3), np.float32)})
    graph = b.build(b.concat(x + c, c))
    tensors = plan_of(plan_memory(graph))["tensors"]
    assert "c" not in tensors and tensors["add1"]["view_of"] == "concat1"


def test_the_plan_is_saved_and_loaded_with_the_graph():
    graph = plan_memory(optimize(randomize(bottleneck_stage()), 2)[0])
    loaded = Graph.from_json(graph.to_json(), graph.params)
    assert loaded.meta == graph.meta and json.loads(graph.to_json())["meta"][PLAN_KEY]["arena_bytes"] > 0
    check_plan(loaded)
    copied = graph.copy()
    copied.meta[PLAN_KEY]["arena_bytes"] = 0
    assert graph.meta[PLAN_KEY]["arena_bytes"] > 0  # copies do not share the plan
    assert Graph.from_json(randomize(bottleneck_stage()).to_json()).meta == {}


def test_a_stale_plan_is_refused():
    graph = plan_memory(optimize(randomize(bottleneck_stage()), 2)[0])
    assert PLAN_KEY not in graph.with_batch(4).meta  # a plan describes the shapes it was made for
    with pytest.raises(GraphError, match="has no memory plan"):
        check_plan(graph.with_batch(4))
    changed = graph.copy()
    changed.add_node("extra", "relu", [graph.outputs[0]])
    with pytest.raises(GraphError, match="another node order"):
        check_plan(changed)
    resized = graph.copy()
    resized.meta[PLAN_KEY]["tensors"]["x"]["bytes"] += 4
    with pytest.raises(GraphError, match="planned for"):
        check_plan(resized)


@pytest.mark.parametrize("build", [channel_slices_around_concats, lambda: dual_path_block(batch=2),
                                   lambda: res2net_block(batch=2)])
def test_channel_slices_are_views_and_the_outputs_are_bit_equal(build):
    graph = randomize(build())
    planned = plan_memory(graph)
    plan = plan_of(planned)
    slices = [node for node in graph.nodes if node.op == "channel_slice"]
    assert plan["channel_slice_views"] == [node.name for node in slices]
    for node in slices:
        view, source = plan["tensors"][node.name], plan["tensors"][node.inputs[0]]
        channel_bytes = 4 * node.shape[2] * node.shape[3]
        assert view["view_of"] == node.inputs[0]
        assert view["offset"] == source["offset"] + node.attrs["start"] * channel_bytes
        assert view["batch_stride"] == source["batch_stride"]
    inputs = random_inputs(graph)
    expected = reference.run(graph, inputs)
    actual = run_in_arena(planned, inputs)
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=name)


def test_a_channel_slice_joined_by_a_concat_stays_a_view_and_is_copied():
    plan = plan_of(plan_memory(channel_slices_around_concats()))
    tensors = plan["tensors"]
    # rest (a view of a) cannot also live inside joined: joined copies it; c1 is written in place.
    assert tensors["rest"]["view_of"] == "a" and tensors["c1"]["view_of"] == "joined"
    assert plan["in_place_concats"] == []
    assert describe_plan(plan).endswith("0 concat(s) in place, 5 channel slice(s) as views")
