"""Rough edges a new user hit, through the real entry point: a closed pipe ends a command quietly; a file that is
not a weights archive, weights of the wrong shape and an `.npz` input whose array names another input are one line
naming the file; `compile --input-shape` sets an input's size in one command, and, fully convolutional, a larger
image."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx

import cnncomp
from tests.helpers import assert_one_line_error, cnncomp_cli

ROOT = Path(__file__).parents[2]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
DIGIT_IMAGE = ROOT / "examples" / "images" / "digit_7.png"


def test_a_closed_pipe_ends_the_command_quietly():
    # More output than a pipe holds (--json of every node of ResNet-152), and a reader that leaves after a line.
    process = subprocess.Popen([sys.executable, "-m", "cnncomp", "summary", "resnet152", "--json"], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=120)
    assert process.returncode == 141 and stderr == ""


def test_an_image_given_as_weights_is_not_an_npz_of_weights(tmp_path):
    result = cnncomp_cli("compile", "lenet5", "--weights", DIGIT_IMAGE, "-o", tmp_path / "m.cnnx")
    assert_one_line_error(result, f"{DIGIT_IMAGE}: not an .npz of weights")
    assert not list(tmp_path.iterdir())


def test_weights_of_the_wrong_shape_name_the_file_and_the_node(tmp_path):
    with np.load(WEIGHTS) as archive:
        weights = dict(archive)
    weights["c1.weight"] = weights["c1.weight"][:3]
    np.savez(tmp_path / "bad.npz", **weights)
    result = cnncomp_cli("compile", "lenet5", "--weights", tmp_path / "bad.npz", "-o", tmp_path / "m.cnnx")
    assert_one_line_error(result, f"{tmp_path / 'bad.npz'}: node 'c1' (conv2d): parameter 'weight' has shape")


def test_an_npz_input_named_for_another_input_is_refused(tmp_path):
    np.savez(tmp_path / "named.npz", img=np.zeros((1, 1, 32, 32), np.float32))
    result = cnncomp_cli("run", "lenet5", "-i", tmp_path / "named.npz")
    assert_one_line_error(result, "named.npz: its array is named 'img', but model 'lenet5' takes 'image'")
    np.savez(tmp_path / "unnamed.npz", np.zeros((1, 1, 32, 32), np.float32))  # arr_0: taken as the one input
    assert cnncomp_cli("run", "lenet5", "-i", tmp_path / "unnamed.npz").returncode == 0


def test_compile_takes_input_shapes_in_one_command(tmp_path):
    result = cnncomp_cli("compile", "resnet18", "--input-shape", "image=1x3x97x131", "-o", tmp_path / "r.cnnx")
    assert result.returncode == 0, result.stderr
    model = cnncomp.load(tmp_path / "r.cnnx")
    assert model.input_shapes == {"image": (1, 3, 97, 131)} and model.output_shapes == {"logits": (1, 1000)}
    # The shape's batch is kept unless --batch says otherwise; an artifact's shapes are fixed already.
    assert cnncomp_cli("compile", "lenet5", "--input-shape", "image=4x1x32x32", "-o", tmp_path / "l.cnnx",
                       ).returncode == 0
    assert cnncomp.load(tmp_path / "l.cnnx").input_shapes == {"image": (4, 1, 32, 32)}
    assert_one_line_error(cnncomp_cli("run", tmp_path / "l.cnnx", "--input-shape", "image=1x1x32x32", "-i",
                                      DIGIT_IMAGE), "--input-shape and --strict do not apply")


def test_fully_convolutional_summary_and_export_take_a_larger_image(tmp_path):
    # The image size applies once the classifier is convolutional: LeNet-5 on 40x40 scores 3x3 windows.
    result = cnncomp_cli("summary", "lenet5", "--fully-convolutional", "--input-shape", "image=1x1x40x40", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["params"] == 61_706 and summary["outputs"][0]["shape"] == [1, 10, 3, 3]
    result = cnncomp_cli("export", "lenet5", "--fully-convolutional", "--input-shape", "image=2x1x40x40",
                         "-o", tmp_path / "l.onnx")
    assert result.returncode == 0, result.stderr
    output = onnx.load(tmp_path / "l.onnx").graph.output[0]
    assert [d.dim_value for d in output.type.tensor_type.shape.dim] == [2, 10, 3, 3]


def test_weights_that_do_not_fit_another_image_size_are_one_line(tmp_path):
    result = cnncomp_cli("compile", "lenet5", "--weights", WEIGHTS, "--input-shape", "image=1x1x40x40",
                         "-o", tmp_path / "l.cnnx")
    assert_one_line_error(result, "node 'f6' (dense): at input image 1x1x40x40 its weight would be 84x1080, but "
                                  "the model's is 84x120")
    assert not list(tmp_path.iterdir())


def test_strict_refuses_fractions_in_every_kind_of_model(tmp_path):
    assert cnncomp_cli("summary", "lenet5", "--strict").returncode == 0  # every size divides
    result = cnncomp_cli("summary", "googlenet", "--strict")  # a .cnn model: at its line
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "googlenet.cnn:16:14: node 'conv1' (conv2d): height: " in result.stderr
    assert "= 112.5000 is not an integer (strict mode: fractions are illegal)" in result.stderr
    model = tmp_path / "lecture.py"  # any other model: checked again node by node
    model.write_text("from frontends.builder import Builder\n\n\ndef build():\n    b = Builder('lecture')\n"
                     "    return b.build(b.input('image', (1, 7, 7)).conv(1, 3, stride=3, name='c'))\n")
    assert cnncomp_cli("summary", model).returncode == 0
    for command in (["summary"], ["compile", "-o", tmp_path / "m.cnnx"]):
        assert_one_line_error(cnncomp_cli(command[0], model, "--strict", *command[1:]),
                              "node 'c' (conv2d): height: (N + 2P - D*(F-1) - 1)/S + 1 = (7 + 0 - 2 - 1)/3 + 1 "
                              "= 2.3333 is not an integer")
    assert not (tmp_path / "m.cnnx").exists()
