"""numba-cpu's tuning records (backends/numba_cpu/tuning.py): compile at -O3 runs the algorithm the record of this
CPU and thread count names for a layer, and still computes what the reference does; a record of another CPU or
thread count, or a corrupt one (a one-line warning), leaves the defaults; -O2 ignores the record; `tune` writes
a record that -O3 then follows. Nothing here asserts a speed: the machine is shared."""

import json
from pathlib import Path

import numpy as np
import pytest

import cnncomp
from backends import numba_cpu
from backends.numba_common import default_cache_dir
from backends.numba_cpu import tuning
from backends.numba_cpu.kernels import KernelCache
from cnncomp.pipeline import optimize
from tests.helpers import assert_same_as_reference

THREADS = 2
# How the profile names the algorithms (numba_cpu.algorithm).
WINOGRAD2, WINOGRAD4 = "winograd F(2x2,3x3)", "winograd F(4x4,3x3)"
# Two 3x3 convs over 16 channels on a 12x12 map: resolve picks Winograd F(2x2, 3x3) for both.
TINY = """model tiny(size = 12)
input image: 16 x size x size
output y = image -> conv(16, 3, padding=same) -> relu -> conv(8, 3, padding=same)
"""


def temporary_tuning_home(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """CNNCOMP_CACHE_DIR set to `folder`, so the tuning record is a fresh one there, with the kernel cache of the
    real cache directory linked in (compiled kernels stay warm between test runs). Returns the record's path."""
    kernels = KernelCache(default_cache_dir()).directory
    kernels.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("CNNCOMP_CACHE_DIR", str(folder))
    (folder / kernels.name).symlink_to(kernels, target_is_directory=True)
    return tuning.record_path()


@pytest.fixture
def record(tmp_path, monkeypatch):
    return temporary_tuning_home(tmp_path, monkeypatch)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny model's -O3 graph (random weights, seeded by the frontend) and its conv2d layers' keys."""
    path = tmp_path_factory.mktemp("model") / "tiny.cnn"
    path.write_text(TINY)
    graph, _ = optimize(cnncomp.load_model(path, batch=1), 3)
    return graph, {node.name: tuning.layer_key(graph, node) for node in graph.nodes if node.op == "conv2d"}


def write_record(path: Path, machines: list[dict]) -> None:
    path.write_text(json.dumps({"format": tuning.FORMAT, "machines": machines}))


def algorithms(executable, graph) -> dict[str, str]:
    """Each conv2d node's algorithm as the executable's profile reports it."""
    inputs = {node.name: np.zeros(node.type.shape, np.float32) for node in graph.inputs}
    return {row["node"]: row["algorithm"] for row in executable.profile(inputs)
            if graph.node(row["node"]).op == "conv2d"}


def conv_names(graph) -> list[str]:
    return [node.name for node in graph.nodes if node.op == "conv2d"]


def test_the_tiny_model_has_two_winograd_layers_by_default(tiny):
    graph, keys = tiny
    executable = numba_cpu.compile(graph, {"threads": THREADS})
    assert list(algorithms(executable, graph).values()) == [WINOGRAD2] * 2
    assert len(set(keys.values())) == 2


def test_o3_runs_the_recorded_choice_and_matches_the_reference(tiny, record):
    graph, keys = tiny
    first, second = conv_names(graph)
    write_record(record, [{"cpu": tuning.cpu_id(), "threads": THREADS,
                           "layers": {keys[first]: {"algorithm": "im2col"}, keys[second]: {"algorithm": "direct"}}}])
    executable = assert_same_as_reference(graph, numba_cpu, options={"threads": THREADS, "opt_level": 3})
    assert algorithms(executable, graph) == {first: "im2col+gemm", second: "direct"}
    untuned = assert_same_as_reference(graph, numba_cpu, options={"threads": THREADS, "opt_level": 2})
    assert set(algorithms(untuned, graph).values()) == {WINOGRAD2}


def test_the_api_compiles_at_o3_with_the_record(tiny, record):
    graph, keys = tiny
    first, second = conv_names(graph)
    write_record(record, [{"cpu": tuning.cpu_id(), "threads": THREADS,
                           "layers": {keys[first]: {"algorithm": "winograd4"}}}])
    rows = {level: {row["node"]: row["algorithm"]
                    for row in cnncomp.compile(graph, opt_level=level, threads=THREADS).profile(
                        np.zeros(graph.inputs[0].type.shape, np.float32), repeat=1)}
            for level in (2, 3)}
    assert rows[3][first] == WINOGRAD4 and rows[3][second] == WINOGRAD2
    assert rows[2][first] == WINOGRAD2


@pytest.mark.parametrize("machine", [{"cpu": "Some Other CPU (flags 000000000000)", "threads": THREADS},
                                     {"threads": THREADS + 1}], ids=["another cpu", "another thread count"])
def test_a_record_of_another_machine_is_ignored(tiny, record, machine):
    graph, keys = tiny
    layers = {key: {"algorithm": "im2col"} for key in keys.values()}
    write_record(record, [{"cpu": tuning.cpu_id(), "threads": THREADS, **machine, "layers": layers}])
    executable = numba_cpu.compile(graph, {"threads": THREADS, "opt_level": 3})
    assert set(algorithms(executable, graph).values()) == {WINOGRAD2}


def test_an_entry_naming_an_algorithm_that_cannot_compute_the_layer_is_ignored(tiny, record):
    graph, keys = tiny
    first = conv_names(graph)[0]
    write_record(record, [{"cpu": tuning.cpu_id(), "threads": THREADS,
                           "layers": {keys[first]: {"algorithm": "pointwise"}}}])
    assert tuning.tuned_algorithms(graph, THREADS) == {}


@pytest.mark.parametrize("text", ["{not json", "[]", '{"format": 99, "machines": []}',
                                  '{"format": 1, "machines": [{"cpu": "x"}]}', "\udcff"],
                         ids=["not json", "a list", "another format", "a machine without layers", "not utf-8"])
def test_a_corrupt_record_is_a_one_line_warning_and_the_defaults(tiny, record, capfd, text):
    graph, _ = tiny
    record.write_bytes(text.encode("utf-8", "surrogateescape"))
    executable = numba_cpu.compile(graph, {"threads": THREADS, "opt_level": 3})
    assert set(algorithms(executable, graph).values()) == {WINOGRAD2}
    lines = capfd.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncomp: warning: ") and "corrupt tuning record" in lines[0]


def test_tune_writes_a_record_that_o3_follows(tiny, record):
    graph, keys = tiny
    seen = []
    report = tuning.tune(graph, {"threads": THREADS}, on_layer=lambda done, total, layer: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)]
    assert report["record"] == str(record) and report["threads"] == THREADS and report["cpu"] == tuning.cpu_id()
    for layer in report["layers"]:
        # Every algorithm that applies to a 3x3, stride-1 conv was timed, the default among them.
        assert set(layer["measured_ms"]) == {"direct", "im2col", "winograd2", "winograd4"}, layer
        assert layer["rejected"] == {} and layer["default"] == "winograd2"
        assert layer["chosen"] in layer["measured_ms"]
    stored = json.loads(record.read_text())
    assert stored["format"] == tuning.FORMAT
    [machine] = stored["machines"]
    assert machine["cpu"] == tuning.cpu_id() and machine["threads"] == THREADS
    assert {key: entry["algorithm"] for key, entry in machine["layers"].items()} == {
        layer["layer"]: layer["chosen"] for layer in report["layers"]}
    chosen = {layer["nodes"][0]: layer["chosen"] for layer in report["layers"]}
    assert tuning.tuned_algorithms(graph, THREADS) == chosen
    assert_same_as_reference(graph, numba_cpu, options={"threads": THREADS, "opt_level": 3})


def test_a_second_tuner_keeps_the_first_ones_layers(tiny, record):
    """Writers merge: layers of another model, thread count or CPU already in the record stay."""
    graph, keys = tiny
    other = {"cpu": "Some Other CPU (flags 000000000000)", "threads": 64,
             "layers": {"conv2d x": {"algorithm": "im2col"}}}
    write_record(record, [other])
    tuning._store(tuning.cpu_id(), THREADS, {"conv2d y": {"algorithm": "direct", "measured_ms": {"direct": 1.0}}})
    machines = json.loads(record.read_text())["machines"]
    assert machines[0] == other
    assert machines[1]["layers"] == {"conv2d y": {"algorithm": "direct", "measured_ms": {"direct": 1.0}}}
