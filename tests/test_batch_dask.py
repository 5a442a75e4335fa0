"""Batch inference on a real Dask LocalCluster of worker processes (no mocks): a folder run on 2 workers equals
the one-process run row for row, bad inputs included; a worker killed mid-run costs nothing; `eval` over the
cluster gives the trained LeNet-5's 2.50% top-1 error on the shipped digits."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnncomp
from cnncomp import batch

pytest.importorskip("distributed", reason="the dask extra is not installed: pip install 'cnncomp[dask]'")

ROOT = Path(__file__).parents[1]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
DIGITS = ROOT / "frontends" / "zoo" / "weights" / "digits_test.npz"


def cnncomp_cli(*args):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def cluster():
    running = batch.connect(workers=2, threads_per_worker=1)
    yield running.client
    running.close()


def test_folder_on_two_workers_equals_one_process_row_for_row(tmp_path, digits):
    x, _ = digits
    folder = tmp_path / "inputs"
    folder.mkdir()
    for index, digit in enumerate(x[:30]):
        Image.fromarray(np.rint(digit[0] * 255).astype(np.uint8), mode="L").save(folder / f"{index:03d}.png")
    np.save(folder / "015-array.npy", x[30])
    (folder / "020-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00 truncated")
    np.save(folder / "025-wrong-size.npy", np.zeros((1, 28, 28), np.float32))
    common = ["run", "lenet5", "--weights", WEIGHTS, "-i", folder, "--batch", 4]
    alone = cnncomp_cli(*common, "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert alone.stdout.startswith("33 inputs, 31 done, 2 failed (see ")
    spread = cnncomp_cli(*common, "--out", tmp_path / "spread", "--workers", 2)
    assert spread.returncode == 0, spread.stderr
    assert "local cluster of 2 workers, dashboard http://127.0.0.1:" in spread.stderr
    assert spread.stdout.startswith("33 inputs, 31 done, 2 failed (see ")
    rows = (tmp_path / "alone" / "predictions.csv").read_text().splitlines()
    assert (tmp_path / "spread" / "predictions.csv").read_text().splitlines() == rows
    failed = [row for row in rows if ",failed," in row]
    assert [row.split(",")[0] for row in failed] == [str(folder / "020-corrupt.png"),
                                                     str(folder / "025-wrong-size.npy")]
    assert "expected one sample of 1x32x32" in failed[1]
    np.testing.assert_array_equal(np.load(tmp_path / "spread" / "outputs.npy"),
                                  np.load(tmp_path / "alone" / "outputs.npy"))


def test_a_worker_killed_mid_run_loses_nothing(cluster, digits):
    x, _ = digits
    model = cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS), batch=4, options={"progress": False})
    inputs = list(x[:200])
    expected = batch.run_many(model, inputs, batch=4)
    results = []
    stream = batch.iter_many(model, inputs, batch=4, client=cluster)
    results.append(next(stream))
    # Kill a worker that holds batches (running, queued, or finished and not yet fetched) by its PID.
    pids = cluster.run(os.getpid)
    held = {address for address, keys in cluster.has_what().items() if keys}
    held |= {address for address, keys in cluster.processing().items() if keys}
    victim = sorted(held)[0] if held else sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    results.extend(stream)
    assert sorted(r.index for r in results) == list(range(len(inputs)))  # each input exactly once
    for result in results:
        np.testing.assert_array_equal(result.outputs["logits"], expected[result.index].outputs["logits"])
    assert pids[victim] not in cluster.run(os.getpid).values()


def test_eval_over_the_cluster_gives_lenets_error(tmp_path):
    result = cnncomp_cli("eval", "lenet5", "--weights", WEIGHTS, "-d", DIGITS, "--workers", 2, "--batch", 32)
    assert result.returncode == 0, result.stderr
    assert "top-1 error: 2.50% (9 of 360)" in result.stdout


def test_image_folder_eval_on_the_cluster_equals_one_process(tmp_path, digits):
    x, y = digits
    for index, (digit, label) in enumerate(zip(x[:60], y[:60], strict=True)):
        target = tmp_path / "set" / str(label)
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rint(digit[0] * 255).astype(np.uint8), mode="L").save(target / f"{index:03d}.png")
    alone = cnncomp_cli("eval", "lenet5", "--weights", WEIGHTS, "-d", tmp_path / "set", "--json")
    spread = cnncomp_cli("eval", "lenet5", "--weights", WEIGHTS, "-d", tmp_path / "set", "--json", "--workers", 2)
    assert alone.returncode == 0 and spread.returncode == 0, alone.stderr + spread.stderr
    assert alone.stdout == spread.stdout
    assert '"samples": 60' in alone.stdout


def test_ctrl_c_on_the_cluster_keeps_finished_batches_and_the_rerun_resumes(tmp_path, digits):
    x, _ = digits
    folder = tmp_path / "inputs"
    folder.mkdir()
    for index in range(600):
        pixels = np.rint(x[index % len(x), 0] * 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:03d}.png")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "cnncomp", "run", "lenet5", "--weights", str(WEIGHTS), "-i", str(folder),
               "--out", str(out), "--batch", "2", "--workers", "2"]
    # Its own process group, as a terminal's Ctrl-C reaches the command and the workers it started.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    parts = out / ".parts"
    while process.poll() is None and len(list(parts.glob("*.npz"))) < 10:
        pass
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1] == "cnncomp: interrupted" and "Traceback" not in stderr, stderr
    kept = {path: path.stat().st_mtime_ns for path in parts.glob("*.npz")}
    assert f"{len(kept)} of 300 batches are done and kept in {parts}" in lines[-2]
    assert 10 <= len(kept) < 300 and not (out / "predictions.csv").exists()

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.startswith(f"600 inputs, 600 done, 0 failed, {2 * len(kept):,} from an earlier run, ")
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # finished parts were not computed again
