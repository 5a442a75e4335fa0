"""Tuning records: the conv2d algorithm each distinct layer of a model runs fastest with on this machine, measured
by `cnncomp tune` (`tune`) and used by `compile` at -O3 (`tuned_algorithms`); a layer the record does not name
gets `resolve`'s measured defaults.

The record is one JSON file beside the kernel cache, `<cache dir>/numba-cpu-tuning.json` (the cache directory of
`numba_common.default_cache_dir`, `$CNNCOMP_CACHE_DIR`; the `cache_dir` option moves only the kernels, so a
benchmark over an empty kernel cache still runs the tuned choices):

    {"format": 1,
     "machines": [{"cpu": "Intel(R) Xeon(R) Processor (flags 3f2a9c1d0b7e)", "threads": 2,
                   "layers": {"conv2d 1x64x56x56 -> 1x64x56x56 {\\"act\\": \\"relu\\", ...}":
                                  {"algorithm": "winograd4",
                                   "measured_ms": {"direct": 9.1, "im2col": 1.2, "winograd2": 0.9, ...}}}}]}

A machine is the CPU (its model name and a digest of its feature flags) and the threads a call splits its work
for; a layer is its op, input and output shapes and every attribute (kernel, stride, padding, dilation, groups,
the fused epilogue). The record is data: read with `json`, never imported or unpickled; an entry naming an
algorithm that cannot compute its layer is ignored. It is written whole to a temporary file and renamed into
place, so a reader sees the old record or the new one, never half of one; writers take a lock around
read-merge-write, so two tuners at once both keep their layers.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from backends.numba_common import default_cache_dir
from backends.numba_cpu import resolve
from cnncomp.ir import Graph, Node

FORMAT = 1
RECORD_NAME = "numba-cpu-tuning.json"
# Timed calls per candidate (the median is kept), after a warm-up call.
REPEATS = 5
# A candidate whose first call after the warm-up takes this many times the fastest one's is not timed
# again: it has lost (the direct kernel on ResNet's 3x3 convs takes 100 times Winograd's), and tuning stays
# minutes, not hours.
HOPELESS = 4.0
# How far a candidate's output may stray from the reference's, relative to the output's largest magnitude
# (Winograd F(4x4) adds about 1e-5 per layer).
TOLERANCE = 1e-3
# The default stays unless another algorithm beats it by this share: timings of small layers on a shared machine
# wander by a few percent, and a record should not flip on noise.
MIN_GAIN = 0.05

LayerReport = dict[str, Any]


@functools.cache
def cpu_id() -> str:
    """This CPU as tuning records name it: its model name and a digest of its feature flags (from /proc/cpuinfo
    on Linux; elsewhere what `platform` says)."""
    fields: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            fields.setdefault(name.strip(), value.strip())
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown cpu"
    flags = fields.get("flags") or fields.get("Features") or platform.machine()
    return f"{model} (flags {hashlib.sha256(flags.encode()).hexdigest()[:12]})"


def record_path() -> Path:
    return default_cache_dir() / RECORD_NAME


def layer_key(graph: Graph, node: Node) -> str:
    """What makes two layers the same to a kernel: op, input and output shapes, every attribute."""
    x = graph.node(node.inputs[0]).type
    attrs = json.dumps({name: list(value) if isinstance(value, tuple) else value
                        for name, value in sorted(node.attrs.items())}, separators=(",", ":"))
    return f"{node.op} {x} -> {node.type} {attrs}"


def _warn(message: str) -> None:
    print(f"cnncomp: warning: {message}", file=sys.stderr)


def _read(path: Path) -> dict[str, Any]:
    """The record at `path` ({} if there is none); ValueError saying what is wrong with a corrupt one."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(str(exc).splitlines()[0]) from None
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("machines"), list):
        raise ValueError(f"not a format-{FORMAT} tuning record")
    for machine in record["machines"]:
        if not (isinstance(machine, dict) and isinstance(machine.get("cpu"), str)
                and isinstance(machine.get("threads"), int) and isinstance(machine.get("layers"), dict)
                and all(isinstance(entry, dict) and isinstance(entry.get("algorithm"), str)
                        for entry in machine["layers"].values())):
            raise ValueError("a machine entry without cpu, threads and layers")
    return record


def recorded_choices(threads: int) -> dict[str, str]:
    """{layer key: algorithm} of this CPU at `threads` threads; {} without a record, and with a one-line warning
    on stderr for a corrupt one (the defaults apply)."""
    path = record_path()
    try:
        record = _read(path)
    except ValueError as exc:
        _warn(f"{path}: corrupt tuning record ({exc}); using the default algorithms")
        return {}
    cpu = cpu_id()
    return {key: entry["algorithm"] for machine in record.get("machines", [])
            if machine["cpu"] == cpu and machine["threads"] == threads for key, entry in machine["layers"].items()}


def tuned_algorithms(graph: Graph, threads: int) -> dict[str, str]:
    """{conv2d node name: algorithm} the tuning record chooses for this machine at `threads` threads, where it
    names an algorithm that can compute the node."""
    choices = recorded_choices(threads)
    if not choices:
        return {}
    tuned = {}
    for node in graph.nodes:
        choice = choices.get(layer_key(graph, node)) if node.op == "conv2d" else None
        if choice is not None and choice in resolve.supported_algorithms(node.attrs, graph.node(node.inputs[0]).type):
            tuned[node.name] = choice
    return tuned


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Held while one writer reads, merges and replaces the record at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _store(cpu: str, threads: int, layers: Mapping[str, Mapping[str, Any]]) -> Path:
    """Merge `layers` into the record's entry for (cpu, threads) and write it atomically; a corrupt record is
    replaced (with a warning)."""
    path = record_path()
    with _locked(path):
        try:
            record = _read(path) or {"format": FORMAT, "machines": []}
        except ValueError as exc:
            _warn(f"{path}: corrupt tuning record ({exc}); writing a new one")
            record = {"format": FORMAT, "machines": []}
        machine = next((m for m in record["machines"] if m["cpu"] == cpu and m["threads"] == threads), None)
        if machine is None:
            machine = {"cpu": cpu, "threads": threads, "layers": {}}
            record["machines"].append(machine)
        machine["layers"].update(layers)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as handle:
            json.dump(record, handle, indent=1)
        os.replace(tmp, path)
    return path


