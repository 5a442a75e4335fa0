"""`cnncomp export` and ONNX models on the other commands, through the real entry point: files ONNX Runtime runs,
summaries of imported models equal to the originals', --input-shape for symbolic dimensions, --batch, blocks in
renders, and one-line errors (truncated and non-ONNX files, every unsupported op in one message)."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from backends import reference
from cnncomp.driver import load_model

ROOT = Path(__file__).parents[2]


def cnncomp(*args):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def one_line_error(result, *fragments):
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cnncomp: error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def summary_json(*args):
    result = cnncomp("summary", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_export_writes_a_model_onnx_runtime_runs_like_the_reference(tmp_path):
    target = tmp_path / "lenet5.onnx"
    result = cnncomp("export", "lenet5", "-o", target, "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("lenet5: ") and f"-> {target}" in result.stdout
    assert "61,706 parameters in 10 initializers" in result.stdout and "(opset 17)" in result.stdout
    model = onnx.load(str(target))
    onnx.checker.check_model(model, full_check=True)
    graph = load_model("lenet5", batch=2)  # the zoo's weights are drawn from a fixed seed: the same as exported
    x = np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"image": x})
    np.testing.assert_allclose(actual, reference.run(graph, {"image": x})[graph.outputs[0]], atol=1e-5, rtol=1e-5)


def test_export_and_summary_take_trained_weights(tmp_path):
    weights = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
    result = cnncomp("export", "lenet5", "--weights", weights, "-o", tmp_path / "trained.onnx")
    assert result.returncode == 0, result.stderr
    exported = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(tmp_path / "trained.onnx").graph.initializer}
    with np.load(weights) as trained:
        assert set(exported) == set(trained.files)
        for key in trained.files:
            np.testing.assert_array_equal(exported[key], trained[key])
    assert summary_json("lenet5", "--weights", weights)["params"] == 61_706


def test_the_summary_of_an_exported_model_is_the_originals(tmp_path):
    target = tmp_path / "resnet18.onnx"
    assert cnncomp("export", "resnet18", "-o", target).returncode == 0
    original, imported = summary_json("resnet18"), summary_json(target)
    assert imported["layers"] == original["layers"]
    assert (imported["params"], imported["macs"]) == (original["params"], original["macs"])
    assert imported["model"] == "resnet18"  # the file's name
    at_batch_4 = summary_json(target, "--batch", "4")
    assert at_batch_4["layers"][-1]["output_shape"] == [4, 1000]


def test_export_after_passes_with_another_input_size(tmp_path):
    target = tmp_path / "efficientnet.onnx"
    result = cnncomp("export", "efficientnet_b0", "-o", target, "-O", "3", "--input-shape", "image=1x3x64x64")
    assert result.returncode == 0, result.stderr
    model = onnx.load(str(target))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    op_types = {node.op_type for node in model.graph.node}
    assert {"Conv", "Sigmoid", "Mul", "Add", "GlobalAveragePool", "Gemm"} <= op_types
    assert "BatchNormalization" not in op_types  # folded at -O3


def test_an_onnx_model_exports_again(tmp_path):
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    assert cnncomp("export", "inception", "-o", first).returncode == 0
    result = cnncomp("export", first, "-o", second)
    assert result.returncode == 0, result.stderr
    a, b = onnx.load(str(first)), onnx.load(str(second))
    assert [(n.op_type, n.name) for n in a.graph.node] == [(n.op_type, n.name) for n in b.graph.node]


def symbolic_model(path, dims=("N", 3, "H", "W")):
    """x (symbolic dims) -> Conv 3x3 -> Relu."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "symbolic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_symbolic_dimensions_need_input_shape(tmp_path):
    path = symbolic_model(tmp_path / "symbolic.onnx")
    one_line_error(cnncomp("summary", path), "symbolic.onnx: input 'x' has symbolic dimensions 'H' (axis 2), 'W' "
                                             "(axis 3)", "--input-shape x=1x3xHxW")
    summary = summary_json(path, "--input-shape", "x=2x3x10x12")
    assert summary["layers"][-1]["output_shape"] == [2, 4, 10, 12]
    assert [layer["name"] for layer in summary["layers"]] == ["conv", "y"]  # graph outputs keep their names
    # --batch applies after --input-shape.
    assert summary_json(path, "--input-shape", "x=2x3x10x12", "--batch", "3")["layers"][-1]["output_shape"] == \
        [3, 4, 10, 12]


