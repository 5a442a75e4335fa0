"""numba-cpu (-O3) in real use, beside ONNX Runtime and PyTorch eager: on a busy machine, next to other thread
pools in the same process, and called from several threads at once.

    python benchmarks/real_use.py [--models lenet5 resnet18 ...] [--conditions idle busy-2 ...] [--repeat 20]
                                  [--json [PATH]] [--markdown]

Every model is compiled first, for numba-cpu at -O3 and for the peers (backends `onnxruntime` and `torch`) at -O0
from the same graph and weights, as `cnncomp bench` does; then each model and backend is measured at batch 1 in
each condition:

    idle          nothing else runs; one caller calls the model in a loop (the baseline, always measured)
    busy-1        one process this script starts keeps one core busy (a Python loop; stopped afterwards)
    busy-2        two such processes
    after-matmul  before each call a pause of 0.25 s (so every call sees the same state), then a 512 x 512
                  float32 numpy matmul in this process: OpenBLAS's threads still spin when the call starts
    after-ort     the same with a run of a separate ONNX Runtime session (LeNet-5) instead of the matmul: its
                  thread pool spins after the run
    callers-2     2 Python threads call the same compiled model at once, in a loop
    callers-4     4 threads

Before each measurement: a pause of 0.25 s, so that the previous backend's threads go quiet, and one untimed call
(per thread where several call). Then `--repeat` timed calls (per thread), fewer where they would take more than
`--max-seconds`, but at least 3. Reported per model, backend and condition: the min, median and max ms per call;
images/s, the callers over the median (each caller calls again as soon as a call returns, so this is the rate of
images, Little's law, with the median keeping one slow call from swaying it); slowdown, the median over the idle
median of the same model and backend. The summary table puts the issue's targets side by side: numba-cpu's busy-2
slowdown next to ONNX Runtime's, numba-cpu's slowdown after a matmul and after an ONNX Runtime run, and images/s
with 2 callers over images/s with one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp import api
from cnncomp.bench import PEERS, peers_available

MODELS = ["lenet5", "resnet18", "resnet50", "googlenet", "xception", "efficientnet_b0"]
CONDITIONS = ["idle", "busy-1", "busy-2", "after-matmul", "after-ort", "callers-2", "callers-4"]
BUSY_PROCESSES = {"busy-1": 1, "busy-2": 2}
CALLERS = {"callers-2": 2, "callers-4": 4}
OURS = "numba-cpu"
SETTLE_SECONDS = 0.25
MATMUL_SIZE = 512
MIN_CALLS = 3
# A busy process spins until its parent is gone, so that none outlives a killed run.
BUSY_LOOP = """
import os
parent = os.getppid()
while os.getppid() == parent:
    for _ in range(1_000_000):
        pass
