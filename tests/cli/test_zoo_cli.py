"""`cnncomp zoo`, zoo names and .cnn files through the real entry point; --param; DSL errors on the command line."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def cnncomp(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def test_zoo_lists_every_model_with_input_params_and_macs():
    result = cnncomp("zoo", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert len(rows) == 27
    assert rows["mobilenet_v2"]["params"] == 3_504_872
    assert rows["vgg16"]["params"] == 138_357_544
    assert rows["vgg16"]["inputs"] == [{"name": "image", "shape": [1, 3, 224, 224]}]  # as summary --json gives it
    assert rows["unet"]["inputs"][0]["shape"] == [1, 1, 572, 572] and rows["lenet5"]["macs"] == 416_520
    assert "Xception" in rows["xception"]["description"]
    table = cnncomp("zoo")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["Name", "Input", "Params", "MACs", "Description"]
    assert any(line.startswith("resnet152") and "60,192,808" in line for line in lines)


def test_summary_of_a_zoo_name():
    result = cnncomp("summary", "resnet50", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["model"], summary["params"]) == ("resnet50", 25_557_032)
    assert summary["layers"][0]["name"] == "conv1"


def test_param_overrides_a_model_parameter():
    summary = json.loads(cnncomp("summary", "lenet5", "--param", "classes=3", "--json").stdout)
    assert summary["outputs"] == [{"name": "logits", "shape": [1, 3]}]
    assert summary["params"] == 61_706 - 84 * 10 - 10 + 84 * 3 + 3


def test_an_unknown_param_is_one_diagnostic_without_traceback():
    result = cnncomp("summary", "lenet5", "--param", "clases=3")
    assert result.returncode == 1 and result.stdout == ""
    first = result.stderr.splitlines()[0]
    assert first.startswith("cnncomp: error: ") and first.endswith(
        "lenet5.cnn:2:7: model lenet5 has no parameter 'clases'; did you mean classes? (parameters: classes)")
    assert "Traceback" not in result.stderr


def test_a_misspelt_zoo_name_suggests_the_right_one():
    result = cnncomp("summary", "resnt50")
    assert result.returncode == 1
    assert result.stderr.startswith("cnncomp: error: resnt50: no such file or zoo model; did you mean resnet50, ")


def test_a_cnn_file_and_its_mistakes(tmp_path):
    model = tmp_path / "tiny.cnn"
    model.write_text("model tiny(classes = 4)\ninput image: 3x16x16\n"
                     "output logits = image -> conv(8, 3) -> relu -> global_avg_pool -> flatten -> dense(classes)\n")
    summary = json.loads(cnncomp("summary", model, "--json").stdout)
    assert summary["model"] == "tiny" and summary["params"] == 8 * 27 + 8 + 8 * 4 + 4
    broken = tmp_path / "broken.cnn"
    broken.write_text("model broken\ninput image: 3x16x16\ny = image -> conv(8, 3, strides=2)\n"
                      "output z = y -> relu -> convv\n")
    result = cnncomp("summary", broken)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == (f"cnncomp: error: {broken}:3:25: conv has no argument 'strides'; did you mean stride? "
                        "(arguments: x, out_channels, kernel, stride, padding, dilation, groups, bias, residual, act, "
                        "affine, alpha, weight)")
    assert lines[1:3] == ["    y = image -> conv(8, 3, strides=2)", "                            ^^^^^^^"]
    assert lines[3].startswith(f"{broken}:4:25: unknown op or block 'convv'")
    assert lines[-1] == f"{broken}: 2 errors"


def test_a_path_that_exists_wins_over_a_zoo_name(tmp_path):
    (tmp_path / "lenet5").mkdir()
    result = cnncomp("summary", "lenet5", cwd=tmp_path)
    assert result.returncode == 1 and "lenet5: not a file" in result.stderr
