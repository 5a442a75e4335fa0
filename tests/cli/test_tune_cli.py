"""`cnncomp tune` through the real entry point: it writes the tuning record, prints what it chose and measured
per layer (a table, or JSON with --json), reports progress on stderr, and refuses a backend with nothing to tune
in one line. Nothing here asserts a speed: the machine is shared."""

import json

import pytest

from backends.numba_cpu import tuning
from tests.backends.test_tuning import temporary_tuning_home
from tests.helpers import assert_one_line_error, cnncomp_cli


@pytest.fixture
def record(tmp_path, monkeypatch):
    return temporary_tuning_home(tmp_path, monkeypatch)


def test_tune_json_reports_each_layer_and_writes_the_record(record):
    result = cnncomp_cli("tune", "lenet5", "--threads", 2, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"] == "lenet5" and report["batch"] == 1 and report["threads"] == 2
    assert report["backend"] == "numba-cpu" and report["cpu"] == tuning.cpu_id() and report["record"] == str(record)
    assert [layer["nodes"] for layer in report["layers"]] == [["c1"], ["c3"], ["c5"]]
    for layer in report["layers"]:
        assert set(layer["measured_ms"]) == {"direct", "im2col"}, layer  # 5x5 convs: no Winograd, no 1x1 gemm
        assert layer["chosen"] in layer["measured_ms"] and layer["default"] == "im2col"
    # Progress on stderr, a line per layer where it is not a terminal.
    assert [line.split(":")[1] for line in result.stderr.splitlines()] == [" tune 1/3", " tune 2/3", " tune 3/3"]
    [machine] = json.loads(record.read_text())["machines"]
    assert machine["threads"] == 2
    chosen = [layer["chosen"] for layer in report["layers"]]
    assert [entry["algorithm"] for entry in machine["layers"].values()] == chosen


def test_tune_prints_a_row_per_layer(record):
    result = cnncomp_cli("tune", "lenet5", "--threads", 1)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("lenet5: 3 distinct conv2d layers measured in ") and str(record) in lines[0]
    assert lines[1].split()[:3] == ["layer", "default", "chosen"]
    assert [line.split()[0] for line in lines[2:]] == ["c1", "c3", "c5"]
    assert json.loads(record.read_text())["machines"][0]["threads"] == 1


@pytest.mark.parametrize(("args", "message"), [
    (["-b", "reference"], "backend 'reference' has nothing to tune"),
    (["-b", "nosuch"], "unknown backend 'nosuch'"),
])
def test_bad_command_lines_are_one_line_errors(record, args, message):
    assert_one_line_error(cnncomp_cli("tune", "lenet5", *args), message)
    assert not record.exists()
