"""The Numba CPU backend: generated kernels, compiled with Numba and cached on disk, run over one arena.

    executable = compile(graph, {"cache_dir": ..., "progress": True})
    outputs = executable({"image": x})

See `lowering` (which kernel each op becomes), `resolve` (which convolution algorithm), `templates/` (the
kernel sources) and `kernels` (the on-disk kernel cache).

Threads: every kernel splits its work over Numba's threads (one job list per thread, static round robin) and
calls BLAS from inside them, so SciPy's BLAS is set to one thread (`blas.configure_single_threaded`); the
two pools never compete for the cores. Other libraries' pools can: OpenBLAS's threads (numpy's matmul) spin for
about 0.1 s after their work, and a model called within that time runs up to 2x slower.

fastmath: kernels that sum (convolutions, dense, pools, LRN, softmax, upsample, the elementwise kernels) are
compiled with the fastmath flags reassoc, contract, nsz and arcp, so loops vectorize and use FMA; not nnan,
ninf or afn, so NaN and inf propagate as IEEE says and exp/tanh keep their precision. The data-movement kernels
(pad, crop, strided slice, unpool, max-pool indices) compute nothing and are compiled without it. The
numerical tests (tests/backends/test_numba_cpu.py, test_zoo_numba.py) pass with these flags at atol/rtol 1e-4
per op and 1e-3 relative per zoo model; Winograd's F(4x4) transforms add about 1e-5 relative error per layer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from backends.numba_cpu import blas
from backends.numba_cpu.kernels import KernelCache, KernelSource
from backends.numba_cpu.lowering import LoweringContext, lower
from backends.numba_cpu.templates.common import KernelCall, Scratch
from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.passes.plan_memory import plan_memory, plan_of
from cnncomp.runtime import check_inputs

ALIGNMENT = 64  # bytes: one cache line, and AVX-512 vectors


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


@dataclass
class CompileStats:
    kernels: int = 0
    compiled: int = 0
    from_cache: int = 0
    seconds: float = 0.0
    arena_bytes: int = 0
    scratch_bytes: int = 0


@dataclass
class Step:
    node: str
    kernel: KernelSource
    function: Any
    args: tuple[Any, ...]


@dataclass
class NumbaExecutable:
    """Callable: `executable({input_name: array}) -> {output_name: array}` (outputs are fresh arrays)."""

    graph: Graph
    steps: list[Step]
    views: dict[str, np.ndarray]
    stats: CompileStats
    arena: np.ndarray = field(repr=False)  # every value's view points into this (or into a constant's parameter)
    scratch: np.ndarray = field(repr=False)  # the steps' temporaries

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, value in check_inputs(self.graph, inputs).items():
            np.copyto(self.views[name], value)
        for step in self.steps:
            self._run(step)
        return {name: self.views[name].copy() for name in self.graph.outputs}

    def _run(self, step: Step) -> None:
        try:
            step.function(*step.args)
        except ValueError as exc:  # raised by a kernel on bad data, e.g. an unpooling index out of range
            raise GraphError(f"node {step.node!r}: {exc}") from None

    @property
    def source(self) -> dict[str, str]:
        """The generated kernel modules, by module name (each once, however many nodes use it)."""
        return {step.kernel.module_name: step.kernel.source for step in self.steps}

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[dict[str, Any]]:
        """Per-step median time in seconds over `repeat` runs, in execution order."""
        for name, value in check_inputs(self.graph, inputs).items():
            np.copyto(self.views[name], value)
        times = np.zeros((repeat, len(self.steps)))
        for run in range(repeat):
            for index, step in enumerate(self.steps):
                start = time.perf_counter()
                self._run(step)
                times[run, index] = time.perf_counter() - start
        medians = np.median(times, axis=0)
        return [{"node": step.node, "kernel": step.kernel.family, "seconds": float(seconds)}
                for step, seconds in zip(self.steps, medians, strict=True)]


def _memory(graph: Graph) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """The arena and a view of every value in it, as the graph's memory plan (from plan_memory, -O3) places
    them; a graph without a plan is planned here the same way. Constants are views of their parameter."""
    try:
        plan = plan_of(graph)
    except GraphError:
        plan = plan_of(plan_memory(graph))
    arena = np.zeros(plan["arena_bytes"], np.uint8)
    views = {}
    for node in graph.nodes:
        if node.op == "constant":
            views[node.name] = graph.params[f"{node.name}.value"]
            continue
        slot = plan["tensors"][node.name]
        itemsize = np.dtype(node.type.dtype).itemsize
        inner = [itemsize * int(np.prod(node.shape[axis + 1:])) for axis in range(1, len(node.shape))]
        views[node.name] = np.ndarray(node.shape, node.type.dtype, arena, slot["offset"],
                                      (slot["batch_stride"] * itemsize, *inner))
    return arena, views, plan


def _resolve_scratch(calls: list[KernelCall]) -> tuple[np.ndarray, list[tuple[Any, ...]]]:
    """One scratch buffer for all steps (they run one after another), each step's scratch laid out from 0."""
    layouts, largest = [], 0
    for call in calls:
        offset, placed = 0, []
        for arg in call.args:
            if isinstance(arg, Scratch):
                placed.append(offset)
                offset += _aligned(int(np.prod(arg.shape)) * np.dtype(arg.dtype).itemsize)
        layouts.append(placed)
        largest = max(largest, offset)
    buffer = np.zeros(largest, np.uint8)
    resolved = []
    for call, placed in zip(calls, layouts, strict=True):
        offsets = iter(placed)
        args = []
        for arg in call.args:
            if isinstance(arg, Scratch):
                start = next(offsets)
                nbytes = int(np.prod(arg.shape)) * np.dtype(arg.dtype).itemsize
                arg = buffer[start: start + nbytes].view(arg.dtype).reshape(arg.shape)
            args.append(arg)
        resolved.append(tuple(args))
    return buffer, resolved


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> NumbaExecutable:  # noqa: A001
    """Lower every node to kernel calls, compile (or load from the kernel cache) each kernel, lay out memory.

    options: `cache_dir` (default: `$CNNCOMP_CACHE_DIR` or `~/.cache/cnncomp`), `progress` (bool; default: on
    a terminal), `conv2d_algorithms` ({node name: algorithm} overriding `resolve`, for tests and measurements)."""
    options = dict(options or {})
    start = time.perf_counter()
    graph.validate()
    blas.configure_single_threaded()
    arena, views, plan = _memory(graph)
    context = LoweringContext(graph, views, numba.get_num_threads(), plan, options.get("conv2d_algorithms", {}))
    calls = [call for node in graph.nodes if node.op not in ("input", "constant") for call in lower(node, context)]
    scratch, resolved_args = _resolve_scratch(calls)

    cache = KernelCache(Path(options["cache_dir"]) if options.get("cache_dir") else None)
    stats = CompileStats(arena_bytes=arena.nbytes, scratch_bytes=scratch.nbytes)
    signatures: dict[str, list[tuple[Any, ...]]] = {}
    kernels: dict[str, KernelSource] = {}
    for call, args in zip(calls, resolved_args, strict=True):
        kernels[call.kernel.key] = call.kernel
        signature = tuple(numba.typeof(arg) for arg in args)
        if signature not in signatures.setdefault(call.kernel.key, []):
            signatures[call.kernel.key].append(signature)
    to_compile = [(kernels[key], missing) for key, sigs in signatures.items()
                  if (missing := cache.missing(kernels[key], sigs))]
    stats.kernels, stats.compiled = len(kernels), len(to_compile)
    stats.from_cache = stats.kernels - stats.compiled
    if to_compile:
        cache.compile_in_workers(to_compile, options.get("progress"), min(len(to_compile), os.cpu_count() or 1))
    functions = {key: cache.load(kernel) for key, kernel in kernels.items()}
    for key, sigs in signatures.items():
        for signature in sigs:
            functions[key].compile(signature)
    steps = [Step(call.node, call.kernel, functions[call.kernel.key], args)
             for call, args in zip(calls, resolved_args, strict=True)]
    stats.seconds = time.perf_counter() - start
    return NumbaExecutable(graph, steps, views, stats, arena, scratch)
