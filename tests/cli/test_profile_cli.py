"""`cnncomp profile` through the real entry point: a row per node that ran, slowest first, shares that sum to 100%,
GFLOP/s that agree with the node's MACs and time, the algorithm numba-cpu chose, the kernels' sum against the
whole call, the same rows as JSON, artifacts, and bad command lines. Nothing here asserts a speed: the machine is
shared."""

import json

import pytest

import cnncomp
from cnncomp.summary import node_macs
from tests.helpers import assert_one_line_error, cnncomp_cli

REPEAT = 3
# A 3x3 conv over 16 channels on a 24x24 map: numba-cpu's resolve picks Winograd F(4x4, 3x3).
WINOGRAD_MODEL = """model winograd_layer(size = 24)
input image: 16 x size x size
output y = image -> conv(16, 3, padding=same) -> relu
"""


def table_rows(stdout: str) -> tuple[list[dict], list[str]]:
    """The table's rows (node, kernel, ms, percent, gflops, algorithm) and its three totals lines."""
    lines = stdout.splitlines()
    assert lines[1].split() == ["node", "kernel", "ms", "%", "GFLOP/s", "algorithm"], lines[1]
    end = next(index for index, line in enumerate(lines) if line.startswith("sum ("))
    rows = []
    for line in lines[2:end]:
        node, kernel, ms, percent, gflops, algorithm = line.split(maxsplit=5)
        rows.append({"node": node, "kernel": kernel, "ms": float(ms), "percent": float(percent),
                     "gflops": None if gflops == "-" else float(gflops), "algorithm": algorithm})
    return rows, lines[end:]


@pytest.fixture(scope="module")
def lenet():
    """LeNet-5 as `profile` compiles it by default (-O3, batch 1): the nodes that run and their MACs."""
    graph = cnncomp.compile("lenet5", opt_level=3).graph
    return {node.name: node_macs(graph, node) for node in graph.nodes if node.op != "input"}


