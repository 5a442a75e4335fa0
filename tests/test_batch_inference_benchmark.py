"""benchmarks/batch_inference.py: a short run gives a record per model and configuration with consistent figures, and
Dask's overhead per batch. Nothing here asserts a speed: the machine is shared."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed", reason="the dask extra is not installed: pip install 'cnncomp[dask]'")

ROOT = Path(__file__).parents[1]


def test_a_short_run_reports_every_configuration():
    command = [sys.executable, str(ROOT / "benchmarks" / "batch_inference.py"), "--models", "lenet5",
               "--configurations", "one process", "LocalCluster 2x1", "--repeat", "1", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert [(r["model"], r["configuration"]) for r in run["records"]] == [("lenet5", "one process"),
                                                                          ("lenet5", "LocalCluster 2x1")]
    for record in run["records"]:
        assert record["inputs"] == 2000 and record["batch"] == 64 and record["runs"] == 1
        assert 0 < record["min_images_per_s"] <= record["median_images_per_s"] <= record["max_images_per_s"]
    assert run["records"][0]["cluster_start_s"] == 0 and run["records"][1]["cluster_start_s"] > 0
    overhead = run["dask_overhead_per_batch"]
    assert overhead["batches"] == 200 and overhead["min_ms"] <= overhead["median_ms"] <= overhead["max_ms"]
