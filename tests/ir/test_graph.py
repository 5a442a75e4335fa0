"""The Graph: SSA values, operand order, validation, rewriting operations, JSON and .npz round trips."""

import io
import json

import numpy as np
import pytest

from backends import reference
from cnncomp.errors import GraphError, ModelLoadError
from cnncomp.ir import Graph
from frontends.builder import Builder
from tests.helpers import random


def small_net() -> Graph:
    b = Builder("small", seed=3)
    x = b.input("image", (3, 8, 8))
    a = x.conv(4, 3, padding=1, name="a").relu(name="a_relu")
    c = x.conv(2, 1, name="c")
    joined = b.concat(a, c, name="joined")
    y = joined.conv(6, 3, stride=2, padding=1, name="head").batch_norm(name="bn")
    pooled, indices = y.max_pool_with_indices(2, name="pool")
    up = pooled.max_unpool(indices, 2, name="unpool")
    return b.build(up.global_avg_pool(name="gap").flatten(name="flat").dense(5, name="fc"), y)


def test_nodes_come_in_a_stable_topological_order():
    graph = small_net()
    names = [n.name for n in graph.nodes]
    assert names[0] == "image"
    for node in graph.nodes:
        for operand in node.inputs:
            assert names.index(operand) < names.index(node.name)
    assert names == [n.name for n in small_net().nodes]


def test_operand_order_is_kept():
    b = Builder()
    x = b.input("x", (2, 3, 3))
    y = b.input("y", (5, 3, 3))
    graph = b.build(b.concat(x, y, name="xy"), b.concat(y, x, name="yx"))
    assert graph.node("xy").inputs == ("x", "y") and graph.node("yx").inputs == ("y", "x")
    xs, ys = random((1, 2, 3, 3), 1), random((1, 5, 3, 3), 2)
    out = reference.run(graph, {"x": xs, "y": ys})
    np.testing.assert_array_equal(out["xy"][:, :2], xs)
    np.testing.assert_array_equal(out["yx"][:, 5:], xs)


def test_a_value_read_twice_by_one_node():
    b = Builder()
    x = b.input("x", (2, 3, 3))
    graph = b.build(b.add(x, x, name="double"))
    graph.validate()
    data = random((1, 2, 3, 3), 1)
    np.testing.assert_array_equal(reference.run(graph, {"x": data})["double"], 2 * data)


def test_consumers_and_inputs():
    graph = small_net()
    assert [n.name for n in graph.consumers("image")] == ["a", "c"]
    assert [n.name for n in graph.inputs] == ["image"]
    assert graph.outputs == ["fc", "bn"]


def test_json_round_trip_preserves_everything():
    graph = small_net()
    text = graph.to_json()
    assert "pickle" not in text
    again = Graph.from_json(text, graph.params)
    assert again.to_json() == text
    again.validate()
    x = random((1, 3, 8, 8), 4)
    for name in graph.outputs:
        np.testing.assert_array_equal(reference.run(graph, {"image": x})[name],
                                      reference.run(again, {"image": x})[name])


def test_json_of_a_newer_format_is_refused():
    data = json.loads(small_net().to_json())
    data["format"] = 99
    with pytest.raises(GraphError, match="format 99 is newer"):
        Graph.from_json(json.dumps(data))


def test_json_with_a_wrong_recorded_shape_is_refused():
    data = json.loads(small_net().to_json())
    data["nodes"][1]["shape"] = [1, 4, 9, 9]
    with pytest.raises(GraphError, match="recorded type 1x4x9x9"):
        Graph.from_json(json.dumps(data))


def test_malformed_json_gives_one_line():
    with pytest.raises(GraphError, match="malformed graph JSON"):
        Graph.from_json('{"format": 1, "nodes": [{}]}')


def test_npz_round_trip_and_no_pickle(tmp_path):
    graph = small_net()
    path = tmp_path / "weights.npz"
    graph.save_params(path)
    fresh = Builder("small", seed=99)
    assert set(np.load(path).files) == set(graph.params)
    other = small_net()
    other.params = {k: np.zeros_like(v) for k, v in other.params.items()}
    other.load_params(path)
    for key, value in graph.params.items():
        np.testing.assert_array_equal(other.params[key], value)
    del fresh
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **{"a.weight": np.array([object()], dtype=object)})
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        other.load_params(pickled)


def test_weights_for_a_missing_node_are_refused():
    buffer = io.BytesIO()
    np.savez(buffer, **{"nowhere.weight": np.zeros(3, np.float32)})
    buffer.seek(0)
    with pytest.raises(GraphError, match="no node 'nowhere'"):
        small_net().load_params(buffer)


def test_validate_finds_a_missing_parameter():
    graph = small_net()
    del graph.params["head.weight"]
    with pytest.raises(GraphError, match="node 'head' \\(conv2d\\): parameter 'weight' is missing"):
        graph.validate()


def test_validate_finds_edges_out_of_step_with_operands():
    graph = small_net()
    graph._dag.remove_edge("a_relu", "joined")
    with pytest.raises(GraphError, match="disagree with operands"):
        graph.validate()


def test_validate_finds_a_cycle():
    graph = small_net()
    graph._dag.add_edge("fc", "image", positions=[0])
    with pytest.raises(GraphError, match="cycle"):
        graph.validate()


def test_replace_uses_and_remove_node():
    graph = small_net()
    # Drop the ReLU: `joined` reads the conv directly.
    graph.replace_uses("a_relu", "a")
    graph.remove_node("a_relu")
    graph.validate()
    assert graph.node("joined").inputs == ("a", "c")
    with pytest.raises(GraphError, match="still used"):
        graph.remove_node("a")
    assert "a.weight" in graph.params


def test_replace_node_refuses_a_cycle_and_a_type_change():
    graph = small_net()
    node = graph.node("a_relu")
    with pytest.raises(GraphError, match="changes the type"):
        graph.replace_node("a_relu", graph.make_node("a_relu", "max_pool2d", ["a"], dict(kernel=2)))
    with pytest.raises(GraphError, match="cycle"):
        graph.replace_node("a", graph.make_node("a", "conv2d", ["joined"], graph.node("a").attrs))
    assert graph.node("a_relu") == node


def test_with_batch_reinfers_every_shape():
    graph = small_net().with_batch(3)
    assert graph.node("fc").shape == (3, 5)
    assert graph.node("joined").shape == (3, 6, 8, 8)
    assert graph.node("unpool").shape == (3, 6, 4, 4)
    out = reference.run(graph, {"image": random((3, 3, 8, 8), 1)})
    assert out["fc"].shape == (3, 5)


def test_with_input_shapes_on_another_image_size():
    graph = small_net().with_input_shapes({"image": (1, 3, 16, 12)})
    assert graph.node("bn").shape == (1, 6, 8, 6)
    with pytest.raises(GraphError, match="no input 'pixels'"):
        small_net().with_input_shapes({"pixels": (1, 3, 8, 8)})


def test_copy_is_independent():
    graph = small_net()
    other = graph.copy()
    other.replace_uses("a_relu", "a")
    other.remove_node("a_relu")
    assert "a_relu" in graph and "a_relu" not in other
    graph.validate()
    other.validate()