def test_the_table_has_a_row_per_node_slowest_first_with_shares_rates_and_totals(lenet):
    result = cnncomp_cli("profile", "lenet5", "--repeat", REPEAT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("lenet5 on numba-cpu, -O3, image 1x1x32x32 (random)"), result.stdout
    rows, totals = table_rows(result.stdout)
    assert sorted(row["node"] for row in rows) == sorted(lenet)
    times = [row["ms"] for row in rows]
    assert times == sorted(times, reverse=True)
    assert abs(sum(row["percent"] for row in rows) - 100) <= 0.05 * len(rows) + 1e-9  # each rounded to 0.1
    for row in rows:
        macs = lenet[row["node"]]
        assert (row["gflops"] is None) == (macs == 0), row
        if macs and row["ms"] >= 0.01:  # ms is printed to 0.001, GFLOP/s to 0.1
            assert row["gflops"] == pytest.approx(2 * macs / row["ms"] / 1e6, rel=0.1, abs=0.1), row
    by_node = {row["node"]: row for row in rows}
    assert by_node["c1"]["algorithm"] == "im2col+gemm" and by_node["f6"]["algorithm"] == "gemv"
    assert by_node["s2"]["algorithm"] == "-"
    kernels, end_to_end, outside = totals
    assert kernels.startswith(f"sum ({len(rows)} nodes)")
    assert float(kernels.split()[3]) == pytest.approx(sum(times), abs=0.001 * len(rows))
    assert end_to_end.startswith(f"end-to-end call (median of {REPEAT})")
    assert float(end_to_end.split()[-1]) > 0
    assert outside.startswith("outside the kernels") and outside.endswith("% of the call")
    assert float(outside.split()[3]) == pytest.approx(float(end_to_end.split()[-1]) - float(kernels.split()[3]),
                                                      abs=0.002)


def test_json_has_the_same_rows_and_totals_and_nothing_else_on_stdout(lenet):
    result = cnncomp_cli("profile", "lenet5", "--repeat", REPEAT, "--json")
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert {key: profile[key] for key in ("model", "backend", "opt_level", "threads", "inputs", "repeat")} == {
        "model": "lenet5", "backend": "numba-cpu", "opt_level": 3, "threads": None,
        "inputs": [{"name": "image", "shape": [1, 1, 32, 32]}], "repeat": REPEAT}
    rows = profile["rows"]
    assert {row["node"]: row["macs"] for row in rows} == lenet
    assert [row["ms"] for row in rows] == sorted((row["ms"] for row in rows), reverse=True)
    assert sum(row["percent"] for row in rows) == pytest.approx(100)
    for row in rows:
        assert set(row) == {"node", "kernel", "algorithm", "ms", "percent", "macs", "gflops"}
        expected = 2 * row["macs"] / row["ms"] / 1e6 if row["macs"] else None
        assert row["gflops"] == pytest.approx(expected), row
    assert profile["kernel_ms"] == pytest.approx(sum(row["ms"] for row in rows))
    assert profile["gflops"] == pytest.approx(2 * sum(lenet.values()) / profile["kernel_ms"] / 1e6)
    assert profile["outside_ms"] == pytest.approx(profile["end_to_end_ms"] - profile["kernel_ms"])
    assert profile["end_to_end_ms"] > 0
    # The table shows the same rows: the same nodes, kernels and algorithms.
    table, _ = table_rows(cnncomp_cli("profile", "lenet5", "--repeat", REPEAT).stdout)
    assert ({(row["node"], row["kernel"], row["algorithm"] or "-") for row in rows}
            == {(row["node"], row["kernel"], row["algorithm"]) for row in table})


def test_the_algorithm_numba_cpu_chose(tmp_path):
    model = tmp_path / "winograd_layer.cnn"
    model.write_text(WINOGRAD_MODEL)
    result = cnncomp_cli("profile", model, "--repeat", 1, "--json")
    assert result.returncode == 0, result.stderr
    ((row,),) = [json.loads(result.stdout)["rows"]]
    assert row["macs"] == 24 * 24 * 16 * 16 * 9  # the conv, its relu fused
    assert row["algorithm"] == "winograd F(4x4,3x3)" and row["kernel"].startswith("conv2d_winograd_f4x4")
    # edge_detect on RGB filters each channel apart: a depthwise convolution, computed directly.
    result = cnncomp_cli("profile", "edge_detect", "--param", "channels=3", "--repeat", 1, "--json")
    assert result.returncode == 0, result.stderr
    ((row,),) = [json.loads(result.stdout)["rows"]]
    assert row["algorithm"] == "depthwise direct"


def test_an_artifact_at_another_batch_and_another_backend(tmp_path):
    artifact = tmp_path / "lenet5.cnnx"
    assert cnncomp_cli("compile", "lenet5", "-o", artifact).returncode == 0
    result = cnncomp_cli("profile", artifact, "--batch", 2, "--repeat", REPEAT, "--json")
    assert result.returncode == 0, result.stderr
    profile = json.loads(result.stdout)
    assert profile["opt_level"] == 2 and profile["inputs"] == [{"name": "image", "shape": [2, 1, 32, 32]}]
    assert {row["node"] for row in profile["rows"]} >= {"c1", "c3", "c5", "f6", "logits"}
    # The reference backend runs operation by operation: a row per operation, no algorithm to choose.
    result = cnncomp_cli("profile", artifact, "-b", "reference", "--repeat", 1, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)["rows"]
    assert {row["kernel"] for row in rows} >= {"conv2d", "dense"} and all(row["algorithm"] is None for row in rows)


def test_bad_command_lines_are_one_line(tmp_path):
    assert_one_line_error(cnncomp_cli("profile", "no_such_model"), "no_such_model: no such file or zoo model")
    assert_one_line_error(cnncomp_cli("profile", "lenet5", "-b", "no_such_backend"), "unknown backend")
    artifact = tmp_path / "lenet5.cnnx"
    assert cnncomp_cli("compile", "lenet5", "-o", artifact).returncode == 0
    assert_one_line_error(cnncomp_cli("profile", artifact, "--param", "classes=3"), "an artifact is compiled already")
    result = cnncomp_cli("profile", "lenet5", "--repeat", 0)
    assert result.returncode == 2 and "--repeat: expected a positive integer" in result.stderr
    assert "Traceback" not in result.stderr
