"""Each ONNX converter against ONNX Runtime: small models built with onnx.helper, one op (or a pattern) each,
across the attributes and opsets where the op's definition changed; imported and run on the reference backend,
the outputs must be ONNX Runtime's on the same model. What cnncomp cannot compute exactly must be refused, with
the reason, and never approximated: the Resize grid checks both halves over every mode ONNX has."""

import itertools

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from backends import reference
from cnncomp.errors import ModelLoadError
from frontends.onnx import import_model, supported_ops

TOLERANCE = {"atol": 2e-5, "rtol": 2e-5}


def make_model(nodes, inputs, outputs=("y",), initializers=None, opset=17, ir_version=None):
    """A model over float32 inputs {name: shape}; initializers {name: array}."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in inputs.items()],
        [helper.make_empty_tensor_value_info(name) for name in outputs],
        [numpy_helper.from_array(np.asarray(value), name) for name, value in (initializers or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    return model


def inputs_for(model, scale=2.0):
    values = {}
    for i, info in enumerate(model.graph.input):
        shape = [d.dim_value for d in info.type.tensor_type.shape.dim]
        values[info.name] = (np.random.default_rng(i).standard_normal(shape) * scale).astype(np.float32)
    return values


def assert_like_onnxruntime(model, tolerance=TOLERANCE, scale=2.0):
    """Import the model, run it on the reference backend; return the graph."""
    graph = import_model(model)
    inputs = inputs_for(model, scale)
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, inputs)
    actual = reference.run(graph, inputs)
    names = [o.name for o in model.graph.output]
    assert graph.outputs == names
    for name, value in zip(names, expected, strict=True):
        assert actual[name].shape == value.shape, name
        np.testing.assert_allclose(actual[name], value, **tolerance, err_msg=name)
    return graph


def refused(model, *fragments):
    with pytest.raises(ModelLoadError) as info:
        import_model(model)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def weights(*shape, seed=1):
    return (np.random.default_rng(seed).standard_normal(shape) * 0.5).astype(np.float32)


def op_graph(op_type, x_shape, attrs=None, initializers=None, opset=17, extra_inputs=(), outputs=("y",)):
    """x (and the named initializers, in order) -> op_type -> y."""
    initializers = initializers or {}
    node = helper.make_node(op_type, ["x", *initializers, *extra_inputs], list(outputs), name="op", **(attrs or {}))
    return make_model([node], {"x": x_shape}, outputs, initializers, opset)


# ----- convolutions ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs", [
    {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"auto_pad": "VALID", "kernel_shape": [3, 3]},
    {"group": 2, "pads": [1, 1, 1, 1]},
])
@pytest.mark.parametrize("bias", [True, False])
def test_conv(attrs, bias):
    initializers = {"w": weights(6, 4 // attrs.get("group", 1), 3, 3)}
    if bias:
        initializers["b"] = weights(6, seed=2)
    assert_like_onnxruntime(op_graph("Conv", [1, 4, 9, 10], attrs, initializers))


def test_depthwise_conv_is_a_grouped_conv():
    graph = assert_like_onnxruntime(op_graph("Conv", [1, 4, 7, 7], {"group": 4, "pads": [1, 1, 1, 1]},
                                             {"w": weights(8, 1, 3, 3)}))
    assert graph.node("y").attrs["groups"] == 4


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2], "pads": [1, 0, 0, 1], "output_padding": [1, 0]},
    {"strides": [2, 2], "dilations": [2, 1], "group": 2},
    {"strides": [2, 2], "output_shape": [10, 9]},
    {"strides": [2, 2], "output_shape": [10, 9], "auto_pad": "SAME_UPPER"},
    {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
    {"strides": [2, 2], "auto_pad": "SAME_LOWER"},
])
def test_conv_transpose(attrs):
    groups = attrs.get("group", 1)
    initializers = {"w": weights(4, 6 // groups, 3, 3), "b": weights(6, seed=2)}
    assert_like_onnxruntime(op_graph("ConvTranspose", [1, 4, 5, 5], attrs, initializers))


def test_conv_over_one_spatial_axis_is_refused():
    refused(op_graph("Conv", [1, 4, 9], {}, {"w": weights(6, 4, 3)}), "Conv 'op': a Conv over 1 spatial axes")


@pytest.mark.parametrize("attrs,c_shape", [
    ({"transB": 1}, (5,)),
    ({}, (1, 5)),
    ({"alpha": 0.5, "beta": 2.0, "transB": 1}, ()),
    ({"transB": 1}, None),
])
def test_gemm(attrs, c_shape):
    b = weights(5, 12) if attrs.get("transB") else weights(12, 5)
    initializers = {"b": b, **({"c": weights(*c_shape, seed=3)} if c_shape is not None else {})}
    assert_like_onnxruntime(op_graph("Gemm", [3, 12], attrs, initializers))


def test_gemm_refusals():
    refused(op_graph("Gemm", [12, 3], {"transA": 1}, {"b": weights(12, 5)}), "a Gemm with transA=1")
    refused(op_graph("Gemm", [3, 12], {}, {"b": weights(12, 5), "c": weights(3, 5)}),
            "a Gemm whose C of shape [3, 5] is not one value per output")
    refused(make_model([helper.make_node("Gemm", ["x", "z"], ["y"], name="op")], {"x": [3, 4], "z": [4, 5]}),
            "input 1 ('z') is computed; cnncomp needs a constant there")


def test_matmul_and_add_become_one_dense_layer():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"), helper.make_node("Add", ["m", "b"], ["y"])]
    model = make_model(nodes, {"x": [2, 6]}, initializers={"w": weights(6, 4), "b": weights(4, seed=2)})
    graph = assert_like_onnxruntime(model)
    assert [(n.name, n.op, n.attrs.get("bias")) for n in graph.nodes] == [("x", "input", None), ("y", "dense", True)]


# ----- pooling -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("attrs", [
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
    {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 0, 1]},
    {"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1},
    {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
    {"kernel_shape": [2, 2], "auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"kernel_shape": [3, 3], "auto_pad": "SAME_LOWER", "strides": [2, 2]},
    {"kernel_shape": [3, 3]},
])
def test_pools(op_type, attrs):
    same = attrs.get("auto_pad", "NOTSET") != "NOTSET"
    for extra in ({}, {"count_include_pad": 1}) if op_type == "AveragePool" else ({}, {"dilations": [2, 1]}):
        model = op_graph(op_type, [1, 3, 8, 9], {**attrs, **extra})
        if same and "dilations" in extra:
            refused(model, "(ONNX Runtime and the ONNX definition disagree on its padding)")
        else:
            assert_like_onnxruntime(model)


def test_pool_at_opset_7_reads_its_defaults():
    assert_like_onnxruntime(op_graph("MaxPool", [1, 3, 8, 9], {"kernel_shape": [2, 2], "strides": [2, 2]}, opset=7))
    assert_like_onnxruntime(op_graph("AveragePool", [1, 3, 8, 9], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
                                     opset=7))


def test_a_ceil_mode_window_starting_in_the_padding_is_refused():
    # 5 + 2 padding, kernel 2, stride 2, ceil: ONNX's 4th window starts in the bottom padding; PyTorch drops it.
    model = op_graph("MaxPool", [1, 3, 5, 5], {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [1, 1, 1, 1],
                                               "ceil_mode": 1})
    refused(model, "graph output 'y' is a ceil-mode pooling whose last window ONNX starts in the padding")
    nodes = [helper.make_node("MaxPool", ["x"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2],
                              pads=[1, 1, 1, 1], ceil_mode=1), helper.make_node("Relu", ["p"], ["y"], name="relu")]
    refused(make_model(nodes, {"x": [1, 3, 5, 5]}), "Relu 'relu': input 0 ('p') is a ceil-mode pooling")


def test_global_pools_and_reductions():
    for op_type in ("GlobalAveragePool", "GlobalMaxPool"):
        assert_like_onnxruntime(op_graph(op_type, [2, 3, 5, 6]))
    for op_type, opset in itertools.product(("ReduceMean", "ReduceMax"), (13, 18)):
        for keepdims in (0, 1):
            axes = {"axes": [2, 3]} if opset < 18 else {}
            initializers = {"axes": np.array([-2, -1])} if opset >= 18 else None
            assert_like_onnxruntime(op_graph(op_type, [2, 3, 5, 6], {"keepdims": keepdims, **axes}, initializers,
                                             opset))
    refused(op_graph("ReduceMean", [2, 3, 5, 6], {"axes": [1]}, opset=13), "a ReduceMean over axes [1]")


def max_pool_unpool(pool_attrs, unpool_attrs, x_shape, output_shape=None, opset=11):
    nodes = [helper.make_node("MaxPool", ["x"], ["p", "i"], name="pool", **pool_attrs),
             helper.make_node("Relu", ["p"], ["r"], name="relu"),
             helper.make_node("MaxUnpool", ["r", "i", *(["shape"] if output_shape else [])], ["y"], name="unpool",
                              **unpool_attrs)]
    initializers = {"shape": np.array(output_shape, np.int64)} if output_shape else None
    return make_model(nodes, {"x": x_shape}, initializers=initializers, opset=opset)


@pytest.mark.parametrize("batch", [1, 2])
def test_max_pool_indices_and_max_unpool(batch):
    window = {"kernel_shape": [2, 2], "strides": [2, 2]}
    assert_like_onnxruntime(max_pool_unpool(window, window, [batch, 3, 6, 8]))
    assert_like_onnxruntime(max_pool_unpool(window, window, [batch, 3, 7, 9], [batch, 3, 7, 9]))
    assert_like_onnxruntime(max_pool_unpool(window, window, [batch, 3, 6, 8], opset=9))
    # Flat indices over 7x9 planes read into 6x8 planes land elsewhere: refused.
    refused(max_pool_unpool(window, window, [batch, 3, 7, 9]), "a MaxUnpool to 6x8 planes of indices counted over "
                                                              "planes of 63 pixels")


def test_max_pool_indices_as_an_output_and_column_major_indices():
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], name="pool", kernel_shape=[2, 2], strides=[2, 2])
    refused(make_model([node], {"x": [1, 2, 4, 4]}, outputs=("y", "i")), "graph output 'i' is MaxPool's flat indices")
    node = helper.make_node("MaxPool", ["x"], ["p", "i"], name="pool", kernel_shape=[2, 2], storage_order=1)
    unpool = helper.make_node("MaxUnpool", ["p", "i"], ["y"], name="unpool", kernel_shape=[2, 2])
    refused(make_model([node, unpool], {"x": [1, 2, 4, 4]}), "MaxPool indices in column-major order")


def test_pytorchs_per_plane_indices():
    """torch's return_indices export: flat indices minus a slice of a 1x1 pool's indices, as a graph output."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "flat"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("MaxPool", ["x"], ["unused", "all"], name="ones", kernel_shape=[1, 1], strides=[1, 1]),
             helper.make_node("Slice", ["all", "starts", "ends", "axes"], ["offsets"]),
             helper.make_node("Sub", ["flat", "offsets"], ["indices"])]
    initializers = {"starts": np.array([0, 0]), "ends": np.array([1, 1]), "axes": np.array([2, 3])}
    model = make_model(nodes, {"x": [2, 3, 6, 4]}, ("y", "indices"), initializers)
    graph = import_model(model)
    x = inputs_for(model)["x"]
    import torch

    values, indices = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, 2, return_indices=True)
    result = reference.run(graph, {"x": x})
    np.testing.assert_array_equal(result["indices"], indices.numpy())
    np.testing.assert_array_equal(result["y"], values.numpy())