"""

Run = Callable[[dict[str, np.ndarray]], Any]


@contextmanager
def busy_cores(count: int) -> Iterator[list[subprocess.Popen]]:
    """`count` background processes that each keep a core busy, stopped on the way out (errors and Ctrl-C too)."""
    processes: list[subprocess.Popen] = []
    try:
        for _ in range(count):
            processes.append(subprocess.Popen([sys.executable, "-c", BUSY_LOOP]))
        time.sleep(0.5)  # let them start spinning before anything is timed
        yield processes
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def time_one_caller(run: Run, inputs: dict[str, np.ndarray], before: Callable[[], Any] | None, repeat: int,
                    max_seconds: float) -> list[float]:
    """Seconds of each timed call of one caller. `before` runs ahead of every call (the warm-up's too), after a
    pause of SETTLE_SECONDS."""

    def call() -> float:
        if before is not None:
            time.sleep(SETTLE_SECONDS)
            before()
        start = time.perf_counter()
        run(inputs)
        return time.perf_counter() - start

    call()
    deadline = time.perf_counter() + max_seconds
    seconds: list[float] = []
    while len(seconds) < repeat and (len(seconds) < MIN_CALLS or time.perf_counter() < deadline):
        seconds.append(call())
    return seconds


def time_callers(run: Run, inputs: dict[str, np.ndarray], callers: int, repeat: int,
                 max_seconds: float) -> list[float]:
    """Seconds of each timed call of `callers` threads calling at once (each a warm-up, then up to `repeat`
    calls)."""
    barrier = threading.Barrier(callers)
    seconds: list[float] = []  # list.append is atomic: the threads share it
    errors: list[BaseException] = []
    deadline = time.perf_counter() + max_seconds

    def caller() -> None:
        try:
            run(inputs)
            barrier.wait()
            for count in range(repeat):
                if count >= MIN_CALLS and time.perf_counter() > deadline:
                    break
                start = time.perf_counter()
                run(inputs)
                seconds.append(time.perf_counter() - start)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
            barrier.abort()

    # Daemon threads, so that Ctrl-C ends the run without waiting for their calls.
    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real_errors = [exc for exc in errors if not isinstance(exc, threading.BrokenBarrierError)]
    if real_errors:
        raise real_errors[0]
    return seconds


def machine(packages: Sequence[str] = ("numpy", "numba", "torch", "onnxruntime")) -> dict[str, Any]:
    """Cores, CPU model (from /proc/cpuinfo) and the versions of the libraries measured."""
    cpu = "unknown CPU"
    with open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), **versions}


def threading_layer() -> str:
    """Numba's threading layer, known once a parallel kernel has run."""
    import numba

    try:
        return numba.threading_layer()
    except ValueError:
        return "none (no parallel kernel ran)"


def compile_all(models: Sequence[str], backends: Sequence[str]) -> dict[tuple[str, str], api.CompiledModel]:
    """Every model for every backend: ours after -O3, the peers on the graph as written (-O0)."""
    compiled = {}
    for model in models:
        graph = api.load_model(model, batch=1)
        for backend in backends:
            print(f"compiling {model} for {backend}", file=sys.stderr, flush=True)
            opt_level = 0 if backend in PEERS else 3
            compiled[model, backend] = api.compile(graph, backend, opt_level, batch=1, options={"progress": False})
    return compiled


def measure(compiled: dict[tuple[str, str], api.CompiledModel], conditions: Sequence[str], repeat: int,
            max_seconds: float) -> list[dict[str, Any]]:
    """One record per model, backend and condition. Conditions are the outer loop, so that each background load
    starts once."""
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((MATMUL_SIZE, MATMUL_SIZE)).astype(np.float32)
    disturber = api.compile("lenet5", "onnxruntime", 0, batch=1) if "after-ort" in conditions else None
    disturber_input = ({name: rng.standard_normal(shape).astype(np.float32)
                        for name, shape in disturber.input_shapes.items()} if disturber else {})
    before = {"after-matmul": lambda: matrix @ matrix, "after-ort": lambda: disturber.run(disturber_input)}
    inputs = {key: {name: rng.standard_normal(shape).astype(np.float32) for name, shape in model.input_shapes.items()}
              for key, model in compiled.items()}
    records = []
    for condition in conditions:
        with busy_cores(BUSY_PROCESSES.get(condition, 0)):
            for (model_name, backend), model in compiled.items():
                time.sleep(SETTLE_SECONDS)
                callers = CALLERS.get(condition, 1)
                if callers > 1:
                    seconds = time_callers(model.run, inputs[model_name, backend], callers, repeat, max_seconds)
                else:
                    seconds = time_one_caller(model.run, inputs[model_name, backend], before.get(condition), repeat,
                                              max_seconds)
                median = statistics.median(seconds)
                records.append({"model": model_name, "backend": backend, "condition": condition, "callers": callers,
                                "calls": len(seconds), "min_ms": min(seconds) * 1e3, "median_ms": median * 1e3,
                                "max_ms": max(seconds) * 1e3, "images_per_s": callers / median})
                print(f"{condition:<12} {model_name:<16} {backend:<12} median {records[-1]['median_ms']:.2f} ms",
                      file=sys.stderr, flush=True)
    idle = {(r["model"], r["backend"]): r["median_ms"] for r in records if r["condition"] == "idle"}
    for record in records:
        record["slowdown"] = record["median_ms"] / idle[record["model"], record["backend"]]
    # Measured condition by condition; reported model by model, each backend's conditions together (a stable sort).
    order = list(compiled)
    return sorted(records, key=lambda r: order.index((r["model"], r["backend"])))


def detail_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["model", "backend", "condition", "calls", "min ms", "median ms", "max ms", "img/s", "slowdown"]
    rows = [[r["model"], r["backend"], r["condition"], str(r["calls"]), f"{r['min_ms']:.2f}",
             f"{r['median_ms']:.2f}", f"{r['max_ms']:.2f}", f"{r['images_per_s']:.1f}", f"{r['slowdown']:.2f}"]
            for r in records]
    return header, rows


def target_rows(records: Sequence[dict[str, Any]], models: Sequence[str]) -> tuple[list[str], list[list[str]]]:
    """Per model: numba-cpu's idle latency, the slowdowns the issue sets targets for, and images/s with 2 callers
    over images/s with one; '-' where a condition or backend was not measured."""
    by_key = {(r["model"], r["backend"], r["condition"]): r for r in records}

    def figure(model: str, backend: str, condition: str, key: str) -> str:
        record = by_key.get((model, backend, condition))
        return "-" if record is None else f"{record[key]:.2f}"

    def callers_gain(model: str, backend: str) -> str:
        two, one = by_key.get((model, backend, "callers-2")), by_key.get((model, backend, "idle"))
        return "-" if two is None or one is None else f"{two['images_per_s'] / one['images_per_s']:.2f}"

    header = ["model", f"{OURS} idle ms", f"busy-2 x {OURS}", "busy-2 x onnxruntime", f"after-matmul x {OURS}",
              f"after-ort x {OURS}", f"2 callers img/s / 1: {OURS}", "2 callers img/s / 1: onnxruntime"]
    rows = [[model, figure(model, OURS, "idle", "median_ms"), figure(model, OURS, "busy-2", "slowdown"),
             figure(model, "onnxruntime", "busy-2", "slowdown"), figure(model, OURS, "after-matmul", "slowdown"),
             figure(model, OURS, "after-ort", "slowdown"), callers_gain(model, OURS),
             callers_gain(model, "onnxruntime")]
            for model in models]
    return header, rows


def text_table(header: list[str], rows: list[list[str]], left: int) -> str:
    """Columns padded to their widest cell; the first `left` columns left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) if i < left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in [header, *rows])


def markdown_table(header: list[str], rows: list[list[str]], left: int) -> str:
    align = ["---" if i < left else "---:" for i in range(len(header))]
    return "\n".join("| " + " | ".join(row) + " |" for row in [header, align, *rows])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, help=f"zoo models (default: {' '.join(MODELS)})")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=CONDITIONS, metavar="CONDITION",
                        help=f"conditions to measure, idle always among them (default: all: {' '.join(CONDITIONS)})")
    parser.add_argument("--repeat", type=int, default=20, help="timed calls per measurement (default 20)")
    parser.add_argument("--max-seconds", type=float, default=8.0,
                        help=f"stop a measurement's timed calls after this long, at {MIN_CALLS} calls the earliest "
                             "(default 8), so that a slow condition cannot stretch the run")
    parser.add_argument("--json", nargs="?", const="-", metavar="PATH",
                        help="write the results as JSON to PATH, or, without PATH, print only the JSON")
    parser.add_argument("--markdown", action="store_true", help="also print the tables in Markdown")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.max_seconds <= 0:
        parser.error("--repeat and --max-seconds must be positive")

    conditions = ["idle", *(c for c in CONDITIONS if c in args.conditions and c != "idle")]
    peers, notes = peers_available()
    for note in notes:
        print(f"real_use: note: {note}", file=sys.stderr)
    if "after-ort" in conditions and "onnxruntime" not in peers:
        parser.error("after-ort needs the onnxruntime backend")
    started = datetime.datetime.now().astimezone()
    compiled = compile_all(args.models, [OURS, *peers])
    records = measure(compiled, conditions, args.repeat, args.max_seconds)
    result = {
        "date": started.isoformat(timespec="seconds"), "command": shlex.join(["python", *sys.argv]),
        "machine": machine(), "numba_threading_layer": threading_layer(), "batch": 1,
        "repeat": args.repeat, "max_seconds": args.max_seconds, "conditions": conditions,
        "backends": [OURS, *peers], "models": args.models, "records": records,
    }
    if args.json == "-":
        print(json.dumps(result, indent=1))
        return 0
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    info = result["machine"]
    print(f"machine: {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}, numba {info['numba']} "
          f"(threading layer {result['numba_threading_layer']}), torch {info['torch']}, "
          f"onnxruntime {info['onnxruntime']}")
    print(f"date: {result['date']}")
    print(f"command: {result['command']}")
    print(f"batch 1; {args.repeat} timed calls per measurement (per caller), at most {args.max_seconds:g} s each; "
          f"slowdown: median over the idle median of the same model and backend")
    tables = [("Targets", *target_rows(records, args.models), 1), ("All measurements", *detail_rows(records), 3)]
    for title, header, rows, left in tables:
        print(f"\n{title}\n{text_table(header, rows, left)}")
    if args.markdown:
        for title, header, rows, left in tables:
            print(f"\n{title}\n\n{markdown_table(header, rows, left)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the busy processes are stopped already
        print("real_use: interrupted", file=sys.stderr)
        sys.exit(130)