def test_a_symbolic_batch_imports_at_1_and_input_shape_works_for_any_model(tmp_path):
    path = symbolic_model(tmp_path / "batch.onnx", ("batch", 3, 8, 8))
    assert summary_json(path)["layers"][-1]["output_shape"] == [1, 4, 8, 8]
    assert summary_json("resnet18", "--input-shape", "image=1x3x64x64")["layers"][-1]["output_shape"] == [1, 1000]


@pytest.mark.parametrize("text,message", [
    ("x", "expected NAME=NxCxHxW with positive sizes, got 'x'"),
    ("x=1x3xHx4", "expected NAME=NxCxHxW with positive sizes, got 'x=1x3xHx4'"),
    ("x=1x0x4x4", "expected NAME=NxCxHxW with positive sizes"),
])
def test_malformed_input_shapes_are_usage_errors(tmp_path, text, message):
    result = cnncomp("summary", "lenet5", "--input-shape", text)
    assert result.returncode == 2 and message in result.stderr


def test_input_shape_errors_name_the_input(tmp_path):
    path = symbolic_model(tmp_path / "symbolic.onnx")
    one_line_error(cnncomp("summary", path, "--input-shape", "image=1x3x8x8"), "no input 'image'", "inputs: 'x'")
    one_line_error(cnncomp("summary", path, "--input-shape", "x=1x3x8"), "input 'x' has rank 4 (Nx3xHxW)")


def test_truncated_and_non_onnx_files_are_one_line_errors(tmp_path):
    good = tmp_path / "good.onnx"
    assert cnncomp("export", "lenet5", "-o", good).returncode == 0
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:5000])
    one_line_error(cnncomp("summary", truncated), f"{truncated}: not a readable ONNX model")
    text = tmp_path / "notes.onnx"
    text.write_text("name: not a model\n" * 20)
    one_line_error(cnncomp("summary", text), f"{text}: not")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    one_line_error(cnncomp("summary", empty), f"{empty}: not an ONNX model")


def test_three_unsupported_op_types_in_one_message(tmp_path):
    nodes = [helper.make_node("Elu", ["x"], ["a"], name="elu_1"),
             helper.make_node("Elu", ["a"], ["b"], name="elu_2"),
             helper.make_node("Selu", ["b"], ["c"], name="selu"),
             helper.make_node("Relu", ["x"], ["d"], name="fine"),
             helper.make_node("InstanceNormalization", ["d", "s", "t"], ["e"], name="norm"),
             helper.make_node("Add", ["c", "e"], ["y"], name="sum")]
    initializers = [helper.make_tensor(name, TensorProto.FLOAT, [3], np.ones(3, np.float32)) for name in "st"]
    graph = helper.make_graph(nodes, "unsupported", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    path = tmp_path / "unsupported.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    line = one_line_error(cnncomp("summary", path), f"{path}: cannot import 4 of 6 nodes (opset 17)",
                          "no converter for 3 op types: Elu x2 ('elu_1', 'elu_2'), Selu x1 ('selu'), "
                          "InstanceNormalization x1 ('norm')")
    assert "1 node reading their outputs was not checked" in line
    assert cnncomp("export", path, "-o", tmp_path / "again.onnx").returncode == 1


def test_export_errors_are_one_line(tmp_path):
    one_line_error(cnncomp("export", "lenet5", "-o", tmp_path / "lenet5.txt"), "lenet5.txt: an ONNX model is written "
                                                                              "as .onnx")
    one_line_error(cnncomp("export", "lenet5", "-o", tmp_path / "missing" / "lenet5.onnx"),
                   "cannot write the ONNX model")
    one_line_error(cnncomp("export", "nosuchmodel", "-o", tmp_path / "x.onnx"), "nosuchmodel: no such file")


def test_render_of_a_pytorch_export_draws_its_modules_as_blocks(tmp_path):
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv2(torch.relu(self.conv1(x))) + x)

    path = tmp_path / "blocks.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(nn.Sequential(Block(), Block()).eval(), (torch.zeros(1, 4, 8, 8),), str(path),
                          dynamo=False, input_names=["x"], output_names=["y"])
    target = tmp_path / "blocks.dot"
    result = cnncomp("render", path, "-o", target)
    assert result.returncode == 0, result.stderr
    dot = target.read_text()
    assert "subgraph cluster_0 {" in dot and "subgraph cluster_1 {" in dot  # one cluster per Block
    summary = summary_json(path)
    assert [layer["name"] for layer in summary["layers"]][:3] == ["/0/conv1/Conv", "/0/Relu", "/0/conv2/Conv"]


def test_export_help():
    result = cnncomp("export", "--help")
    assert result.returncode == 0
    assert "--input-shape" in result.stdout and "-O N" in result.stdout