# ----- normalization and activations -------------------------------------------------------------------------------
@pytest.mark.parametrize("opset", [7, 9, 15])
@pytest.mark.parametrize("shape", [[2, 4, 3, 3], [2, 4]])
def test_batch_normalization(opset, shape):
    initializers = {"s": weights(4) + 1, "b": weights(4, seed=2), "m": weights(4, seed=3),
                    "v": np.abs(weights(4, seed=4)) + 0.5}
    assert_like_onnxruntime(op_graph("BatchNormalization", shape, {"epsilon": 1e-3}, initializers, opset))


def test_batch_normalization_in_training_mode_is_refused():
    initializers = {"s": weights(4), "b": weights(4), "m": weights(4), "v": np.ones(4, np.float32)}
    refused(op_graph("BatchNormalization", [2, 4, 3, 3], {"training_mode": 1}, initializers, 15),
            "a BatchNormalization in training mode")


def test_lrn():
    assert_like_onnxruntime(op_graph("LRN", [1, 7, 3, 3], {"size": 5, "alpha": 1e-2, "beta": 0.6, "bias": 2.0}))
    refused(op_graph("LRN", [1, 7, 3, 3], {"size": 4}), "an LRN of even size 4: ONNX sums channels [c - 1, c + 2]")


@pytest.mark.parametrize("opset,shape,axis", [(11, [2, 5], 1), (11, [2, 5, 1, 1], 1), (11, [2, 3, 4], 2),
                                              (13, [2, 5, 3, 3], 1), (13, [2, 5], None), (13, [2, 3, 4], -2)])
def test_softmax(opset, shape, axis):
    attrs = {} if axis is None else {"axis": axis}
    assert_like_onnxruntime(op_graph("Softmax", shape, attrs, opset=opset))


