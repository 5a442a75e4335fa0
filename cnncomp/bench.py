"""`cnncomp bench`: latency, throughput, compile time and memory of models on backends, against PyTorch and ONNX
Runtime on the same graph and weights.

Each (model, backend, batch) is measured in two fresh processes that share a new, empty kernel cache: the first
compiles with the cache empty (compile_cold_s), the second compiles again with it filled (compile_warm_s), then
warms up (runs the model for WARM_UP_SECONDS, at least once: thread pools, caches and branch predictors settle, as
in a program that calls a model over and over), then runs it `repeat` times timed, and reports the fastest, median
and slowest run (a wide spread shows an unstable measurement) and its peak resident memory (peak_rss_mb: the whole
process, Python and the libraries included). `threads` is how many cores one run uses (None: all of them). Our
backends run the graph after `-O` (default 3); the peers (backends named `torch` and `onnxruntime`) run it as
written (-O0), as their frameworks would. GFLOP/s count 2 FLOPs per MAC of the model; peak_fraction divides them by
this machine's numpy float32 matmul rate (2048 x 2048, all cores), measured at start.

    python -m cnncomp.bench SPEC_JSON      # the worker process; prints one JSON record
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from cnncomp import plugins
from cnncomp.errors import CnnCompError

PEERS = ("torch", "onnxruntime")
RECORD_KEYS = ("model", "backend", "batch", "threads", "median_ms", "min_ms", "max_ms", "images_per_s", "gflops",
               "peak_fraction", "compile_cold_s", "compile_warm_s", "peak_rss_mb")
MATMUL_SIZE = 2048
# Ten runs after a single warm-up still read LeNet-5 (0.07 ms a call) at 0.13 ms on numba-cpu.
WARM_UP_SECONDS = 0.2


class BenchError(CnnCompError):
    """A benchmark that could not be run."""


@dataclass(frozen=True)
class Job:
    """One measurement: a model (file or zoo name) on a backend at a batch size, each run on `threads` cores
    (None: all)."""

    model: str
    backend: str
    batch: int
    opt_level: int
    repeat: int
    params: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    threads: int | None = None


def matmul_peak_gflops(size: int = MATMUL_SIZE, repeat: int = 5) -> float:
    """The best of `repeat` float32 size x size matrix products with numpy, in GFLOP/s."""
    a = np.random.default_rng(0).standard_normal((size, size)).astype(np.float32)
    a @ a
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def peers_available() -> tuple[list[str], list[str]]:
    """The peer backends that are registered, and a note for each that is not."""
    registered = plugins.available(plugins.BACKENDS)
    found = [peer for peer in PEERS if peer in registered]
    notes = [f"peer {peer} skipped: no backend of that name is registered" for peer in PEERS if peer not in registered]
    return found, notes


def measure(job: Job, macs: int, peak_gflops: float) -> dict[str, Any]:
    """One record (RECORD_KEYS): compile cold and warm in fresh processes over a new kernel cache, then time."""
    with tempfile.TemporaryDirectory(prefix="cnncomp-bench-") as cache_dir:
        cold = _run_worker(job, cache_dir, timed=False)
        warm = _run_worker(job, cache_dir, timed=True)
    seconds = warm["seconds"]
    median = statistics.median(seconds)
    gflops = 2 * macs / median / 1e9
    return {
        "model": job.model, "backend": job.backend, "batch": job.batch, "threads": job.threads,
        "median_ms": median * 1e3, "min_ms": min(seconds) * 1e3, "max_ms": max(seconds) * 1e3,
        "images_per_s": job.batch / median,
        "gflops": gflops, "peak_fraction": gflops / peak_gflops,
        "compile_cold_s": cold["compile_s"], "compile_warm_s": warm["compile_s"], "peak_rss_mb": warm["peak_rss_mb"],
    }


def _run_worker(job: Job, cache_dir: str, timed: bool) -> dict[str, Any]:
    spec = json.dumps({**asdict(job), "cache_dir": cache_dir, "timed": timed})
    done = subprocess.run([sys.executable, "-m", "cnncomp.bench", spec], capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else {}
    except ValueError:
        result = {}
    if done.returncode != 0 or "error" in result or not result:
        detail = result.get("error") or (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"{job.model} on {job.backend} at batch {job.batch}: {detail}")
    return result


def random_inputs(shapes: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
    """Standard-normal float32 inputs of these shapes, the same every time (seeded): what `bench` and `profile`
    time a model on."""
    rng = np.random.default_rng(0)
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """In the worker process: compile (timed), then, if `timed`, warm up and time `repeat` runs."""
    import resource

    from cnncomp import api

    graph = api.load_model(spec["model"], weights=spec["weights"], batch=spec["batch"], **spec["params"])
    opt_level = 0 if spec["backend"] in PEERS else spec["opt_level"]
    start = time.perf_counter()
    model = api.compile(graph, spec["backend"], opt_level, batch=None, threads=spec["threads"],
                        options={"cache_dir": spec["cache_dir"], "progress": False})
    result: dict[str, Any] = {"compile_s": time.perf_counter() - start}
    if spec["timed"]:
        inputs = random_inputs(model.input_shapes)
        warm_until = time.perf_counter() + WARM_UP_SECONDS
        model.run(inputs)
        while time.perf_counter() < warm_until:
            model.run(inputs)
        seconds = []
        for _ in range(spec["repeat"]):
            start = time.perf_counter()
            model.run(inputs)
            seconds.append(time.perf_counter() - start)
        result["seconds"] = seconds
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return result


def table(model: str, macs_per_image: int, records: Sequence[dict[str, Any]], peers: Sequence[str]) -> str:
    """The records of one model as a table; `x PEER` is the peer's median latency over the row's (above 1: the
    row is faster)."""
    peer_median = {(r["backend"], r["batch"]): r["median_ms"] for r in records if r["backend"] in peers}
    header = ["backend", "batch", "min ms", "median ms", "max ms", "img/s", "GFLOP/s", "% peak",
              *(f"x {p}" for p in peers), "cold s", "warm s", "peak MB"]
    rows = []
    for r in records:
        ratios = [f"{peer_median[(p, r['batch'])] / r['median_ms']:.3g}" if (p, r["batch"]) in peer_median else "-"
                  for p in peers]
        rows.append([r["backend"], str(r["batch"]), f"{r['min_ms']:.2f}", f"{r['median_ms']:.2f}",
                     f"{r['max_ms']:.2f}", f"{r['images_per_s']:.1f}", f"{r['gflops']:.1f}",
                     f"{100 * r['peak_fraction']:.1f}%", *ratios, f"{r['compile_cold_s']:.2f}",
                     f"{r['compile_warm_s']:.2f}", f"{r['peak_rss_mb']:.0f}"])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"{model}: {macs_per_image / 1e6:,.1f}M MACs per image"]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths, strict=True))).rstrip())
    return "\n".join(lines)


def _main(argv: Sequence[str]) -> int:
    try:
        result = worker(json.loads(argv[0]))
    except CnnCompError as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
