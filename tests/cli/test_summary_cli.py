"""`cnncomp summary` through its real entry point: tables, JSON, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
LENET = ROOT / "examples" / "lenet5.py"


def cnncomp(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_summary_json_of_lenet5():
    result = cnncomp("summary", LENET, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["model"] == "lenet5"
    assert summary["params"] == 61_706
    assert summary["macs"] == sum(layer["macs"] for layer in summary["layers"])
    first = summary["layers"][0]
    assert set(first) == {"name", "op", "output_shape", "params", "macs", "receptive_field"}
    assert (first["name"], first["op"], first["output_shape"], first["params"], first["receptive_field"]) == (
        "c1", "conv2d", [1, 6, 28, 28], 156, [5, 5])
    assert [layer["op"] for layer in summary["layers"]][:3] == ["conv2d", "tanh", "avg_pool2d"]


def test_summary_table_of_lenet5():
    result = cnncomp("summary", LENET)
    assert result.returncode == 0, result.stderr
    assert "Total params: 61,706" in result.stdout
    assert "c1" in result.stdout and "1x6x28x28" in result.stdout


def test_summary_with_another_batch_size():
    summary = json.loads(cnncomp("summary", LENET, "--json", "--batch", "4").stdout)
    assert summary["layers"][-1]["output_shape"] == [4, 10]
    assert summary["params"] == 61_706


def one_line_error(result, *fragments):
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_missing_model_file(tmp_path):
    one_line_error(cnncomp("summary", tmp_path / "nope.py"), "nope.py: no such file")


def test_unknown_model_format(tmp_path):
    path = tmp_path / "model.txt"
    path.write_text("hello")
    one_line_error(cnncomp("summary", path), "model.txt", "unknown model format '.txt'", ".py")


def test_python_model_without_build(tmp_path):
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    one_line_error(cnncomp("summary", path), "empty.py: defines no build() function")


def test_python_model_with_a_shape_error(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "from frontends.builder import Builder\n"
        "def build():\n"
        "    b = Builder('bad')\n"
        "    x = b.input('image', (3, 8, 8))\n"
        "    return b.build(x.conv(4, 3) + x)\n"
    )
    one_line_error(cnncomp("summary", path), "bad.py", "node 'add1' (add)", "1x4x6x6", "1x3x8x8")


@pytest.mark.parametrize(("line", "message"), [
    ("x.conv(4)", "bad.py:6: Value.conv() missing 1 required positional argument: 'kernel' "
                  "(conv(out_channels, kernel, stride=1,"),
    ("x.conv(4, 3).batchnorm()", "bad.py:6: Value has no attribute or method 'batchnorm'; did you mean batch_norm?"),
    ("x.conv(4, 9)", "bad.py:6: node 'conv1' (conv2d): height: kernel extent 9"),
    ("x.conv(4, 3) +", "bad.py:6: SyntaxError: invalid syntax"),
    ("undefined_name", "bad.py:6: NameError: name 'undefined_name' is not defined"),
])
def test_mistakes_in_a_python_model_name_its_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.py"
    path.write_text("from frontends.builder import Builder\n\n\ndef build():\n"
                    "    b = Builder('bad'); x = b.input('image', (3, 8, 8))\n"
                    f"    y = {line}\n"
                    "    return b.build(y)\n")
    assert one_line_error(cnncomp("summary", path), message).startswith(f"cnncomp: error: {path}:6: ")


def test_debug_shows_the_traceback(tmp_path):
    result = cnncomp("--debug", "summary", tmp_path / "nope.py")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("args", [["summary", LENET, "--batch", "0"], ["frobnicate"]])
def test_usage_errors_exit_non_zero(args):
    result = cnncomp(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_help_and_version():
    assert cnncomp("--help").returncode == 0
    assert "summary" in cnncomp("summary", "--help").stdout
    assert cnncomp("--version").stdout.startswith("cnncomp ")


def test_console_script_is_installed():
    result = subprocess.run(["cnncomp", "summary", LENET, "--json"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and json.loads(result.stdout)["params"] == 61_706