def test_softmax_before_opset_13_over_several_axes_is_refused():
    refused(op_graph("Softmax", [2, 5, 3, 3], {"axis": 1}, opset=11), "a Softmax (opset 11 < 13) over axes 1..")


@pytest.mark.parametrize("op_type,attrs,opset", [
    ("Relu", {}, 17), ("Sigmoid", {}, 17), ("Tanh", {}, 17), ("LeakyRelu", {"alpha": 0.3}, 17),
    ("LeakyRelu", {}, 7), ("HardSwish", {}, 14), ("HardSigmoid", {}, 17),
    ("HardSigmoid", {"alpha": 0.5, "beta": 0.25}, 17), ("Swish", {}, 24), ("Clip", {"min": 0.0, "max": 6.0}, 7),
    ("Clip", {"min": 0.0}, 7), ("Identity", {}, 17), ("Dropout", {"ratio": 0.2}, 7),
])
def test_activations(op_type, attrs, opset):
    assert_like_onnxruntime(op_graph(op_type, [2, 3, 4, 5], attrs, opset=opset), scale=5.0)


@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("bounds", [(0.0, 6.0), (0.0, None), (None, None)])
def test_clip_with_inputs(opset, bounds):
    initializers = {}
    names = []
    for name, value in zip(("low", "high"), bounds, strict=True):
        if value is not None:
            initializers[name] = np.array(value, np.float32)
        names.append(name if value is not None else "")
    node = helper.make_node("Clip", ["x", *names], ["y"], name="op")
    if bounds == (None, None):
        refused(make_model([node], {"x": [2, 3]}, initializers=initializers, opset=opset), "a Clip to [-inf, inf]")
        return
    assert_like_onnxruntime(make_model([node], {"x": [2, 3]}, initializers=initializers, opset=opset), scale=5.0)


def test_activation_refusals():
    refused(op_graph("Clip", [2, 3], {"min": -1.0, "max": 1.0}, opset=7), "a Clip to [-1, 1] (cnncomp clips to")
    refused(op_graph("PRelu", [2, 3, 2, 2], initializers={"slope": np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1,
                                                                                                                1)}),
            "a PRelu with a slope per channel")
    refused(op_graph("Swish", [2, 3], {"alpha": 2.0}, opset=24), "a Swish with alpha=2")


def test_prelu_with_one_slope():
    assert_like_onnxruntime(op_graph("PRelu", [2, 3, 2, 2], initializers={"slope": np.array([0.25], np.float32)}))


def test_x_times_its_sigmoid_or_hard_sigmoid_becomes_silu_or_hardswish():
    for gate, our_op in (("Sigmoid", "silu"), ("HardSigmoid", "hardswish")):
        attrs = {"alpha": 1 / 6, "beta": 0.5} if gate == "HardSigmoid" else {}
        nodes = [helper.make_node(gate, ["x"], ["g"], name="gate", **attrs),
                 helper.make_node("Mul", ["g", "x"], ["y"], name="act")]
        graph = assert_like_onnxruntime(make_model(nodes, {"x": [2, 3, 4, 4]}), scale=5.0)
        assert [(n.name, n.op) for n in graph.nodes] == [("x", "input"), ("y", our_op)]


@pytest.mark.parametrize("opset,ratio_as", [(12, "input"), (13, "none"), (13, "input")])
def test_dropout_with_inputs(opset, ratio_as):
    initializers = {"ratio": np.array(0.3, np.float32)} if ratio_as == "input" else None
    graph = assert_like_onnxruntime(op_graph("Dropout", [2, 3], initializers=initializers, opset=opset))
    assert graph.node("y").op == "dropout"
    training = {"ratio": np.array(0.3, np.float32), "training": np.array(True)}
    refused(op_graph("Dropout", [2, 3], initializers=training, opset=13), "a Dropout in training mode")
    refused(op_graph("Dropout", [2, 3], outputs=("y", "mask"), opset=13), "a Dropout whose mask is read")


# ----- elementwise -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op_type", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("constant_shape", [(), (1,), (4, 1, 1), (1, 4, 1, 1)])
@pytest.mark.parametrize("constant_first", [False, True])
def test_arithmetic_with_a_per_channel_constant(op_type, constant_shape, constant_first):
    constant = weights(*constant_shape, seed=5) + (2.0 if op_type == "Div" else 0.0)
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    model = make_model([helper.make_node(op_type, inputs, ["y"], name="op")], {"x": [2, 4, 3, 3]},
                       initializers={"c": constant})
    if op_type == "Div" and constant_first:
        refused(model, "a Div of a constant by a computed tensor")
        return
    graph = assert_like_onnxruntime(model)
    assert graph.node("y").op == "batch_norm"  # x * scale + shift, exactly


def test_arithmetic_with_a_per_feature_constant():
    model = make_model([helper.make_node("Mul", ["x", "c"], ["y"], name="op")], {"x": [3, 5]},
                       initializers={"c": weights(5)})
    assert_like_onnxruntime(model)


def test_arithmetic_between_tensors():
    for op_type, shapes in (("Add", ([2, 4, 3, 3], [2, 4, 3, 3])), ("Mul", ([2, 4, 3, 3], [2, 4, 1, 1])),
                            ("Sub", ([2, 4, 3, 3], [2, 4, 3, 3])), ("Sub", ([2, 4, 1, 1], [2, 4, 3, 3]))):
        nodes = [helper.make_node(op_type, ["a", "b"], ["y"], name="op")]
        assert_like_onnxruntime(make_model(nodes, {"a": shapes[0], "b": shapes[1]}))
    nodes = [helper.make_node("Sum", ["a", "b", "c"], ["y"], name="op")]
    assert_like_onnxruntime(make_model(nodes, {"a": [2, 3], "b": [2, 3], "c": [2, 3]}))


def test_arithmetic_refusals():
    nodes = [helper.make_node("Div", ["a", "b"], ["y"], name="op")]
    refused(make_model(nodes, {"a": [2, 3], "b": [2, 3]}), "a Div of two computed tensors")
    model = make_model([helper.make_node("Add", ["x", "c"], ["y"], name="op")], {"x": [2, 4, 3, 3]},
                       initializers={"c": weights(1, 4, 3, 3)})
    refused(model, "an Add of 2x4x3x3 and a constant of shape [1, 4, 3, 3]"[3:])
    nodes = [helper.make_node("Mul", ["a", "b"], ["y"], name="op")]
    refused(make_model(nodes, {"a": [2, 4, 3, 3], "b": [2, 1, 3, 3]}), "operand shapes 2x4x3x3 and 2x1x3x3 differ")


