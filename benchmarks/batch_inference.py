"""Batch inference throughput: `cnncomp.batch.run_to_folder` (what `cnncomp run --out` runs) in one process and on
Dask, and the time Dask adds per batch.

    python benchmarks/batch_inference.py [--models lenet5 resnet18] [--repeat 3] [--json [PATH]] [--markdown]

Inputs, written to a temporary folder first: for LeNet-5 (the trained weights), 2,000 PNG digits made from the
shipped held-out digits (the 360 repeated); for ResNet-18 (random weights), 200 random 224 x 224 RGB JPEGs.
Each model is compiled once (numba-cpu, -O3, at its batch size: LeNet-5 64, ResNet-18 8) and run, on each
configuration, once untimed (workers load the artifact and compile their kernels, from this machine's kernel
cache) and then `--repeat` times into fresh output folders, timed from the first input read to the last final
file written:

    one process        no Dask: batches one after another, each call on all cores
    LocalCluster 1x2   one worker process of 2 threads (cnncomp run --workers 1 --threads-per-worker 2)
    LocalCluster 2x1   two worker processes of 1 thread (cnncomp run --workers 2)
    dask commands      `dask scheduler` and `dask worker --nworkers 2 --nthreads 1` started as separate commands,
                       the way a real cluster runs, and cnncomp connected through a scheduler file

Reported: images/s (min, median, max over the repeats) and, on Dask, how long the cluster took to start. The
per-batch overhead is measured with batches of one LeNet-5 digit: (time on a LocalCluster of one 1-thread worker
minus time in one process) / batches, the round trip Dask adds to each batch (scheduling, sending the input and
the result).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from real_use import machine, markdown_table, text_table  # this folder's: the same machine line and tables

import cnncomp
from cnncomp import batch

ROOT = Path(__file__).parents[1]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
DIGITS = ROOT / "frontends" / "zoo" / "weights" / "digits_test.npz"
MODELS = {"lenet5": {"inputs": 2000, "batch": 64}, "resnet18": {"inputs": 200, "batch": 8}}
CONFIGURATIONS = ["one process", "LocalCluster 1x2", "LocalCluster 2x1", "dask commands"]
OVERHEAD_BATCHES = 200


def write_inputs(model: str, count: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    if model == "lenet5":
        with np.load(DIGITS) as split:
            digits = split["x"]
        for index in range(count):
            path = folder / f"{index:05d}.png"
            pixels = np.rint(digits[index % len(digits), 0] * 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(path)
            paths.append(path)
        return paths
    rng = np.random.default_rng(0)
    for index in range(count):
        path = folder / f"{index:05d}.jpg"
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8), mode="RGB").save(path, quality=90)
        paths.append(path)
    return paths


def compiled(model: str, size: int) -> cnncomp.CompiledModel:
    weights = WEIGHTS if model == "lenet5" else None
    return cnncomp.compile(cnncomp.load_model(model, weights=weights), opt_level=3, batch=size,
                           options={"progress": False})


@contextlib.contextmanager
def cluster(configuration: str, workdir: Path) -> Iterator[tuple[Any, float]]:
    """A Dask client for the configuration (None: one process) and the seconds it took to start."""
    started = time.perf_counter()
    if configuration == "one process":
        yield None, 0.0
        return
    if configuration.startswith("LocalCluster"):
        workers, threads = (int(n) for n in configuration.split()[1].split("x"))
        running = batch.connect(workers, threads)
        try:
            running.client.wait_for_workers(workers)
            yield running.client, time.perf_counter() - started
        finally:
            running.close()
        return
    scheduler_file = workdir / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    processes = [subprocess.Popen(["dask", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                   "--scheduler-file", str(scheduler_file)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        while not scheduler_file.exists():
            time.sleep(0.05)
        processes.append(subprocess.Popen(["dask", "worker", "--scheduler-file", str(scheduler_file), "--host",
                                           "127.0.0.1", "--nworkers", "2", "--nthreads", "1", "--no-dashboard"],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        running = batch.connect(scheduler_file=str(scheduler_file))
        try:
            running.client.wait_for_workers(2)
            yield running.client, time.perf_counter() - started
        finally:
            running.close()
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


def timed_run(model: cnncomp.CompiledModel, inputs: list[Path], out: Path, size: int, client: Any) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = batch.run_to_folder(model, inputs, out, batch=size, client=client, progress=False)
    seconds = time.perf_counter() - started
    if summary.done != len(inputs):
        raise RuntimeError(f"{summary.failed} inputs failed: see {out / 'predictions.csv'}")
    return seconds


def measure(models: Sequence[str], configurations: Sequence[str], repeat: int, workdir: Path) -> list[dict]:
    records = []
    for name in models:
        size = MODELS[name]["batch"]
        inputs = write_inputs(name, MODELS[name]["inputs"], workdir / name)
        print(f"compiling {name}", file=sys.stderr, flush=True)
        model = compiled(name, size)
        for configuration in configurations:
            with cluster(configuration, workdir) as (client, start_seconds):
                timed_run(model, inputs, workdir / "warm-up", size, client)
                seconds = [timed_run(model, inputs, workdir / "out", size, client) for _ in range(repeat)]
            rates = [len(inputs) / s for s in seconds]
            records.append({"model": name, "configuration": configuration, "inputs": len(inputs), "batch": size,
                            "runs": repeat, "min_images_per_s": min(rates),
                            "median_images_per_s": statistics.median(rates), "max_images_per_s": max(rates),
                            "cluster_start_s": start_seconds})
            print(f"{name:<10} {configuration:<18} {statistics.median(rates):8.1f} img/s", file=sys.stderr,
                  flush=True)
    return records


def dask_overhead(workdir: Path, repeat: int) -> dict[str, float]:
    """Milliseconds Dask adds to each batch: batches of one digit on a 1-worker, 1-thread LocalCluster against one
    process."""
    model = compiled("lenet5", 1)
    inputs = write_inputs("lenet5", OVERHEAD_BATCHES, workdir / "overhead")
    local = [timed_run(model, inputs, workdir / "overhead-out", 1, None) for _ in range(repeat + 1)][1:]
    with cluster("LocalCluster 1x1", workdir) as (client, _):
        timed_run(model, inputs, workdir / "overhead-out", 1, client)
        on_dask = [timed_run(model, inputs, workdir / "overhead-out", 1, client) for _ in range(repeat)]
    per_batch = [(d - statistics.median(local)) / OVERHEAD_BATCHES * 1e3 for d in on_dask]
    return {"batches": OVERHEAD_BATCHES, "one_process_ms_per_batch": statistics.median(local) / OVERHEAD_BATCHES * 1e3,
            "min_ms": min(per_batch), "median_ms": statistics.median(per_batch), "max_ms": max(per_batch)}


def table(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "configuration", "inputs", "batch", "img/s min", "img/s median", "img/s max",
              "x one process", "cluster start s"]
    base = {r["model"]: r["median_images_per_s"] for r in records if r["configuration"] == "one process"}
    rows = [[r["model"], r["configuration"], f"{r['inputs']:,}", str(r["batch"]), f"{r['min_images_per_s']:.1f}",
             f"{r['median_images_per_s']:.1f}", f"{r['max_images_per_s']:.1f}",
             f"{r['median_images_per_s'] / base[r['model']]:.2f}" if r["model"] in base else "",
             f"{r['cluster_start_s']:.1f}" if r["configuration"] != "one process" else ""] for r in records]
    return header, rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--configurations", nargs="+", choices=CONFIGURATIONS, default=CONFIGURATIONS,
                        metavar="CONFIGURATION", help=f"default: all ({', '.join(CONFIGURATIONS)})")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per configuration (default 3)")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the results as JSON to PATH, or, without PATH, print only the JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be positive")
    started = datetime.datetime.now().astimezone()
    with tempfile.TemporaryDirectory(prefix="cnncomp-batch-bench-") as folder:
        records = measure(args.models, args.configurations, args.repeat, Path(folder))
        overhead = dask_overhead(Path(folder), args.repeat)
    result = {"date": started.isoformat(timespec="seconds"), "command": shlex.join(["python", *sys.argv]),
              "machine": machine(("numpy", "numba", "dask", "distributed")), "records": records,
              "dask_overhead_per_batch": overhead}
    if args.json == "-":
        print(json.dumps(result, indent=1))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    info = result["machine"]
    print(f"machine: {info['cpu']}, {info['cores']} cores; numba {info['numba']}, dask {info['dask']}")
    print(f"date: {result['date']}\ncommand: {result['command']}")
    header, rows = table(records)
    print(text_table(header, rows, left=2))
    print(f"Dask's overhead per batch ({overhead['batches']} batches of one digit, one 1-thread worker against one "
          f"process at {overhead['one_process_ms_per_batch']:.2f} ms a batch): min {overhead['min_ms']:.2f}, median "
          f"{overhead['median_ms']:.2f}, max {overhead['max_ms']:.2f} ms")
    if args.markdown:
        print()
        print(markdown_table(header, rows, left=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("batch_inference: interrupted", file=sys.stderr)
        sys.exit(130)
