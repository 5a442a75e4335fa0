"""The Python builder: its op names (the .cnn language's), naming unnamed nodes as .cnn does, scopes, operators,
deterministic He/Xavier initialization, weights from .npz."""

import math

import numpy as np
import pytest

from cnncomp.errors import ShapeError
from cnncomp.ops import get_op, method_names
from frontends import dsl
from frontends.builder import Builder, Value
from frontends.dsl.ops import OPS


def relu_net(seed=0, init="auto"):
    b = Builder("relu_net", seed=seed, init=init)
    x = b.input("image", (64, 16, 16))
    y = x.conv(64, 3, padding=1, name="conv").relu()
    return b.build(y.flatten().dense(512, name="fc"))


def tanh_net(seed=0):
    b = Builder("tanh_net", seed=seed)
    x = b.input("image", (64, 16, 16))
    return b.build(x.conv(64, 3, padding=1, name="conv").tanh())


def test_initialization_is_deterministic_per_seed():
    a, b, c = relu_net(0), relu_net(0), relu_net(1)
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    assert not np.array_equal(a.params["conv.weight"], c.params["conv.weight"])


def test_a_parameter_does_not_depend_on_what_else_is_in_the_graph():
    b = Builder("bigger")
    x = b.input("image", (64, 16, 16))
    x.conv(8, 1, name="extra")
    y = x.conv(64, 3, padding=1, name="conv").relu()
    graph = b.build(y)
    np.testing.assert_array_equal(graph.params["conv.weight"], relu_net().params["conv.weight"])


def test_relu_nets_get_he_initialization():
    weights = relu_net().params["conv.weight"]
    fan_in = 64 * 3 * 3
    assert weights.std() == pytest.approx(math.sqrt(2 / fan_in), rel=0.03)
    assert abs(weights.mean()) < 0.05 * weights.std()


def test_other_nets_get_xavier_initialization():
    weights = tanh_net().params["conv.weight"]
    fan_in = fan_out = 64 * 3 * 3
    assert weights.std() == pytest.approx(math.sqrt(2 / (fan_in + fan_out)), rel=0.03)


def test_initialization_can_be_chosen():
    weights = relu_net(init="xavier").params["conv.weight"]
    assert weights.std() == pytest.approx(math.sqrt(2 / (2 * 64 * 9)), rel=0.03)


def test_biases_and_batch_norm_start_neutral():
    b = Builder()
    y = b.input("image", (3, 8, 8)).conv(4, 3, name="conv").batch_norm(name="bn")
    graph = b.build(y)
    np.testing.assert_array_equal(graph.params["conv.bias"], np.zeros(4))
    np.testing.assert_array_equal(graph.params["bn.weight"], np.ones(4))
    np.testing.assert_array_equal(graph.params["bn.running_var"], np.ones(4))


def test_weights_load_from_npz(tmp_path):
    trained = relu_net(seed=5)
    path = tmp_path / "trained.npz"
    trained.save_params(path)
    b = Builder("relu_net", seed=0)
    y = b.input("image", (64, 16, 16)).conv(64, 3, padding=1, name="conv").relu()
    graph = b.build(y.flatten().dense(512, name="fc"), weights=path)
    np.testing.assert_array_equal(graph.params["fc.weight"], trained.params["fc.weight"])


def test_fixed_weights_at_the_call():
    edge = np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], np.float32).reshape(1, 1, 3, 3)
    b = Builder("edges")
    y = b.input("image", (1, 8, 8)).conv(1, 3, bias=False, weights={"weight": edge}, name="edge")
    np.testing.assert_array_equal(b.build(y).params["edge.weight"], edge)


def test_names_scopes_and_meta():
    b = Builder()
    x = b.input("image", (3, 8, 8))
    with b.scope("layer1"):
        y = x.conv(4, 3, padding=1)
        with b.scope("0"):
            z = y.relu()
            named = z.conv(4, 1, name="proj")
    w = named.relu()
    assert (y.name, z.name, named.name, w.name) == ("layer1.conv1", "layer1.0.relu1", "layer1.0.proj", "relu1")
    assert b.graph.node("layer1.0.proj").meta == {"block": "layer1.0"}
    assert b.graph.node("relu1").meta == {}


def test_operators_and_shape_access():
    b = Builder(batch=2)
    x = b.input("image", (3, 8, 6))
    assert (x.shape, x.channels, x.height, x.width) == ((2, 3, 8, 6), 3, 8, 6)
    gate = x.global_avg_pool().sigmoid()
    y = (x + x) * gate
    graph = b.build(y)
    assert [n.op for n in graph.nodes] == ["input", "global_avg_pool", "sigmoid", "add", "mul"]


def test_strict_builder_refuses_fractions():
    b = Builder(strict=True)
    x = b.input("image", (1, 7, 7))
    with pytest.raises(ShapeError, match="fractions are illegal"):
        x.conv(1, 3, stride=3)


def test_unknown_init_is_refused():
    with pytest.raises(ValueError, match="init must be one of"):
        Builder(init="uniform")


def test_the_builder_and_the_language_call_ops_by_the_same_names():
    names = method_names()
    assert {"conv", "upconv", "bn", "crop", "max_pool", "swish", "depthwise_conv2d"} <= set(names)
    assert set(OPS) == set(names)  # the .cnn language's functions
    for name, op in names.items():
        method = getattr(Value, name, None) or getattr(Builder, name)
        assert OPS[name] == (method, op)
    assert get_op("bn").name == "batch_norm" and get_op("upconv").name == "conv_transpose2d"


def test_the_builder_names_unnamed_nodes_as_the_language_does():
    b = Builder("block")
    x = b.input("image", (3, 8, 8))
    y = x.conv(4, 3).bn().relu6().relu6()
    b.build(b.add(y, y).upconv(2, 2).crop(y).batch_norm(name="z"))
    text = """model block()
input image: 3x8x8
y = image -> conv(4, 3) -> bn -> relu6 -> relu6
output z = y + y -> upconv(2, 2) -> crop(y) -> batch_norm
"""
    built_names = [node.name for node in b.graph.nodes]
    assert built_names == ["image", "conv1", "bn1", "relu6_1", "relu6_2", "add1", "upconv1", "crop1", "z"]
    assert [node.name for node in dsl.build_from_source(text).nodes] == built_names
