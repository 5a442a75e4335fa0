"""Export to ONNX: every registry op (and every epilogue, lowered form and odd case of pooling, LRN, upsampling,
unpooling) as a model that passes `onnx.checker` (full check) and that ONNX Runtime runs to the reference
backend's outputs; the onnxruntime backend; names, initializers and one-line errors."""

import builtins
import sys

import numpy as np
import onnx
import pytest

import backends.onnxruntime_peer as onnxruntime_peer
from backends import reference
from cnncomp import plugins
from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph
from cnncomp.ops import op_names
from cnncomp.pipeline import optimize
from frontends.builder import Builder
from frontends.onnx import import_model
from frontends.onnx.export import OPSET, RULES, export, to_onnx
from tests import models
from tests.helpers import activation_cases, assert_same_as_reference, random, random_inputs, random_op_graph

TOLERANCE = {"atol": 1e-5, "rtol": 1e-5}

# op, operand shapes, attributes: each registry op across the attributes whose ONNX form differs.
CASES = [
    ("conv2d", [(2, 4, 9, 9)], {"out_channels": 6, "kernel": 3, "padding": 1}),
    ("conv2d", [(1, 4, 9, 9)], {"out_channels": 6, "kernel": 3, "stride": 2, "padding": (1, 0, 2, 1), "dilation": 2,
                                "groups": 2, "bias": False}),
    ("conv2d", [(1, 4, 9, 9)], {"out_channels": 6, "kernel": (3, 1), "affine": True, "act": "relu6"}),
    ("conv2d", [(1, 4, 9, 9), (1, 6, 9, 9)], {"out_channels": 6, "kernel": 3, "padding": 1, "residual": True,
                                              "act": "silu"}),
    ("conv2d", [(1, 4, 9, 9), (1, 6, 7, 7)], {"out_channels": 6, "kernel": 3, "residual": True, "affine": True}),
    ("conv_transpose2d", [(2, 4, 5, 5)], {"out_channels": 6, "kernel": 3, "stride": 2, "padding": (1, 0, 1, 2),
                                          "output_padding": 1}),
    ("conv_transpose2d", [(1, 4, 5, 5)], {"out_channels": 6, "kernel": 3, "stride": 2, "padding": 1, "dilation": 2,
                                          "groups": 2, "bias": False}),
    ("dense", [(2, 10)], {"out_features": 5}),
    ("dense", [(2, 10)], {"out_features": 5, "bias": False, "affine": True, "act": "leaky_relu", "alpha": 0.2}),
    ("dense", [(2, 10), (2, 5)], {"out_features": 5, "residual": True, "act": "tanh"}),
    ("depthwise_conv2d", [(1, 4, 7, 7)], {"kernel": 3, "multiplier": 2, "padding": 1, "stride": 2}),
    ("depthwise_conv2d", [(1, 4, 7, 7), (1, 4, 7, 7)], {"kernel": 3, "padding": 1, "residual": True,
                                                        "act": "hardswish", "bias": False}),
    ("pointwise_conv2d", [(2, 4, 7, 7), (2, 4, 1, 1)], {"out_channels": 5, "gate": True}),
    ("pointwise_conv2d", [(1, 4, 7, 7), (1, 5, 7, 7)], {"out_channels": 5, "residual": True, "affine": True,
                                                        "act": "sigmoid"}),
    ("separable_conv2d", [(1, 4, 7, 7)], {"out_channels": 5, "kernel": 3, "padding": 1, "mid_bias": True,
                                          "mid_act": "relu6", "act": "relu"}),
    ("separable_conv2d", [(1, 4, 7, 7), (1, 5, 4, 4)], {"out_channels": 5, "kernel": 3, "stride": 2, "padding": 1,
                                                        "multiplier": 2, "bias": False, "residual": True}),
    ("strided_slice", [(1, 4, 7, 8)], {"stride": (2, 3)}),
    ("max_pool2d", [(2, 3, 8, 8)], {"kernel": 3, "stride": 2, "padding": 1, "dilation": 2}),
    ("max_pool2d", [(1, 3, 7, 7)], {"kernel": 3, "stride": 2, "ceil_mode": True}),
    # PyTorch drops a ceil-mode window that would start in the padding; ONNX keeps it (sliced off).
    ("max_pool2d", [(1, 3, 5, 7)], {"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("max_pool2d_indices", [(2, 3, 7, 6)], {"kernel": 2, "stride": 2, "padding": 1}),
    ("max_pool2d_indices", [(1, 3, 5, 7)], {"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("avg_pool2d", [(1, 3, 7, 7)], {"kernel": 3, "stride": 2, "padding": 1}),
    ("avg_pool2d", [(1, 3, 7, 7)], {"kernel": 3, "stride": 2, "padding": 1, "count_include_pad": False}),
    ("avg_pool2d", [(1, 3, 6, 6)], {"kernel": 3, "stride": 2, "ceil_mode": True}),
    ("avg_pool2d", [(1, 3, 5, 7)], {"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True}),
    ("avg_pool2d", [(1, 3, 5, 7)], {"kernel": 2, "stride": 2, "padding": 1, "ceil_mode": True,
                                    "count_include_pad": False}),
    ("global_avg_pool", [(2, 4, 7, 8)], {}),
    ("adaptive_avg_pool2d", [(1, 2, 8, 9)], {"output_size": (4, 3)}),
    ("adaptive_avg_pool2d", [(2, 2, 9, 7)], {"output_size": (4, 3)}),
    ("batch_norm", [(2, 5, 3, 3)], {"eps": 1e-3}),
    ("batch_norm", [(2, 5)], {}),
    ("lrn", [(1, 7, 4, 4)], {"size": 5, "alpha": 1e-2, "beta": 0.75, "k": 2.0}),
    ("lrn", [(2, 7, 4, 4)], {"size": 4, "alpha": 1e-2, "beta": 0.6, "k": 1.0}),  # even: ONNX's window differs
    ("softmax", [(2, 5, 3, 3)], {"axis": 1}),
    ("softmax", [(2, 5)], {}),
    ("add", [(2, 4, 3, 3), (2, 4, 3, 3)], {}),
    ("add", [(2, 4, 3, 3), (2, 4, 1, 1)], {}),
    ("mul", [(2, 4, 1, 1), (2, 4, 3, 3)], {}),
    ("concat", [(2, 4, 3, 3), (2, 2, 3, 3), (2, 1, 3, 3)], {}),
    ("concat", [(2, 4, 3, 3), (2, 4, 3, 5)], {"axis": 3}),
    ("flatten", [(2, 4, 3, 3)], {}),
    ("identity", [(2, 4, 3, 3)], {}),
    ("dropout", [(2, 4, 3, 3)], {"rate": 0.3}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "nearest", "scale": 2}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "nearest", "scale": (1.5, 0.7)}),
    ("upsample", [(2, 2, 4, 5)], {"mode": "nearest", "size": (7, 9)}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "bilinear", "scale": 1.5}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "bilinear", "size": (3, 11)}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "bilinear", "scale": 1.5, "align_corners": True}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "bicubic", "scale": 1.5}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "bicubic", "size": (9, 1)}),
    ("upsample", [(1, 2, 4, 5)], {"mode": "bicubic", "size": (7, 3), "align_corners": True}),
    ("pad", [(1, 2, 4, 5)], {"pads": (1, 2, 3, 0)}),
    ("pad", [(1, 2, 4, 5)], {"pads": (1, 2, 3, 0), "mode": "reflect"}),
    ("pad", [(1, 2, 4, 5)], {"pads": 2, "mode": "replicate"}),
    ("crop", [(1, 2, 9, 8), (1, 1, 4, 5)], {}),
    ("channel_slice", [(2, 6, 3, 4)], {"start": 2, "stop": 5}),
    ("channel_slice", [(3, 7)], {"start": 0, "stop": 4}),
    *[(case.pop("act"), [(2, 3, 4, 4)], case) for case in activation_cases()],
]


