"""Differential testing of the whole compiler: a graph run by every backend at every opt level, each result compared
with the numpy reference backend's at -O0 (the graph as written, no pass run).

    report = check(case, backends=("reference", "numba-cpu"), levels=(0, 1, 2, 3))
    report.mismatches    # [Mismatch(backend, level, output, detail)]

Tolerance: |actual - expected| <= ATOL * (1 + max |expected|) + RTOL * |expected| elementwise, per output; NaN
where the reference has NaN, infinities equal; shapes and dtypes exact, int64 outputs (max-pool indices) exact.
Why these numbers: docs/guarantees.md.

A backend that raises on a valid graph is a mismatch too, except where a peer (torch, onnxruntime) documents that
it cannot express the graph (`PEER_LIMITS`): then the pair counts as skipped. The numba-cuda backend runs in a
child process with NUMBA_ENABLE_CUDASIM=1 (`cuda_outputs`), since the simulator must be chosen before numba.cuda
is first imported.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends import reference
from cnncomp import plugins
from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph
from cnncomp.pipeline import optimize
from tests.fuzz.graphs import FuzzCase
from tests.helpers import random_inputs

ATOL = 1e-4
RTOL = 1e-3
LEVELS = (0, 1, 2, 3)
IN_PROCESS = ("reference", "numba-cpu", "torch", "onnxruntime")
CUDA = "numba-cuda"
# What a peer backend says when a graph is beyond it: the pair is skipped, not failed.
PEER_LIMITS = {
    "torch": ("the torch backend needs symmetric pooling padding",),
    "onnxruntime": ("no ONNX form for op",),
}
# Relative size of the perturbation that tells a numerically fragile discrete choice (see `fragile`).
PERTURBATION = 1e-4


@dataclass(frozen=True)
class Mismatch:
    backend: str
    level: int
    output: str  # an output name, or "" when the backend raised
    detail: str

    def describe(self) -> str:
        where = f"output {self.output!r}: " if self.output else ""
        return f"{self.backend} -O{self.level}: {where}{self.detail}"


@dataclass
class Report:
    """What one case did: the (backend, level) pairs compared, skipped (with the peer's reason), and mismatched."""

    compared: list[tuple[str, int]] = field(default_factory=list)
    skipped: dict[tuple[str, int], str] = field(default_factory=dict)
    mismatches: list[Mismatch] = field(default_factory=list)


def compare(actual: np.ndarray, expected: np.ndarray) -> str | None:
    """None when `actual` agrees with `expected` within the tolerance; else what differs, in one line."""
    actual = np.asarray(actual)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return f"gave {actual.dtype}{list(actual.shape)}, expected {expected.dtype}{list(expected.shape)}"
    if expected.dtype != np.float32:
        wrong = np.flatnonzero(actual != expected)
        if wrong.size:
            i = np.unravel_index(wrong[0], expected.shape)
            return (f"{wrong.size} of {expected.size} values differ; first at {[int(v) for v in i]}: "
                    f"{int(actual[i])} != {int(expected[i])}")
        return None
    finite = np.isfinite(expected)
    scale = 1.0 + (float(np.abs(expected[finite]).max()) if finite.any() else 0.0)
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(actual.astype(np.float64) - expected)
        bound = ATOL * scale + RTOL * np.abs(expected.astype(np.float64))
        ok = np.where(finite, error <= bound, (actual == expected) | (np.isnan(actual) & np.isnan(expected)))
    if ok.all():
        return None
    wrong = np.flatnonzero(~ok)
    i = np.unravel_index(wrong[np.argmax(np.where(finite.flat[wrong], error.flat[wrong], np.inf))], expected.shape)
    return (f"{wrong.size} of {expected.size} values off; worst at {[int(v) for v in i]}: {float(actual[i]):.7g} "
            f"vs {float(expected[i]):.7g} (tolerance {ATOL:g} * {scale:.3g} + {RTOL:g} * |expected|)")


def expected_outputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The oracle: the reference backend on the graph as written (-O0)."""
    return reference.run(graph, inputs)


def fragile(graph: Graph, inputs: Mapping[str, np.ndarray], seed: int) -> bool:
    """Whether an int64 value of the graph (max-pool indices: which element of a window is largest) changes when
    weights and inputs move by PERTURBATION relative: a near-tie that summation order alone can tip, so backends
    may fairly disagree on it. Such cases are discarded, not compared; so are inputs the reference refuses (an
    unpooling into a plane smaller than the pooled one is valid only for values whose maxima land inside it)."""
    discrete = [node.name for node in graph.nodes if node.type.dtype == "int64"]
    if not discrete:
        return False
    probe = graph.copy()
    probe.set_outputs(discrete)
    rng = np.random.default_rng(seed)
    try:
        baseline = reference.run(probe, inputs)
        for _ in range(2):
            shaken = probe.copy()
            shaken.params = {key: (value * (1 + PERTURBATION * rng.standard_normal(value.shape))).astype(np.float32)
                             for key, value in probe.params.items()}
            moved = {name: (x * (1 + PERTURBATION * rng.standard_normal(x.shape))).astype(np.float32)
                     for name, x in inputs.items()}
            result = reference.run(shaken, moved)
            if any(not np.array_equal(result[name], baseline[name]) for name in discrete):
                return True
    except CnnCompError:
        return True
    return False


def backend_options(backend: str) -> dict[str, Any]:
    return {"progress": False} if backend.startswith("numba") else {}


def _peer_limit(backend: str, error: Exception) -> str | None:
    text = str(error)
    return next((reason for reason in PEER_LIMITS.get(backend, ()) if reason in text), None)


def run_in_process(graph: Graph, backend: str, level: int, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    optimized, _ = optimize(graph, level)
    return plugins.backend(backend).compile(optimized, backend_options(backend))(dict(inputs))


def check(case: FuzzCase, backends: Sequence[str] = IN_PROCESS, levels: Sequence[int] = LEVELS,
          cuda: Callable[[Graph, Sequence[int], Mapping[str, np.ndarray]], dict[int, Any]] | None = None,
          inputs: Mapping[str, np.ndarray] | None = None) -> Report:
    """Run the case on each backend at each level and compare with the reference at -O0. `cuda`, when given, runs
    the numba-cuda levels (see `cuda_outputs`); numba-cuda in `backends` without it is an error."""
    graph = case.graph
    inputs = dict(inputs if inputs is not None else random_inputs(graph, case.seed))
    expected = expected_outputs(graph, inputs)
    report = Report()
    for backend in backends:
        if backend == CUDA:
            if cuda is None:
                raise ValueError("numba-cuda runs in a simulator process: pass cuda=CudaRunner(...)")
            results = cuda(graph, levels, inputs)
        else:
            results = {}
            for level in levels:
                try:
                    results[level] = run_in_process(graph, backend, level, inputs)
                except Exception as exc:  # a backend failing on a valid graph: reported as a mismatch, not raised
                    results[level] = exc
        for level in levels:
            _judge(report, backend, level, results[level], expected)
    return report


def _judge(report: Report, backend: str, level: int, result: Any, expected: Mapping[str, np.ndarray]) -> None:
    if isinstance(result, (Exception, str)):
        reason = _peer_limit(backend, result) if isinstance(result, Exception) else None
        if reason is not None:
            report.skipped[(backend, level)] = reason
            return
        text = result if isinstance(result, str) else f"{type(result).__name__}: {result}"
        report.compared.append((backend, level))
        report.mismatches.append(Mismatch(backend, level, "", f"raised {text.splitlines()[0] if text else ''}"))
        return
    report.compared.append((backend, level))
    missing = sorted(set(expected) - set(result))
    if missing:
        report.mismatches.append(Mismatch(backend, level, missing[0], "output missing"))
        return
    for name, want in expected.items():
        problem = compare(result[name], want)
        if problem is not None:
            report.mismatches.append(Mismatch(backend, level, name, problem))


# ----- numba-cuda, in the simulator, in a child process ----------------------------------------------------------
def save_case(graph: Graph, inputs: Mapping[str, np.ndarray], folder: Path) -> Path:
    (folder / "graph.json").write_text(graph.to_json())
    graph.save_params(folder / "params.npz")
    np.savez(folder / "inputs.npz", **inputs)
    return folder


def load_saved(folder: Path) -> tuple[Graph, dict[str, np.ndarray]]:
    with np.load(folder / "params.npz") as params, np.load(folder / "inputs.npz") as inputs:
        graph = Graph.from_json((folder / "graph.json").read_text(), {k: params[k] for k in params.files})
        return graph, {k: inputs[k] for k in inputs.files}


def run_saved(folder: str, backend: str, levels: Sequence[int]) -> dict[str, str]:
    """In a sandbox child: run a saved case on `backend` at each level; outputs saved as `O<level>.npz`, failures
    returned as {level: message}."""
    graph, inputs = load_saved(Path(folder))
    failures = {}
    for level in levels:
        try:
            outputs = run_in_process(graph, backend, level, inputs)
            np.savez(Path(folder) / f"O{level}.npz", **outputs)
        except Exception as exc:  # reported to the parent, which counts it as a mismatch
            failures[str(level)] = f"{type(exc).__name__}: {exc}"
    return failures


class CudaRunner:
    """Runs graphs on numba-cuda in a simulator child process (started once, restarted after a crash)."""

    def __init__(self, timeout: float = 300.0) -> None:
        from tests.fuzz.sandbox import Sandbox

        self.sandbox = Sandbox(timeout=timeout, memory_bytes=None, env={"NUMBA_ENABLE_CUDASIM": "1"})

    def __call__(self, graph: Graph, levels: Sequence[int], inputs: Mapping[str, np.ndarray]) -> dict[int, Any]:
        with tempfile.TemporaryDirectory(prefix="fuzz-cuda-") as folder:
            save_case(graph, inputs, Path(folder))
            outcome = self.sandbox.run("tests.fuzz.differential:run_saved", [folder, CUDA, list(levels)])
            if outcome.status != "ok":
                return {level: f"the simulator process: {outcome.describe()}" for level in levels}
            results: dict[int, Any] = {}
            for level in levels:
                if str(level) in outcome.value:
                    results[level] = outcome.value[str(level)]
                else:
                    with np.load(Path(folder) / f"O{level}.npz") as saved:
                        results[level] = {k: saved[k] for k in saved.files}
            return results

    def close(self) -> None:
        self.sandbox.close()


def summary_line(report: Report) -> str:
    return json.dumps({"compared": len(report.compared), "skipped": len(report.skipped),
                       "mismatches": [m.describe() for m in report.mismatches]})


def tried(reports: Iterable[Report]) -> dict[tuple[str, int], int]:
    counts: dict[tuple[str, int], int] = {}
    for report in reports:
        for pair in report.compared:
            counts[pair] = counts.get(pair, 0) + 1
    return counts
