"""fuse_separable: depthwise + pointwise pairs become one separable_conv2d node, and where they must not."""

from cnncomp.pipeline import optimize
from cnncomp.summary import summarize
from frontends.builder import Builder
from tests.helpers import randomize
from tests.passes.models import assert_same_outputs, mobile_blocks, op_counts, xception_blocks


def test_xception_separable_convs_are_one_node_each():
    graph = randomize(xception_blocks())
    result, _ = optimize(graph, 2)
    counts = op_counts(result)
    assert counts["separable_conv2d"] == 5 and counts["depthwise_conv2d"] == 0
    node = result.node("entry_block.sep2_pointwise")
    assert (node.attrs["mid_bias"], node.attrs["mid_act"]) == (False, None)  # Xception: nothing in between
    assert node.meta["fused"] == ["entry_block.sep2_depthwise", "entry_block.bn2"]
    assert set(result.node_params(node.name)) == {"depthwise_weight", "pointwise_weight", "bias"}
    # The entry block's add(max_pool, projection) rides on the strided 1x1 projection, which reads a slice.
    projection = result.node("entry_block.residual")
    assert projection.op == "pointwise_conv2d" and projection.attrs["residual"]
    assert result.node(projection.inputs[0]).op == "strided_slice"
    assert projection.inputs[1] == "entry_block.max_pool1"
    # The middle block's last separable conv adds the block's input: the residual rides on the pointwise step.
    last = [n for n in result.nodes if n.op == "separable_conv2d"][-1]
    assert last.attrs["residual"] and last.inputs[1] == "entry_block.residual"
    assert summarize(result)["macs"] == summarize(graph)["macs"]
    assert_same_outputs(graph, result)


def test_mobilenet_keeps_bias_and_relu6_between_the_steps():
    graph = randomize(mobile_blocks())
    result, _ = optimize(graph, 2)
    assert op_counts(result) == {"input": 1, "pointwise_conv2d": 2, "separable_conv2d": 2}
    node = result.node("block1.project")
    assert (node.attrs["mid_bias"], node.attrs["mid_act"], node.attrs["stride"]) == (True, "relu6", (2, 2))
    assert result.node("block2.add1").attrs["residual"]  # block 2's output: the residual add's name stays
    assert_same_outputs(graph, result)


def test_unfolded_depthwise_affine_is_folded_into_the_separable_weights():
    graph = randomize(mobile_blocks())
    result, _ = optimize(graph, 2, disable=["fold_batch_norm"])
    assert op_counts(result)["separable_conv2d"] == 2 and op_counts(result)["batch_norm"] == 0
    assert not any(n.attrs.get("affine") for n in result.nodes if n.op == "depthwise_conv2d")
    assert_same_outputs(graph, result)


# ----- preconditions -------------------------------------------------------------------------------------------
def test_squeeze_and_excitation_keeps_the_depthwise_output():
    # The SE pool and the gate both read the depthwise output, so it must exist whole: no separable node; the
    # gate rides on the pointwise projection instead.
    graph = randomize(mobile_blocks(se=True))
    result, _ = optimize(graph, 2)
    counts = op_counts(result)
    assert counts["separable_conv2d"] == 0 and counts["depthwise_conv2d"] == 2
    assert sum(n.attrs.get("gate", False) for n in result.nodes) == 2
    assert_same_outputs(graph, result)


def depthwise_then_pointwise(tail):
    b = Builder("pair", batch=2)
    x = b.input("x", (4, 6, 6))
    depthwise = x.conv(4, 3, padding=1, groups=4, name="dw")
    return randomize(b.build(*tail(b, x, depthwise)))


def test_no_fusion_when_the_depthwise_output_is_read_twice_or_is_an_output():
    for tail in (lambda b, x, d: [d.conv(8, 1, name="pw") + d.conv(8, 1)],
                 lambda b, x, d: [d.conv(8, 1, name="pw"), d]):
        graph = depthwise_then_pointwise(tail)
        result, _ = optimize(graph, 2)
        assert op_counts(result)["separable_conv2d"] == 0 and op_counts(result)["depthwise_conv2d"] == 1
        assert_same_outputs(graph, result)


def test_no_fusion_when_the_depthwise_has_a_residual():
    graph = depthwise_then_pointwise(lambda b, x, d: [(d + x).conv(8, 1, name="pw")])
    result, _ = optimize(graph, 2)
    assert op_counts(result)["separable_conv2d"] == 0 and result.node("dw").attrs["residual"]
    assert_same_outputs(graph, result)


def test_no_fusion_when_the_pointwise_reads_the_depthwise_as_its_residual():
    graph = depthwise_then_pointwise(lambda b, x, d: [x.conv(4, 1, residual=d, name="pw")])
    result, _ = optimize(graph, 2)
    assert op_counts(result)["separable_conv2d"] == 0
    assert_same_outputs(graph, result)