def inputs_of(graph):
    # Values of several units, so relu6 and hardswish saturate somewhere.
    return {name: value * 4 for name, value in random_inputs(graph).items()}


def assert_same_outputs(graph, tolerance=TOLERANCE):
    assert_same_as_reference(graph, onnxruntime_peer, **tolerance, inputs=inputs_of(graph))


@pytest.mark.parametrize("op,shapes,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_every_op_runs_on_onnxruntime_like_the_reference(op, shapes, attrs):
    assert_same_outputs(random_op_graph(op, shapes, attrs))


def test_every_registry_op_has_an_onnx_form_and_a_case():
    assert set(RULES) | {"input"} == set(op_names())
    assert {case[0] for case in CASES} | {"input", "constant", "max_unpool2d"} == set(op_names())


def unpool_model(size, ceil_mode, output_size, batch=1, extra_outputs=False):
    """max_pool_with_indices -> relu -> max_unpool; optionally the indices and the pooled values as outputs too."""
    b = Builder("unpool", batch=batch)
    x = b.input("x", (3, *size))
    padding = 1 if ceil_mode else 0
    pooled, indices = x.max_pool_with_indices(2, 2, padding=padding, ceil_mode=ceil_mode, name="pool")
    y = pooled.relu().max_unpool(indices, 2, 2, padding=padding, output_size=output_size, name="up")
    return b.build(y, indices, pooled) if extra_outputs else b.build(y)


@pytest.mark.parametrize("size,ceil_mode,output_size,expected_ops", [
    # Unpooling to the pooled input's plane size reads MaxPool's flat indices directly.
    ((6, 6), False, None, ["MaxPool", "Relu", "MaxUnpool"]),
    ((5, 5), False, (5, 5), ["MaxPool", "Relu", "MaxUnpool"]),
    # In ceil mode a window ONNX would add is held off by the end pads, not sliced off.
    ((5, 7), True, (5, 7), ["MaxPool", "Relu", "MaxUnpool"]),
    # Another plane size needs the per-plane indices, offset by (n*C + c) * OH*OW.
    ((6, 6), False, (7, 7), ["MaxPool", "Mod", "Relu", "Add", "MaxUnpool"]),
    ((5, 5), True, (6, 6), ["MaxPool", "Mod", "Relu", "Add", "MaxUnpool"]),
])
@pytest.mark.parametrize("batch", [1, 2])
def test_max_pool_with_indices_and_unpooling(size, ceil_mode, output_size, expected_ops, batch):
    graph = unpool_model(size, ceil_mode, output_size, batch)
    assert [n.op_type for n in to_onnx(graph).graph.node] == expected_ops
    assert_same_outputs(graph)


def test_per_plane_indices_as_a_graph_output_and_a_pool_shared_by_both():
    graph = unpool_model((6, 6), False, None, batch=2, extra_outputs=True)
    model = to_onnx(graph)
    assert [n.op_type for n in model.graph.node] == ["MaxPool", "Mod", "Relu", "MaxUnpool"]
    assert list(model.graph.node[0].output)[0] == "pool"
    assert_same_outputs(graph)


def test_constant_nodes_export_as_initializers():
    graph = Graph("constants")
    graph.add_node("x", "input", attrs={"shape": (1, 4, 3, 3)})
    value = random((1, 4, 1, 1), seed=5)
    graph.add_node("c", "constant", attrs={"shape": (1, 4, 1, 1)}, params={"value": value})
    graph.add_node("y", "mul", ["x", "c"])
    graph.set_outputs(["y", "c"])
    assert_same_outputs(graph)
    initializers = {t.name for t in to_onnx(graph).graph.initializer}
    assert "c.value" in initializers


@pytest.mark.parametrize("build", [models.basic_block, models.inception_module, models.unet_level, models.mbconv,
                                   models.separable_stack, models.dual_path_block, models.res2net_block])
@pytest.mark.parametrize("level", [0, 3])
def test_builder_models_before_and_after_passes(build, level):
    graph, _ = optimize(build(batch=2), level)
    assert_same_outputs(graph, {"atol": 1e-4, "rtol": 1e-4})


@pytest.mark.parametrize("build", [models.dual_path_block, models.res2net_block])
def test_channel_slices_round_trip_through_onnx_slices(build):
    """Exported as Slice along axis 1, imported back as the same channel slices."""
    graph = build(batch=2)
    model = to_onnx(graph)
    slices = [n for n in graph.nodes if n.op == "channel_slice"]
    assert sum(n.op_type == "Slice" for n in model.graph.node) == len(slices) == 4
    imported = import_model(model)
    assert [(n.name, n.attrs) for n in imported.nodes if n.op == "channel_slice"] == \
        [(n.name, n.attrs) for n in slices]
    inputs = inputs_of(graph)
    np.testing.assert_array_equal(reference.run(imported, inputs)["out"], reference.run(graph, inputs)["out"])


def test_names_shapes_and_initializers():
    graph = models.basic_block(batch=2)
    model = to_onnx(graph)
    assert model.opset_import[0].version == OPSET
    assert [i.name for i in model.graph.input] == ["x"]
    assert [o.name for o in model.graph.output] == ["out"]
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 16, 10, 10]
    # Every parameter is an initializer named by its key, with its values.
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for key, value in graph.params.items():
        np.testing.assert_array_equal(initializers[key], value)
    # Each node's value keeps the node's name.
    produced = {out for n in model.graph.node for out in n.output}
    assert {n.name for n in graph.nodes if n.op != "input"} <= produced


