"""benchmarks/real_use.py: a short run on LeNet-5 gives a record for every model, backend and condition, with figures
that agree with each other; the background load always stops; the targets table reads the right records. Nothing
here asserts a speed: the machine is shared."""

import importlib.util
import json
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest

from cnncomp import plugins

ROOT = Path(__file__).parents[1]
SCRIPT = ROOT / "benchmarks" / "real_use.py"
CONDITIONS = ["busy-1", "after-matmul", "after-ort", "callers-2"]


def load_script():
    spec = importlib.util.spec_from_file_location("real_use", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run():
    command = [sys.executable, str(SCRIPT), "--models", "lenet5", "--repeat", "2", "--conditions", *CONDITIONS,
               "--json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_model_backend_and_condition_is_measured(run):
    peers = [p for p in ("torch", "onnxruntime") if p in plugins.available(plugins.BACKENDS)]
    assert run["backends"] == ["numba-cpu", *peers]
    assert run["conditions"] == ["idle", *CONDITIONS]  # the baseline is always measured, and first
    expected = {("lenet5", backend, condition) for backend in run["backends"] for condition in run["conditions"]}
    records = run["records"]
    assert len(records) == len(expected)
    assert {(r["model"], r["backend"], r["condition"]) for r in records} == expected


def test_figures_agree_with_each_other(run):
    for r in run["records"]:
        assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["callers"] == (2 if r["condition"] == "callers-2" else 1)
        assert r["calls"] == 2 * r["callers"]
        assert r["images_per_s"] == pytest.approx(r["callers"] * 1e3 / r["median_ms"])  # batch 1
    idle = {r["backend"]: r["median_ms"] for r in run["records"] if r["condition"] == "idle"}
    for r in run["records"]:
        assert r["slowdown"] == pytest.approx(r["median_ms"] / idle[r["backend"]])


def test_the_run_says_where_and_how_it_ran(run):
    assert run["machine"]["cores"] >= 1 and run["machine"]["cpu"]
    assert run["numba_threading_layer"] in ("tbb", "omp", "workqueue")  # numba-cpu's parallel kernels ran
    assert "--models lenet5 --repeat 2" in run["command"] and run["date"] and run["batch"] == 1


@pytest.mark.parametrize("fail", [False, True])
def test_busy_processes_stop_also_on_errors(fail):
    real_use = load_script()
    with pytest.raises(RuntimeError) if fail else nullcontext(), real_use.busy_cores(2) as processes:
        assert len(processes) == 2 and all(p.poll() is None for p in processes)
        if fail:
            raise RuntimeError("a failed measurement")
    assert all(p.poll() is not None for p in processes)


def test_the_targets_table_reads_the_right_records():
    real_use = load_script()

    def record(backend, condition, median_ms, images_per_s, slowdown):
        return {"model": "m", "backend": backend, "condition": condition, "median_ms": median_ms,
                "images_per_s": images_per_s, "slowdown": slowdown}

    records = [record("numba-cpu", "idle", 10.0, 100.0, 1.0), record("onnxruntime", "idle", 8.0, 125.0, 1.0),
               record("numba-cpu", "busy-2", 30.0, 33.0, 3.0), record("onnxruntime", "busy-2", 12.0, 80.0, 1.5),
               record("numba-cpu", "after-matmul", 20.0, 50.0, 2.0),
               record("numba-cpu", "callers-2", 15.0, 150.0, 1.5)]
    header, rows = real_use.target_rows(records, ["m"])
    assert dict(zip(header, rows[0], strict=True)) == {
        "model": "m", "numba-cpu idle ms": "10.00", "busy-2 x numba-cpu": "3.00", "busy-2 x onnxruntime": "1.50",
        "after-matmul x numba-cpu": "2.00", "after-ort x numba-cpu": "-", "2 callers img/s / 1: numba-cpu": "1.50",
        "2 callers img/s / 1: onnxruntime": "-"}
