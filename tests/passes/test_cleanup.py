"""eliminate_identity, eliminate_dead and fold_constants: what they remove and compute, and what they leave."""

import numpy as np
import pytest

from cnncomp.passes.eliminate_dead import eliminate_dead
from cnncomp.passes.eliminate_identity import eliminate_identity
from cnncomp.passes.fold_constants import fold_constants
from cnncomp.passes.fuse_epilogue import fuse_epilogue
from frontends.builder import Builder
from tests.helpers import randomize
from tests.passes.models import assert_same_outputs, inception_net, op_counts


def test_identities_of_every_kind_are_removed():
    b = Builder("identities", batch=2)
    x = b.input("x", (3, 6, 6))
    y = x.conv(4, 3).dropout(0.3).identity()
    y = b.concat(y).flatten().flatten(name="flat_again").dense(5, name="fc")
    graph = randomize(b.build(y))
    cleaned = eliminate_identity(graph)
    assert op_counts(cleaned) == {"input": 1, "conv2d": 1, "flatten": 1, "dense": 1}
    assert cleaned.node("fc").inputs == ("flatten1",)
    assert_same_outputs(graph, cleaned)


def test_an_identity_that_is_an_output_keeps_its_name():
    b = Builder("named_output")
    x = b.input("x", (3, 6, 6))
    graph = randomize(b.build(x.conv(4, 3, name="conv").dropout(name="scores")))
    cleaned = eliminate_identity(graph)
    assert op_counts(cleaned) == {"input": 1, "conv2d": 1}
    assert cleaned.outputs == ["scores"] and cleaned.node("scores").op == "conv2d"
    assert set(cleaned.node_params("scores")) == {"weight", "bias"} and "conv.weight" not in cleaned.params
    assert_same_outputs(graph, cleaned)


@pytest.mark.parametrize("case", ["source read elsewhere", "source is an input", "source is an output"])
def test_an_output_identity_stays_when_its_source_cannot_take_its_name(case):
    b = Builder("kept")
    x = b.input("x", (3, 6, 6))
    if case == "source is an input":
        outputs = [x.identity(name="out")]
    else:
        y = x.conv(4, 3, name="conv")
        outputs = [y.identity(name="out"), y.relu() if case == "source read elsewhere" else y]
    graph = randomize(b.build(*outputs))
    cleaned = eliminate_identity(graph)
    assert cleaned.node("out").op == "identity"
    assert_same_outputs(graph, cleaned)


def test_flatten_of_a_feature_map_stays():
    b = Builder("flatten")
    x = b.input("x", (3, 2, 2))
    graph = b.build(x.flatten().dense(4))
    assert op_counts(eliminate_identity(graph))["flatten"] == 1


def test_a_channel_slice_of_every_channel_goes_a_narrower_one_stays():
    b = Builder("slices")
    x = b.input("x", (4, 3, 3))
    y = x.conv(6, 1, name="conv")
    graph = randomize(b.build(b.concat(y.channel_slice(0, 6, name="all"), y.channel_slice(1, 6, name="some"),
                                       name="out")))
    cleaned = eliminate_identity(graph)
    assert op_counts(cleaned)["channel_slice"] == 1 and cleaned.node("out").inputs == ("conv", "some")
    assert_same_outputs(graph, cleaned)


def test_dead_nodes_and_their_parameters_go_unread_inputs_stay():
    b = Builder("dead")
    x = b.input("x", (3, 8, 8))
    b.input("unused", (2,))
    pooled, _indices = x.max_pool_with_indices(2, name="pool")
    x.conv(4, 3, name="dead_conv").relu()
    graph = randomize(b.build(pooled.conv(4, 1, name="live")))
    cleaned = eliminate_dead(graph)
    assert [n.name for n in cleaned.nodes] == ["x", "unused", "pool", "live"]
    assert not any(key.startswith("dead_conv.") for key in cleaned.params)
    assert "dead_conv" in graph  # the argument is left alone


def constant(b, name, value):
    return b.op("constant", name=name, shape=value.shape, weights={"value": value})


def test_constant_subgraphs_fold_to_one_constant_that_then_becomes_a_bias():
    rng = np.random.default_rng(0)
    b = Builder("constants")
    x = b.input("x", (3, 6, 6))
    a = constant(b, "a", rng.standard_normal((1, 4, 1, 1)).astype(np.float32))
    c = constant(b, "c", rng.standard_normal((1, 4, 1, 1)).astype(np.float32))
    offset = (a * c + a).relu(name="offset")  # parameters only: known at compile time
    graph = randomize(b.build(b.add(x.conv(4, 3, bias=False, name="conv"), offset).max_pool(2)))
    folded = fold_constants(graph)
    assert op_counts(folded) == {"input": 1, "conv2d": 1, "constant": 1, "add": 1, "max_pool2d": 1}
    expected = np.maximum(graph.params["a.value"] * graph.params["c.value"] + graph.params["a.value"], 0)
    np.testing.assert_allclose(folded.params["offset.value"], expected, rtol=1e-6)
    assert_same_outputs(graph, folded)
    fused = fuse_epilogue(folded)  # the folded constant is a per-channel addend: it becomes the conv's bias
    assert op_counts(fused) == {"input": 1, "conv2d": 1, "constant": 1, "max_pool2d": 1}
    assert fused.node("conv").attrs["bias"]
    assert_same_outputs(graph, eliminate_dead(fused))
    assert op_counts(eliminate_dead(fused))["constant"] == 0


def test_nodes_reading_an_input_are_not_folded():
    b = Builder("mixed")
    x = b.input("x", (4, 3, 3))
    value = np.ones((1, 4, 3, 3), np.float32)
    graph = b.build(x + constant(b, "c", value))
    assert op_counts(fold_constants(graph)) == op_counts(graph)


def test_max_pool_indices_of_a_constant_are_not_folded():
    # A constant holds float32; the int64 indices stay computed, while the pooled values fold (found by the
    # fuzzer: tests/regressions/fold-constants-of-int64-max-pool-indices.cnn).
    from cnncomp.ir import Graph

    graph = Graph("indices")
    graph.add_node("c", "constant", attrs={"shape": (1, 3, 2, 2)}, params={"value": np.arange(12, dtype=np.float32)
                                                                            .reshape(1, 3, 2, 2)})
    graph.add_node("values", "max_pool2d", ["c"], {"kernel": 2})
    graph.add_node("indices", "max_pool2d_indices", ["c"], {"kernel": 2})
    graph.set_outputs(["values", "indices"])
    folded = fold_constants(graph)
    assert op_counts(folded) == {"constant": 2, "max_pool2d_indices": 1}
    assert_same_outputs(graph, folded)


def test_inception_net_is_unchanged_by_constant_folding():
    graph = inception_net()
    assert fold_constants(graph).to_json() == graph.to_json()