def test_an_add_after_a_conv_becomes_its_bias():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Add", ["c", "b"], ["y"], name="bias")]
    graph = assert_like_onnxruntime(make_model(nodes, {"x": [1, 3, 5, 5]},
                                               initializers={"w": weights(4, 3, 3, 3), "b": weights(1, 4, 1, 1)}))
    assert [(n.name, n.op) for n in graph.nodes] == [("x", "input"), ("y", "conv2d")]
    # Read twice, the conv's value stays and the add is an affine of it.
    nodes.append(helper.make_node("Mul", ["c", "y"], ["z"], name="twice"))
    model = make_model(nodes, {"x": [1, 3, 5, 5]}, outputs=("z",),
                       initializers={"w": weights(4, 3, 3, 3), "b": weights(1, 4, 1, 1)})
    graph = assert_like_onnxruntime(model)
    assert [n.op for n in graph.nodes] == ["input", "conv2d", "batch_norm", "mul"]


# ----- tensors -----------------------------------------------------------------------------------------------------
def test_concat_with_a_negative_axis():
    nodes = [helper.make_node("Concat", ["a", "b"], ["y"], name="op", axis=-3)]
    assert_like_onnxruntime(make_model(nodes, {"a": [2, 3, 4, 4], "b": [2, 5, 4, 4]}))


@pytest.mark.parametrize("target", [[0, -1], [2, -1], [2, 48], [-1, 48]])
def test_reshape_that_flattens(target):
    model = op_graph("Reshape", [2, 3, 4, 4], initializers={"shape": np.array(target, np.int64)})
    assert import_model(model).node("y").op == "flatten"
    assert_like_onnxruntime(model)


def test_other_reshapes_and_flattens_are_refused():
    refused(op_graph("Reshape", [2, 3, 4, 4], initializers={"shape": np.array([2, 3, 16], np.int64)}),
            "a reshape of 2x3x4x4 to 2x3x16 is not a flatten")
    refused(op_graph("Flatten", [2, 3, 4, 4], {"axis": 2}), "a reshape of 2x3x4x4 to 6x16 is not a flatten")


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_of_a_pooled_tensor_is_a_flatten(opset):
    axes = np.array([2, 3], np.int64)
    model = op_graph("Squeeze", [2, 3, 1, 1], {"axes": axes.tolist()} if opset < 13 else {},
                     {"axes": axes} if opset >= 13 else None, opset)
    assert_like_onnxruntime(model)


def test_the_flatten_pytorch_exports_for_view():
    """x.view(x.size(0), -1): Shape -> Gather -> Unsqueeze -> Concat -> Reshape, folded to a flatten."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.int64))),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Constant", [], ["minus_one"], value_ints=[-1]),
             helper.make_node("Concat", ["n1", "minus_one"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"], name="view")]
    model = make_model(nodes, {"x": [2, 3, 4, 4]}, initializers={"axes": np.array([0], np.int64)})
    graph = assert_like_onnxruntime(model)
    assert [n.op for n in graph.nodes] == ["input", "flatten"]


@pytest.mark.parametrize("starts,ends,axes,steps,ops", [
    ([0, 0], [100, 100], [2, 3], [2, 3], ["strided_slice"]),     # every S-th row and column
    ([0], [6], [2], [1], ["identity"]),                          # everything
    ([1], [3], [1], [1], ["channel_slice"]),                     # DPN's split of the channels
    ([-3], [2**63 - 1], [-3], [1], ["channel_slice"]),           # negative start, end clamped to the channels
    ([-100], [-1], [1], [1], ["channel_slice"]),                 # start clamped to 0, negative end
    ([1, 0, 0], [4, 100, 100], [1, 2, 3], [1, 2, 3], ["channel_slice", "strided_slice"]),
])
def test_slices(starts, ends, axes, steps, ops):
    initializers = {"starts": np.array(starts), "ends": np.array(ends), "axes": np.array(axes),
                    "steps": np.array(steps)}
    graph = assert_like_onnxruntime(op_graph("Slice", [2, 5, 6, 7], initializers=initializers))
    assert [n.op for n in graph.nodes][1:] == ops


@pytest.mark.parametrize("opset", [9, 13])
def test_a_slice_of_features_is_a_channel_slice(opset):
    bounds = {"starts": [2], "ends": [-1], "axes": [1]}
    if opset < 10:
        model = op_graph("Slice", [3, 10], bounds, opset=opset)
    else:
        model = op_graph("Slice", [3, 10], initializers={k: np.array(v) for k, v in bounds.items()}, opset=opset)
    graph = assert_like_onnxruntime(model)
    assert graph.node("y").attrs == {"start": 2, "stop": 9}


def test_a_center_slice_with_a_tensor_of_its_size_is_a_crop():
    nodes = [helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["h"], name="rows"),
             helper.make_node("Slice", ["h", "starts2", "ends2", "axes2"], ["c"], name="cols"),
             helper.make_node("Concat", ["c", "r"], ["y"], name="cat", axis=1)]
    initializers = {"starts": np.array([1]), "ends": np.array([5]), "axes": np.array([2]),
                    "starts2": np.array([1]), "ends2": np.array([-1]), "axes2": np.array([-1])}
    graph = assert_like_onnxruntime(make_model(nodes, {"x": [2, 3, 7, 6], "r": [2, 2, 4, 4]},
                                               initializers=initializers))
    assert [n.op for n in graph.nodes] == ["input", "input", "crop", "concat"]


def test_slice_refusals():
    initializers = {"starts": np.array([1]), "ends": np.array([3]), "axes": np.array([0])}
    refused(op_graph("Slice", [2, 4, 6, 6], initializers=initializers), "a Slice of 2x4x6x6 along the batch axis")
    initializers = {"starts": np.array([0]), "ends": np.array([4]), "axes": np.array([1]), "steps": np.array([2])}
    refused(op_graph("Slice", [2, 4, 6, 6], initializers=initializers), "a Slice of 2x4x6x6 to channels 0:4:2 "
                                                                        "(cnncomp slices a non-empty range")
    initializers = {"starts": np.array([3]), "ends": np.array([1]), "axes": np.array([1])}
    refused(op_graph("Slice", [2, 4, 6, 6], initializers=initializers), "to channels 3:1:1")
    initializers = {"starts": np.array([0, 0]), "ends": np.array([4, 4]), "axes": np.array([2, 3])}
    refused(op_graph("Slice", [2, 4, 6, 6], initializers=initializers), "a Slice of 2x4x6x6 to rows 0:4:1")
    initializers = {"starts": np.array([1, 1]), "ends": np.array([5, 5]), "axes": np.array([2, 3])}
    refused(op_graph("Slice", [2, 4, 6, 6], initializers=initializers), "graph output 'y' is a center crop to 4x4, "
                                                                        "but no tensor of that size")


@pytest.mark.parametrize("opset,attrs,sizes,outputs", [
    (11, {"axis": 1, "split": [2, 5, 3]}, None, 3),   # lengths as an attribute
    (11, {"axis": -3}, None, 2),                      # equal parts; a negative axis
    (13, {"axis": 1}, [1, 6, 3], 3),                  # lengths as an input
    (13, {"axis": 1}, None, 5),
    (18, {"axis": 1, "num_outputs": 4}, None, 4),     # 3, 3, 3 and a smaller last part, 1
    (18, {"axis": 1}, [4, 6], 2),
])
def test_a_split_of_a_computed_tensor_along_channels_is_channel_slices(opset, attrs, sizes, outputs):
    names = [f"y{i}" for i in range(outputs)]
    initializers = {} if sizes is None else {"sizes": np.array(sizes)}
    graph = assert_like_onnxruntime(op_graph("Split", [2, 10, 4, 3], attrs, initializers, opset, outputs=names))
    assert [n.op for n in graph.nodes][1:] == ["channel_slice"] * outputs


def test_split_refusals():
    refused(op_graph("Split", [2, 8, 4, 4], {"axis": 2}, outputs=("a", "b")),
            "a Split of 2x8x4x4 along axis 2 (cnncomp splits computed tensors along channels only)")
    refused(op_graph("Split", [2, 8, 4, 4], {}, outputs=("a", "b")), "a Split of 2x8x4x4 along the batch axis")
    refused(op_graph("Split", [2, 8, 4, 4], {"axis": 1}, {"sizes": np.array([3, 3])}, outputs=("a", "b")),
            "a Split of length 8 into [3, 3] for 2 outputs")
    refused(op_graph("Split", [2, 8, 4, 4], {"axis": 1}, outputs=("a", "b", "c")),
            "a Split of length 8 into 3 equal parts")
    refused(op_graph("Split", [2, 8, 4, 4], {"axis": 1}, {"sizes": np.array([8, 0])}, outputs=("a", "b")),
            "a Split of 2x8x4x4 into channel counts [8, 0], one of them empty")


def conv_node(x, y, channels_in, channels_out, name, initializers, kernel=3):
    """A Conv node (with its weight added to `initializers`), padded to keep the map's size."""
    initializers[f"{name}.w"] = weights(channels_out, channels_in, kernel, kernel, seed=len(initializers) + 1)
    pad = kernel // 2
    return helper.make_node("Conv", [x, f"{name}.w"], [y], name=name, pads=[pad] * 4)