def _layer_graph(graph: Graph, node: Node) -> Graph:
    """The node alone, over inputs of its operands' shapes, with its parameters: what one candidate is timed on."""
    layer = Graph(f"tune_{node.name}")
    operands = []
    for index, operand in enumerate(node.inputs):
        operands.append(f"x{index}")
        layer.add_node(operands[-1], "input", attrs={"shape": graph.node(operand).type.shape})
    layer.add_node("layer", node.op, operands, attrs=node.attrs, params=graph.node_params(node.name))
    layer.set_outputs(["layer"])
    return layer


def _measure(layer: Graph, threads: int) -> tuple[dict[str, float], dict[str, str]]:
    """Each algorithm that can compute the layer: its time in ms, or why it was rejected (output unlike the
    reference's). Every candidate is checked first, then all are timed together, one call of each in turn, so
    none pays alone for what ran before it: right after the reference's numpy matmul, OpenBLAS's threads spin on
    a core for about 0.1 s, and the candidate timed first (the default, before) read 0.71 ms on a layer that
    takes 0.41."""
    from backends import numba_cpu, reference

    node = layer.node("layer")
    rng = np.random.default_rng(0)
    inputs = {x.name: rng.standard_normal(x.type.shape).astype(np.float32) for x in layer.inputs}
    expected = reference.compile(layer)(inputs)["layer"]
    atol = TOLERANCE * max(1.0, float(np.abs(expected).max()))
    executables: dict[str, Any] = {}
    rejected: dict[str, str] = {}
    for algorithm in resolve.supported_algorithms(node.attrs, layer.node("x0").type):
        executable = numba_cpu.compile(layer, {"threads": threads, "progress": False,
                                               "conv2d_algorithms": {"layer": algorithm}})
        if np.allclose(executable(inputs)["layer"], expected, rtol=TOLERANCE, atol=atol):
            executables[algorithm] = executable
        else:
            rejected[algorithm] = "output differs from the reference"
    once = {algorithm: _call_ms(executable, inputs) for algorithm, executable in executables.items()}
    best_once = min(once.values(), default=float("inf"))
    hopeless = {algorithm: ms for algorithm, ms in once.items() if ms > HOPELESS * best_once}
    samples: dict[str, list[float]] = {algorithm: [] for algorithm in executables if algorithm not in hopeless}
    for _ in range(REPEATS):
        for algorithm, times in samples.items():
            times.append(1e3 * sum(row["seconds"] for row in executables[algorithm].profile(inputs, 1)))
    return {**{algorithm: float(np.median(times)) for algorithm, times in samples.items()}, **hopeless}, rejected


def _call_ms(executable: Any, inputs: Mapping[str, np.ndarray]) -> float:
    """One call's time, after a call that warms up (a fresh executable's first call pays for its memory's first
    touch and the thread pool's start)."""
    executable(inputs)
    start = time.perf_counter()
    executable(inputs)
    return 1e3 * (time.perf_counter() - start)


def _fastest(measured: Mapping[str, float], default: str) -> str:
    """The fastest algorithm, but the default where none beats it by MIN_GAIN (or it is all there is)."""
    fastest = min(measured, key=measured.__getitem__, default=default)
    if default in measured and measured[fastest] > (1 - MIN_GAIN) * measured[default]:
        return default
    return fastest


def tune(graph: Graph, options: Mapping[str, Any] | None = None,
         on_layer: Callable[[int, int, LayerReport], None] | None = None) -> dict[str, Any]:
    """Time every algorithm that can compute each distinct conv2d layer of `graph` (optimized already, at the
    batch size to tune for) on this machine, at the `threads` option's thread count, and store the fastest of
    each in the tuning record. `on_layer(done, total, report)` is called after each layer. Returns
    {backend, cpu, threads, record, seconds, layers: [{layer, nodes, default, chosen, measured_ms, rejected}]}."""
    from backends.numba_cpu import threads_option

    started = time.perf_counter()
    threads = threads_option(options or {})
    distinct: dict[str, list[Node]] = {}
    for node in graph.nodes:
        if node.op == "conv2d":
            distinct.setdefault(layer_key(graph, node), []).append(node)
    reports: list[LayerReport] = []
    for key, nodes in distinct.items():
        layer = _layer_graph(graph, nodes[0])
        x = layer.node("x0").type
        default = resolve.conv2d_algorithm(nodes[0].attrs, x, nodes[0].type)
        measured, rejected = _measure(layer, threads)
        chosen = _fastest(measured, default)
        reports.append({"layer": key, "nodes": [node.name for node in nodes], "default": default, "chosen": chosen,
                        "measured_ms": measured, "rejected": rejected})
        if on_layer is not None:
            on_layer(len(reports), len(distinct), reports[-1])
    cpu = cpu_id()
    path = _store(cpu, threads, {report["layer"]: {"algorithm": report["chosen"], "measured_ms": report["measured_ms"]}
                                 for report in reports})
    return {"backend": "numba-cpu", "cpu": cpu, "threads": threads, "record": str(path),
            "seconds": time.perf_counter() - started, "layers": reports}