def test_names_that_collide_with_intermediate_values_stay_distinct():
    b = Builder("collide")
    x = b.input("x", (2, 5, 5))
    y = x.conv(2, 3, padding=1, act="relu", name="c")
    z = y.relu(name="c/conv")  # the name the conv's intermediate value would take
    graph = b.build(z)
    model = to_onnx(graph)
    outputs = [out for n in model.graph.node for out in n.output]
    assert len(outputs) == len(set(outputs))
    assert_same_outputs(graph)


def test_export_writes_a_file(tmp_path):
    path = tmp_path / "block.onnx"
    export(models.mbconv(), path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_export_to_an_unwritable_path_is_one_line(tmp_path):
    with pytest.raises(CnnCompError, match=r"cannot write the ONNX model") as info:
        export(models.mbconv(), tmp_path / "missing" / "block.onnx")
    assert "\n" not in str(info.value)


def test_onnxruntime_backend_by_entry_point_with_options():
    backend = plugins.backend("onnxruntime")
    graph = models.inception_module(batch=2)
    inputs = inputs_of(graph)
    expected = reference.run(graph, inputs)["out"]
    for options in ({}, {"threads": 1}, {"optimize": False}):
        np.testing.assert_allclose(backend.compile(graph, options)(inputs)["out"], expected, atol=1e-4, rtol=1e-4)


def test_onnxruntime_backend_checks_inputs():
    from cnncomp.errors import InputError

    executable = onnxruntime_peer.compile(models.mbconv())
    with pytest.raises(InputError, match="shape 1x16x12x13, expected 1x16x12x12"):
        executable({"x": np.zeros((1, 16, 12, 13), np.float32)})


@pytest.mark.parametrize("module", ["frontends.onnx.export", "backends.onnxruntime_peer", "frontends.onnx"])
def test_onnx_and_onnxruntime_are_imported_only_when_used(module):
    import subprocess

    check = (f"import sys, {module}; bad = sorted(m for m in sys.modules if m.split('.')[0] in "
             "('onnx', 'onnxruntime', 'torch') or (m.split('.')[0] in ('frontends', 'backends') and "
             f"'{module}'.startswith('cnncomp'))); print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("missing,call,message", [
    ("onnx", lambda: to_onnx(models.mbconv()), "ONNX support needs the onnx package: pip install 'cnncomp[onnx]'"),
    ("onnx", lambda: __import__("frontends.onnx", fromlist=["load"]).load("model.onnx"),
     "reading ONNX models needs the onnx package: pip install 'cnncomp[onnx]'"),
    ("onnxruntime", lambda: onnxruntime_peer.compile(models.mbconv()),
     "the onnxruntime backend needs ONNX Runtime: pip install 'cnncomp[onnx]'"),
])
def test_missing_optional_packages_are_named(monkeypatch, missing, call, message):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name == missing or name.startswith(missing + "."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, missing, raising=False)
    monkeypatch.setattr(builtins, "__import__", without)
    with pytest.raises(CnnCompError) as info:
        call()
    assert str(info.value) == message