def dual_path_model(opset):
    """DPN's block: the input's first 6 channels are the residual path (added to the convs' first 6), the other 4
    the dense path (concatenated with the convs' last 3)."""
    initializers = {"r0": np.array([0]), "r1": np.array([6]), "d0": np.array([6]), "d1": np.array([2**62]),
                    "axis": np.array([1])}
    nodes = [conv_node("x", "a", 10, 8, "conv1", initializers, kernel=1), helper.make_node("Relu", ["a"], ["b"]),
             conv_node("b", "c", 8, 9, "conv2", initializers)]
    for value in ("x", "c"):
        nodes += [helper.make_node("Slice", [value, "r0", "r1", "axis"], [f"{value}_residual"]),
                  helper.make_node("Slice", [value, "d0", "d1", "axis"], [f"{value}_dense"])]
    nodes += [helper.make_node("Add", ["x_residual", "c_residual"], ["residual"]),
              helper.make_node("Concat", ["residual", "x_dense", "c_dense"], ["joined"], axis=1),
              helper.make_node("Relu", ["joined"], ["y"])]
    return make_model(nodes, {"x": [2, 10, 6, 5]}, initializers=initializers, opset=opset)


def res2net_model(opset):
    """Res2Net's block: a 1x1 conv's 12 channels split into 4 scales of 3; each scale but the first is added to the
    previous scale's output before its 3x3 conv; the last scale passes through; concatenated, a 1x1 conv."""
    initializers = {}
    nodes = [conv_node("x", "a", 5, 12, "conv1", initializers, kernel=1)]
    if opset < 13:
        nodes.append(helper.make_node("Split", ["a"], ["s0", "s1", "s2", "s3"], axis=1, split=[3, 3, 3, 3]))
    elif opset < 18:
        initializers["sizes"] = np.array([3, 3, 3, 3])
        nodes.append(helper.make_node("Split", ["a", "sizes"], ["s0", "s1", "s2", "s3"], axis=1))
    else:
        nodes.append(helper.make_node("Split", ["a"], ["s0", "s1", "s2", "s3"], axis=1, num_outputs=4))
    previous = None
    for scale in range(3):
        source = f"s{scale}"
        if previous is not None:
            nodes.append(helper.make_node("Add", [source, previous], [f"sum{scale}"]))
            source = f"sum{scale}"
        nodes += [conv_node(source, f"c{scale}", 3, 3, f"conv_scale{scale}", initializers),
                  helper.make_node("Relu", [f"c{scale}"], [f"o{scale}"])]
        previous = f"o{scale}"
    nodes += [helper.make_node("Concat", ["o0", "o1", "o2", "s3"], ["joined"], axis=1),
              conv_node("joined", "y", 12, 5, "conv3", initializers, kernel=1)]
    return make_model(nodes, {"x": [2, 5, 6, 7]}, initializers=initializers, opset=opset)


@pytest.mark.parametrize("opset", [11, 13, 18])
@pytest.mark.parametrize("block", [dual_path_model, res2net_model])
def test_dual_path_and_res2net_blocks_import(block, opset):
    graph = assert_like_onnxruntime(block(opset))
    assert sum(n.op == "channel_slice" for n in graph.nodes) == 4


@pytest.mark.parametrize("opset,mode", [(7, "constant"), (11, "reflect"), (13, "edge"), (18, "constant"),
                                        (19, "reflect")])
def test_pad(opset, mode):
    pads = [0, 0, 1, 2, 0, 0, 2, 0]
    if opset < 11:
        model = op_graph("Pad", [1, 2, 4, 5], {"pads": pads, "mode": mode}, opset=opset)
    elif opset == 18:
        model = op_graph("Pad", [1, 2, 4, 5], {"mode": mode}, {"pads": np.array([1, 2, 2, 0]),
                                                               "value": np.array(0.0, np.float32),
                                                               "axes": np.array([2, 3])}, opset)
    else:
        model = op_graph("Pad", [1, 2, 4, 5], {"mode": mode}, {"pads": np.array(pads)}, opset)
    assert_like_onnxruntime(model)


