"""`cnncomp bench` through the real entry point: JSON records with exactly the documented keys and figures that agree
with each other and the MAC count, peers by name, the table with each row's spread, `--threads` from the command
line to `cnncomp.compile`, the progress bar, and bad command lines. Nothing here asserts a speed: the machine is
shared."""

import json
import os
import pty
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from cnncomp import api, plugins
from cnncomp.bench import RECORD_KEYS, Job, worker
from cnncomp.driver import load_model
from cnncomp.summary import summarize

ROOT = Path(__file__).parents[2]


def cnncomp_cli(*args, stderr=None):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=stderr is None,
                          stderr=stderr, text=True, cwd=ROOT, timeout=900)


def assert_one_line_error(result, message):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncomp: error: "), result.stderr
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def records():
    result = cnncomp_cli("bench", "lenet5", "-b", "reference", "--batch", "1,3", "--repeat", "3", "--peers", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_records_have_exactly_the_documented_keys(records):
    rows, _ = records
    assert RECORD_KEYS == ("model", "backend", "batch", "threads", "median_ms", "min_ms", "max_ms", "images_per_s",
                           "gflops", "peak_fraction", "compile_cold_s", "compile_warm_s", "peak_rss_mb")
    assert all(tuple(row) == RECORD_KEYS for row in rows)


def test_every_backend_and_peer_at_every_batch(records):
    rows, stderr = records
    peers = [p for p in ("torch", "onnxruntime") if p in plugins.available(plugins.BACKENDS)]
    expected = {("lenet5", backend, batch) for backend in ["reference", *peers] for batch in (1, 3)}
    assert {(row["model"], row["backend"], row["batch"]) for row in rows} == expected
    for peer in ("torch", "onnxruntime"):
        if peer not in peers:
            assert f"peer {peer} skipped: no backend of that name is registered" in stderr
    # Progress: a line per job, naming it, as it starts.
    jobs = [line for line in stderr.splitlines() if line.startswith("cnncomp: bench ")]
    assert jobs[0] == f"cnncomp: bench 1/{len(jobs)}: lenet5 on reference, batch 1"
    assert len(jobs) == 2 * (1 + len(peers))


def test_figures_agree_with_each_other_and_the_mac_count(records):
    rows, _ = records
    macs = summarize(load_model("lenet5", structure_only=True))["macs"]
    assert macs == 416_520
    peaks = set()
    for row in rows:
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert row["threads"] is None  # all cores, as no --threads was given
        assert row["images_per_s"] == pytest.approx(row["batch"] / (row["median_ms"] / 1e3))
        assert row["gflops"] == pytest.approx(2 * macs * row["batch"] / (row["median_ms"] / 1e3) / 1e9)
        assert row["compile_cold_s"] > 0 and row["compile_warm_s"] > 0 and row["peak_rss_mb"] > 10
        peaks.add(round(row["gflops"] / row["peak_fraction"], 6))
    assert len(peaks) == 1  # one measured matmul rate divides every row


def test_numba_cpu_compiles_cold_then_warm_from_the_filled_cache():
    result = cnncomp_cli("bench", "edge_detect", "--repeat", "2", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert (row["model"], row["backend"], row["batch"]) == ("edge_detect", "numba-cpu", 1)
    assert row["compile_cold_s"] > 0 and row["compile_warm_s"] > 0 and row["median_ms"] > 0


def test_the_table_shows_ratios_to_the_peers():
    result = cnncomp_cli("bench", "lenet5", "-b", "reference", "--repeat", "2", "--peers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("numpy float32 matmul peak: ")
    assert lines[0].endswith("2 timed runs after one warm-up; threads: all cores")
    assert lines[2] == "lenet5: 0.4M MACs per image"
    header = lines[3].split()
    assert header[:8] == ["backend", "batch", "min", "ms", "median", "ms", "max", "ms"]
    assert "torch" in header and header[-2:] == ["peak", "MB"]
    torch_row = next(line.split() for line in lines[4:] if line.startswith("torch"))
    assert float(torch_row[2]) <= float(torch_row[3]) <= float(torch_row[4])  # min, median, max
    assert torch_row[8] == "1"  # the "x torch" column, after the eight of backend to % peak: torch against itself


def test_threads_are_recorded_and_shown():
    result = cnncomp_cli("bench", "lenet5", "-b", "reference", "--repeat", "2", "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["threads"] == 1 and 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    result = cnncomp_cli("bench", "lenet5", "-b", "reference", "--repeat", "1", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].endswith("threads: 2")


@pytest.mark.parametrize("threads", [None, 1])
def test_the_worker_compiles_with_the_jobs_threads(monkeypatch, tmp_path, threads):
    """The measuring process hands the job's `threads` to `cnncomp.compile`, which passes it to the backend."""
    seen = []

    def compile_(*args, **kwargs):
        seen.append(kwargs["threads"])
        return real_compile(*args, **kwargs)

    real_compile = api.compile
    monkeypatch.setattr(api, "compile", compile_)
    job = Job("lenet5", "reference", 1, 3, 1, threads=threads)
    result = worker({**asdict(job), "cache_dir": str(tmp_path), "timed": True})
    assert seen == [threads] and len(result["seconds"]) == 1


def test_progress_on_a_terminal():
    controller, terminal = pty.openpty()
    with os.fdopen(terminal, "w") as stderr:
        result = cnncomp_cli("bench", "lenet5", "-b", "reference", "--batch", "1,2", "--repeat", "1", stderr=stderr)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert result.returncode == 0
    assert "cnncomp: bench 2/2: lenet5 on reference, batch 2" in drawn.decode()


@pytest.mark.parametrize("args,message", [
    (["lenet55"], "lenet55: no such file or zoo model"),
    (["lenet5", "-b", "tpu"], "unknown backend 'tpu'"),
    (["lenet5", "--weights", "missing.npz"], "missing.npz: no such weights file"),
])
def test_bad_command_lines_fail_in_one_line(args, message):
    assert_one_line_error(cnncomp_cli("bench", *args, "--repeat", "1", "--json"), message)


@pytest.mark.parametrize("threads", ["0", "two"])
def test_threads_must_be_a_positive_integer(threads):
    result = cnncomp_cli("bench", "lenet5", "--threads", threads, "--json")
    assert result.returncode == 2 and "--threads: expected a positive integer" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_the_readme_benchmark():
    """`cnncomp bench resnet18 lenet5 --peers --json`, as the README shows it."""
    result = cnncomp_cli("bench", "resnet18", "lenet5", "--peers", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert {row["model"] for row in rows} == {"resnet18", "lenet5"}
    assert {"numba-cpu", "torch"} <= {row["backend"] for row in rows}