def test_pad_refusals():
    refused(op_graph("Pad", [1, 2, 4, 5], {}, {"pads": np.array([0, 1, 0, 0, 0, 0, 0, 0])}, 13),
            "a Pad of 1x2x4x5 along the batch or channel axis")
    refused(op_graph("Pad", [1, 2, 4, 5], {}, {"pads": np.array([0, 0, -1, 0, 0, 0, 0, 0])}, 13),
            "a Pad with negative pads")
    refused(op_graph("Pad", [1, 2, 4, 5], {}, {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 0]),
                                               "value": np.array(1.5, np.float32)}, 13),
            "a Pad with the constant 1.5")
    refused(op_graph("Pad", [1, 2, 4, 5], {"mode": "wrap"}, {"pads": np.array([0, 0, 1, 0, 0, 0, 0, 0])}, 19),
            "a Pad in mode wrap")


def test_shape_computations_are_folded():
    """Every folder the shape chains use, in one model: the folded values size a resize and a reshape."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "two", "four"], ["hw"]),
             helper.make_node("Cast", ["hw"], ["hw_float"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["hw_float", "factor"], ["scaled"]),
             helper.make_node("Floor", ["scaled"], ["floored"]),
             helper.make_node("Cast", ["floored"], ["hw_new"], to=TensorProto.INT64),
             helper.make_node("Slice", ["s", "zero", "two"], ["nc"]),
             helper.make_node("Concat", ["nc", "hw_new"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["r"], name="resize", mode="nearest",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Size", ["r"], ["count"]),
             helper.make_node("Div", ["count", "batch_scalar"], ["features"]),
             helper.make_node("Unsqueeze", ["features", "zero"], ["features1"]),
             helper.make_node("Concat", ["batch", "features1"], ["target"], axis=0),
             helper.make_node("Reshape", ["r", "target"], ["y"], name="flatten")]
    initializers = {"two": np.array([2]), "four": np.array([4]), "zero": np.array([0]),
                    "factor": np.array([2.0, 1.5], np.float32), "batch": np.array([2]), "batch_scalar": np.array(2)}
    graph = assert_like_onnxruntime(make_model(nodes, {"x": [2, 3, 4, 6]}, initializers=initializers, opset=13))
    assert [n.op for n in graph.nodes] == ["input", "upsample", "flatten"]


# ----- resizing ----------------------------------------------------------------------------------------------------
RESIZE_GRID = [
    (mode, coordinate, nearest_mode, factors)
    for mode in ("nearest", "linear", "cubic")
    for coordinate in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                       "half_pixel_symmetric")
    for nearest_mode in (("round_prefer_floor", "round_prefer_ceil", "floor", "ceil") if mode == "nearest" else
                         ("round_prefer_floor",))
    for factors in ({"scales": [1, 1, 2.0, 2.0]}, {"scales": [1, 1, 1.5, 0.5]}, {"sizes": [1, 2, 9, 1]},
                    {"sizes": [1, 2, 3, 11]})
    if not (coordinate == "tf_half_pixel_for_nn" and mode != "nearest")
]
# What the importer must map (PyTorch's interpolate computes these): checked to be mapped, not just allowed.
MUST_MAP = [
    ("nearest", "asymmetric", "floor", {"scales": [1, 1, 2.0, 2.0]}),
    ("nearest", "asymmetric", "floor", {"sizes": [1, 2, 3, 11]}),
    ("nearest", "half_pixel", "round_prefer_floor", {"scales": [1, 1, 2.0, 2.0]}),  # same pixels at an integer scale
    ("linear", "half_pixel", "round_prefer_floor", {"scales": [1, 1, 1.5, 0.5]}),
    ("linear", "pytorch_half_pixel", "round_prefer_floor", {"sizes": [1, 2, 3, 11]}),
    ("linear", "align_corners", "round_prefer_floor", {"sizes": [1, 2, 9, 1]}),
    ("cubic", "half_pixel", "round_prefer_floor", {"scales": [1, 1, 2.0, 2.0]}),
    ("cubic", "align_corners", "round_prefer_floor", {"sizes": [1, 2, 3, 11]}),
]


def resize_model(mode, coordinate, nearest_mode, factors, opset=19, **attrs):
    names = ["x", "", "scales" if "scales" in factors else "", "sizes" if "sizes" in factors else ""]
    initializers = {key: np.array(value, np.float32 if key == "scales" else np.int64)
                    for key, value in factors.items()}
    node = helper.make_node("Resize", names, ["y"], name="resize", mode=mode, coordinate_transformation_mode=coordinate,
                            nearest_mode=nearest_mode, **attrs)
    return make_model([node], {"x": [1, 2, 4, 6]}, initializers=initializers, opset=opset)


@pytest.mark.parametrize("mode,coordinate,nearest_mode,factors", RESIZE_GRID,
                         ids=[f"{m}-{c}-{n}-{list(f.values())[0]}" for m, c, n, f in RESIZE_GRID])
def test_resize_is_mapped_exactly_or_refused(mode, coordinate, nearest_mode, factors):
    model = resize_model(mode, coordinate, nearest_mode, factors)
    try:
        graph = import_model(model)
    except ModelLoadError as exc:
        assert (mode, coordinate, nearest_mode, factors) not in MUST_MAP, str(exc)
        assert "weighs other input pixels" in str(exc) and "\n" not in str(exc)
        return
    assert graph.node("y").op == "upsample"
    assert_like_onnxruntime(model)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_resize_align_corners_by_a_fractional_length_is_refused(mode):
    """align_corners divides by length_resized - 1: ONNX's reference evaluator takes the fraction 6 x 0.6 = 3.6,
    ONNX Runtime (and our upsample) the whole output length 3 (onnx/onnx#2462). Neither answer is taken."""
    from onnx.reference import ReferenceEvaluator

    model = resize_model(mode, "align_corners", "round_prefer_floor", {"scales": [1, 1, 1.0, 0.6]})
    x = {"x": np.arange(48, dtype=np.float32).reshape(1, 2, 4, 6)}
    standard = ReferenceEvaluator(model).run(None, x)[0]
    runtime = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)
    assert not np.allclose(standard, runtime[0])  # the disagreement is real
    message = refused(model, "Resize 'resize'", "scale 0.6 of 6 pixels along the width", "length_resized = 3.6",
                      "onnx/onnx#2462")
    assert "whole output length 3" in message
    # A scale giving a whole length, or the sizes, have one answer: mapped.
    for factors in ({"scales": [1, 1, 1.0, 0.5]}, {"sizes": [1, 2, 4, 3]}):
        graph = assert_like_onnxruntime(resize_model(mode, "align_corners", "round_prefer_floor", factors))
        assert graph.node("y").attrs["align_corners"]


def test_resize_cubic_coefficient_and_exclusion():
    factors = {"scales": [1, 1, 2.0, 2.0]}
    refused(resize_model("cubic", "half_pixel", "floor", factors, cubic_coeff_a=-0.5), "cubic_coeff_a=-0.5")
    refused(resize_model("cubic", "half_pixel", "floor", factors, exclude_outside=1), "exclude_outside=1")
    refused(resize_model("linear", "tf_crop_and_resize", "floor", factors), "coordinate_transformation_mode="
                                                                            "tf_crop_and_resize")
    refused(resize_model("linear", "half_pixel", "floor", {"scales": [1, 1, 0.5, 0.5]}, antialias=1),
            "a Resize with antialias=1 that shrinks")
    assert_like_onnxruntime(resize_model("linear", "half_pixel", "floor", factors, antialias=1))


def test_resize_with_axes():
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], name="resize", mode="linear", axes=[2, 3])
    assert_like_onnxruntime(make_model([node], {"x": [1, 2, 4, 6]}, initializers={"sizes": np.array([5, 9])},
                                       opset=18))


@pytest.mark.parametrize("opset,op_type", [(7, "Upsample"), (9, "Upsample"), (10, "Resize")])
@pytest.mark.parametrize("scales", [[1, 1, 2.0, 2.0], [1, 1, 2.0, 3.0], [1, 1, 0.5, 0.5]])
def test_legacy_nearest_resizes(opset, op_type, scales):
    if op_type == "Upsample" and min(scales) < 1:
        pytest.skip("ONNX Runtime's Upsample refuses scales below 1")
    scales = np.array(scales, np.float32)
    if opset < 9:
        model = op_graph(op_type, [1, 2, 4, 6], {"mode": "nearest", "scales": scales.tolist()}, opset=opset)
    else:
        model = op_graph(op_type, [1, 2, 4, 6], {"mode": "nearest"}, {"scales": scales}, opset=opset)
    assert_like_onnxruntime(model)


def test_resize_of_batch_or_channels_is_refused():
    refused(resize_model("nearest", "asymmetric", "floor", {"scales": [1, 2, 2.0, 2.0]}),
            "(cnncomp resizes H and W of NCHW tensors)")


# ----- names, inputs, outputs and the model's frame ----------------------------------------------------------------
def test_names_are_kept_made_unique_and_outputs_keep_theirs():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="act"),
             helper.make_node("Tanh", ["a"], ["b"], name="act"),       # a duplicate node name (ONNX Runtime refuses)
             helper.make_node("Sigmoid", ["b"], ["c"]),                 # no name: its output's
             helper.make_node("Relu", ["c"], ["y"], name="x"),          # named like the graph input
             helper.make_node("Identity", ["b"], ["z"], name="alias")]
    graph = import_model(make_model(nodes, {"x": [2, 3]}, outputs=("y", "z", "b")))
    assert [n.name for n in graph.nodes] == ["x", "act", "b", "c", "y", "z"]
    assert [n.op for n in graph.nodes] == ["input", "relu", "tanh", "sigmoid", "relu", "identity"]
    assert graph.outputs == ["y", "z", "b"]


def test_an_output_that_is_an_input_or_read_twice_gets_an_identity():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    model = make_model(nodes, {"x": [2, 3]}, outputs=("y",))
    model.graph.output.append(helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]))
    graph = import_model(model)
    assert graph.outputs == ["y", "x"]


def test_initializers_listed_as_inputs_are_constants():
    model = op_graph("Conv", [1, 3, 5, 5], {}, {"w": weights(2, 3, 3, 3)})
    model.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3, 3, 3]))
    graph = import_model(model)
    assert [n.name for n in graph.inputs] == ["x"]


def test_local_functions_are_inlined():
    body = [helper.make_node("Relu", ["a"], ["b"]), helper.make_node("Sigmoid", ["b"], ["c"])]
    function = helper.make_function("custom", "ReluSigmoid", ["a"], ["c"], body, [helper.make_opsetid("", 17)])
    node = helper.make_node("ReluSigmoid", ["x"], ["y"], name="f", domain="custom")
    graph = helper.make_graph([node], "f", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[function])
    assert [n.op for n in import_model(model).nodes] == ["input", "relu", "sigmoid"]


def test_frame_errors_are_one_line():
    model = op_graph("Relu", [2, 3], opset=5)
    with pytest.raises(ModelLoadError, match="the model uses opset 5; cnncomp imports opsets 7 to"):
        import_model(model)
    model = op_graph("Relu", [2, 3])
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.DOUBLE
    with pytest.raises(ModelLoadError, match="input 'x' is double; cnncomp computes float32"):
        import_model(model)
    model = op_graph("Relu", [3])
    with pytest.raises(ModelLoadError, match="input 'x' has shape 3; cnncomp needs a batch axis"):
        import_model(model)
    model = make_model([helper.make_node("Constant", [], ["y"], value_float=1.0)], {"x": [2, 3]})
    with pytest.raises(ModelLoadError, match="graph output 'y' is a constant"):
        import_model(model)
    model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r", domain="com.example")], {"x": [2, 3]})
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(ModelLoadError, match=r"no converter for 1 op type: com.example.Relu x1 \('r'\)"):
        import_model(model)


def test_every_converter_is_listed_with_its_opsets():
    ops = supported_ops()
    assert ops["Clip"] == [6, 11] and ops["Softmax"] == [1, 13] and ops["Resize"] == [10, 11]
    assert ops["Upsample"] == [7, 9] and ops["Pad"] == [2, 11] and ops["Dropout"] == [1, 12]
    assert ops["Squeeze"] == [1, 13] and ops["HardSwish"] == [14] and ops["Swish"] == [24]


# ----- constant folding, against ONNX's reference evaluator ------------------------------------------------------
def _ints(*values):
    return np.array(values, np.int64)


FOLDS = [
    ("Identity", {}, [weights(2, 3)], 17),
    ("Cast", {"to": TensorProto.INT64}, [np.array([1.7, -2.2], np.float32)], 17),
    ("Gather", {"axis": 0}, [_ints(4, 5, 6, 7), _ints(-1, 0)], 13),
    ("Gather", {"axis": 1}, [weights(3, 4), np.array(2, np.int64)], 13),
    ("Unsqueeze", {"axes": [0, -1]}, [_ints(3, 4)], 11),
    ("Unsqueeze", {}, [_ints(3, 4), _ints(0, 2)], 13),
    ("Squeeze", {"axes": [0]}, [weights(1, 3, 1)], 11),
    ("Squeeze", {}, [weights(1, 3, 1), _ints(-1)], 13),
    ("Squeeze", {}, [weights(1, 3, 1)], 13),
    ("Concat", {"axis": 0}, [_ints(1, 2), _ints(3)], 13),
    ("Slice", {"starts": [1], "ends": [100]}, [_ints(1, 2, 3, 4)], 9),
    ("Slice", {}, [_ints(1, 2, 3, 4, 5), _ints(-1), _ints(-100), _ints(0), _ints(-2)], 13),
    ("Slice", {}, [weights(4, 5), _ints(1, 0), _ints(3, 5), _ints(0, 1), _ints(1, 2)], 13),
    ("Reshape", {}, [weights(2, 3, 4), _ints(0, -1)], 13),
    ("Reshape", {"allowzero": 1}, [weights(2, 3, 4), _ints(4, 6)], 14),
    ("Flatten", {"axis": 2}, [weights(2, 3, 4)], 13),
    ("Transpose", {"perm": [1, 0, 2]}, [weights(2, 3, 4)], 13),
    ("ConstantOfShape", {"value": numpy_helper.from_array(np.array([7], np.int64))}, [_ints(2, 3)], 13),
    ("Range", {}, [np.array(1, np.int64), np.array(10, np.int64), np.array(3, np.int64)], 13),
    ("Expand", {}, [_ints(1, 2).reshape(2, 1), _ints(2, 3)], 13),
    ("Add", {}, [_ints(1, 2), _ints(3)], 13),
    ("Sub", {}, [weights(2, 3), weights(3)], 13),
    ("Mul", {}, [_ints(2, 3), _ints(4, 5)], 13),
    ("Div", {}, [_ints(7, -7, 6), _ints(2, 2, -4)], 13),
    ("Div", {}, [weights(3), weights(3, seed=2) + 3], 13),
    ("Mod", {}, [_ints(7, -7, 6), _ints(3, 3, -4)], 13),
    ("Pow", {}, [weights(3) + 3, weights(3)], 13),
    ("Max", {}, [_ints(1, 5), _ints(3, 2)], 13),
    ("Min", {}, [_ints(1, 5), _ints(3, 2)], 13),
    ("Equal", {}, [_ints(1, 5), _ints(1, 2)], 13),
    ("Less", {}, [_ints(1, 5), _ints(3, 2)], 13),
    ("Greater", {}, [_ints(1, 5), _ints(3, 2)], 13),
    ("Where", {}, [np.array([True, False]), _ints(1, 2), _ints(3, 4)], 13),
    ("Not", {}, [np.array([True, False])], 13),
    ("Neg", {}, [_ints(1, -2)], 13),
    ("Abs", {}, [weights(4)], 13),
    ("Floor", {}, [weights(4)], 13),
    ("Ceil", {}, [weights(4)], 13),
    ("Sqrt", {}, [np.abs(weights(4))], 13),
    ("Reciprocal", {}, [weights(4) + 3], 13),
    ("Relu", {}, [weights(4)], 13),
    ("Sigmoid", {}, [weights(4)], 13),
    ("Tanh", {}, [weights(4)], 13),
    ("Exp", {}, [weights(4)], 13),
    ("ReduceProd", {"axes": [0], "keepdims": 0}, [_ints(2, 3, 4).reshape(3, 1)], 13),
    ("ReduceSum", {"keepdims": 1}, [weights(2, 3), _ints(1)], 13),
    ("ReduceMax", {"axes": [1], "keepdims": 0}, [weights(2, 3)], 13),
    ("ReduceMin", {}, [weights(2, 3), _ints(0)], 18),
    ("ReduceMean", {"keepdims": 0}, [weights(2, 3)], 18),
    ("Split", {"axis": 0}, [_ints(1, 2, 3, 4)], 13),
    ("Split", {"axis": 0, "split": [1, 3]}, [_ints(1, 2, 3, 4)], 11),
    ("Split", {"axis": 0}, [_ints(1, 2, 3, 4), _ints(3, 1)], 13),
    ("Split", {"axis": 0, "num_outputs": 3}, [_ints(1, 2, 3, 4, 5)], 18),
]


@pytest.mark.parametrize("op_type,attrs,inputs,opset", FOLDS, ids=[f"{c[0]}-{i}" for i, c in enumerate(FOLDS)])
def test_folders_compute_what_onnx_defines(op_type, attrs, inputs, opset):
    from onnx.reference import ReferenceEvaluator

    from frontends.onnx.folding import FOLDERS
    from frontends.onnx.graph import OnnxNode

    outputs = 3 if attrs.get("num_outputs") == 3 else 2 if op_type == "Split" else 1
    names = [f"i{k}" for k in range(len(inputs))]
    proto = helper.make_node(op_type, names, [f"o{k}" for k in range(outputs)], **attrs)
    graph = helper.make_graph([proto], "fold", [], [helper.make_empty_tensor_value_info(f"o{k}")
                                                    for k in range(outputs)],
                              [numpy_helper.from_array(np.asarray(v), n) for n, v in zip(names, inputs, strict=True)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    expected = ReferenceEvaluator(model).run(None, {})
    actual = FOLDERS[op_type](OnnxNode.from_proto(proto, onnx), [np.asarray(v) for v in inputs], opset)
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        a = np.asarray(a)
        assert a.shape == e.shape and a.dtype == e.dtype, (a, e)
        np.testing.assert_allclose(a, e, rtol=1e-6)


def test_a_constant_node_in_each_form():
    for attrs, expected in (({"value_float": 2.5}, np.float32(2.5)), ({"value_ints": [1, 2]}, _ints(1, 2)),
                            ({"value": numpy_helper.from_array(weights(2))}, weights(2))):
        from frontends.onnx.folding import FOLDERS
        from frontends.onnx.graph import OnnxNode

        node = OnnxNode.from_proto(helper.make_node("Constant", [], ["c"], **attrs), onnx)
        (value,) = FOLDERS["Constant"](node, [], 17)
        np.testing.assert_array_equal(value, expected)
        assert value.dtype == np.asarray(expected).dtype


def test_conv_with_same_padding_and_dilation_follows_the_onnx_definition():
    """ONNX Runtime refuses this case; PyTorch's padding="same" (extra padding at the end, stride 1) is the
    ONNX definition's SAME_UPPER."""
    import torch

    weight = weights(6, 4, 3, 3)
    model = op_graph("Conv", [1, 4, 9, 10], {"auto_pad": "SAME_UPPER", "dilations": [2, 1]}, {"w": weight})
    x = inputs_for(model)["x"]
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding="same",
                                          dilation=(2, 1))
    np.testing.assert_allclose(reference.run(import_model(model), {"x": x})["y"], expected.numpy(), **TOLERANCE)
