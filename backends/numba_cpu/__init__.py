"""The Numba CPU backend: generated kernels, compiled with Numba and cached on disk, run over one arena.

    executable = compile(graph, {"cache_dir": ..., "progress": True})
    outputs = executable({"image": x})

See `lowering` (which kernel each op becomes), `resolve` (which convolution algorithm), `templates/` (the
kernel sources) and `kernels` (the on-disk kernel cache).

Threads: every kernel splits its work over Numba's threads (a run of consecutive jobs per thread, static) and
calls BLAS from inside them, so SciPy's BLAS is set to one thread (`blas.configure_single_threaded`); the
two pools never compete for the cores. The `threads` option sets how many threads a call's kernels split their
work for (default: all cores); a call sets Numba's thread count for its own thread only (Numba keeps it per
thread) and puts it back after.

Concurrent calls: each call takes a workspace (arena, scratch region, the kernels' arguments bound to them) from a
pool of at most `concurrent_calls` (default `cnncomp.runtime.CONCURRENT_CALLS`), made on demand by rebasing the
first workspace's views onto fresh memory; weights are shared. Kernels are compiled `nogil`, so calls from several
Python threads run at the same time. Numba's threading layer is TBB, which cnncomp installs and Numba picks by
default: each parallel kernel is a TBB parallel_for in an arena of its own, so concurrent calls share TBB's worker
threads instead of each starting a team (OpenMP would put 2 x 2 threads on 2 cores). On the workqueue layer, which
aborts on concurrent launches, calls take turns.

Scheduling under contention (measured on the project machine, 2 cores; OpenMP was the layer before): with
OpenMP, a parallel kernel's barrier waits for every thread of the team, so when a core is taken (another
process, or numpy's OpenBLAS threads spinning for about 0.1 s after a matmul) every kernel of a model waits a
scheduler time slice for its descheduled thread: right after a numpy matmul LeNet-5 took 62 ms instead of 0.2 ms
(ten kernels, a few ms each), ResNet-18 42 ms instead of 16. With TBB, work a descheduled thread has not
started is taken by the caller, and the same calls take 0.6 ms and 33 ms. What remains is the core the other
pool holds: OpenBLAS's spinning thread keeps its core (a 2-thread kernel after a matmul runs at the speed of
one thread), and no scheduling of ours gets it back; numpy's own setting does (OPENBLAS_NUM_THREADS=1 removed
the stalls in a micro-benchmark). cnncomp does not change other libraries' settings behind the user's back.
OpenBLAS 0.3.31 (numpy 2.4's) spins on `nop`s, not `sched_yield`, for 2^28 cycles (OPENBLAS_THREAD_TIMEOUT,
read once when it loads), and has no call that ends the spin except `blas_thread_shutdown_`: calling that before
each call brought ResNet-18 after a matmul from 29.3 to 19.4 ms (idle 16.6) and EfficientNet-B0 from 22.0 to
16.4 (idle 13.3), but it deadlocks when another thread's numpy matmul is in flight (it joins a worker that is still
working), so it is not used.
Nodes with little work (lowering.runs_serial) run serial kernels on the calling thread: no parallel region to pay
for or to wait in. Tried and not kept, because they measured no better: jobs taken from an atomic counter instead
of the static split, and Numba's loops in chunks of 8 (ResNet-18 with one busy core 31.7 ms, right after a matmul
33.0 ms, two busy cores 57 ms, against 16 ms idle: one thread's speed). With one core taken, the scheduler keeps
Numba's worker on the caller's core (it wakes there, and moving it would not even the load), so the model gets one
core whatever the split; on two busy cores a single thread did better than two (ResNet-18 44 against 60 ms). Nor
did running a call on only the cores other processes leave idle (their running threads read from /proc, as OpenMP's
OMP_DYNAMIC does from the load average): on two busy cores, alternating calls of both in one process, ResNet-18
35.3 against 35.5 ms, EfficientNet-B0 45.5 against 44.4, GoogLeNet 63.4 against 65.4, ResNet-50 122 against 114.
Nor did finer shares (kernels tiled for 4 or 8 threads on Numba's 2, which TBB then hands out as threads come
free): ResNet-18 60.1, 62.4, 60.2 ms on two busy cores; EfficientNet-B0 46.1, 44.3, 47.0.
`benchmarks/real_use.py` measures all of this against ONNX Runtime and PyTorch (benchmarks/README.md).

fastmath: kernels that sum (convolutions, dense, pools, LRN, softmax, upsample, the elementwise kernels) are
compiled with the fastmath flags reassoc, contract, nsz and arcp, so loops vectorize and use FMA; not nnan,
ninf or afn, so NaN and inf propagate as IEEE says and exp/tanh keep their precision. Every kernel divides as IEEE
and numpy do (error_model="numpy": x / 0 is inf or NaN): Numba's default checks each divisor and raises
ZeroDivisionError, and that branch kept loops with a division (sigmoid, SiLU, averages) from vectorizing.
mathlib's fast_exp and fast_tanh (within 3e-7 relative) vectorize where Numba's calls to libm do not: tanh went
from 10 to 0.5 ns a value, most of LeNet-5's time. The data-movement kernels
(pad, crop, strided slice, unpool, max-pool indices) compute nothing and are compiled without it. The
numerical tests (tests/backends/test_numba_cpu.py, test_zoo_numba.py) pass with these flags at atol/rtol 1e-4
per op and 1e-3 relative per zoo model; Winograd's F(4x4) transforms add about 1e-5 relative error per layer.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numba
import numpy as np

from backends.numba_cpu import blas, tuning
from backends.numba_cpu.kernels import KernelCache, KernelSource
from backends.numba_cpu.lowering import LoweringContext, lower
from backends.numba_cpu.templates.common import KernelCall, Scratch
from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.planner import ALIGNMENT, aligned, memory_plan
from cnncomp.runtime import (
    TUNED_LEVEL,
    GraphShapes,
    WorkspacePool,
    check_inputs,
    concurrent_calls_option,
    offset_in,
    positive_count,
)

# `cnncomp tune`: the backend's tuner, found through the plugin registry.
tune = tuning.tune


@dataclass
class CompileStats:
    kernels: int = 0
    compiled: int = 0
    from_cache: int = 0
    seconds: float = 0.0
    arena_bytes: int = 0  # per workspace
    scratch_bytes: int = 0  # per workspace
    threads: int = 1
    threading_layer: str = ""


@dataclass
class Step:
    node: str
    kernel: KernelSource
    function: Any


@dataclass
class Workspace:
    """One call's working memory: the arena (every value), the scratch region (the kernels' temporaries), each
    value's view into them and each step's arguments bound to those views."""

    arena: np.ndarray = field(repr=False)
    scratch: np.ndarray = field(repr=False)
    views: dict[str, np.ndarray] = field(repr=False)
    args: list[tuple[Any, ...]] = field(repr=False)

    def rebased(self) -> Workspace:
        """The same layout over a fresh arena and scratch region: every argument or view that points into this
        workspace's memory points at the same offset of the new one; weights and constants stay shared."""
        arena, scratch = aligned_buffer(self.arena.nbytes), aligned_buffer(self.scratch.nbytes)
        regions = [(self.arena, arena), (self.scratch, scratch)]

        def moved(value: Any) -> Any:
            if not isinstance(value, np.ndarray) or value.size == 0:
                return value
            for old, new in regions:
                offset = offset_in(value, old)
                if offset is not None:
                    return np.ndarray(value.shape, value.dtype, new, offset, value.strides)
            return value

        return Workspace(arena, scratch, {name: moved(view) for name, view in self.views.items()},
                         [tuple(moved(arg) for arg in args) for args in self.args])


def aligned_buffer(nbytes: int) -> np.ndarray:
    """Zeroed bytes starting on a cache line (AVX-512 vectors), so every workspace has the same alignment."""
    raw = np.zeros(nbytes + ALIGNMENT, np.uint8)
    start = -raw.__array_interface__["data"][0] % ALIGNMENT
    return raw[start: start + nbytes]


# The workqueue threading layer aborts the process when two threads launch parallel kernels at once; with it,
# calls run one at a time (TBB, which pip installs with cnncomp, and OpenMP are safe).
_WORKQUEUE_LOCK = threading.Lock()


@dataclass
class NumbaExecutable(GraphShapes):
    """Callable: `executable({input_name: array}) -> {output_name: array}` (outputs are fresh arrays).

    Safe to call from many threads at once: each call runs in a workspace of its own from `pool` (at most
    `concurrent_calls` at once), with `threads` of Numba's threads (set for the calling thread only, and put back
    after). `workspace` is the first one, laid out at compile time (the standalone program reads its layout)."""

    graph: Graph
    steps: list[Step]
    workspace: Workspace
    compile_stats: CompileStats
    plan: dict[str, Any] = field(repr=False)
    threads: int = 1
    concurrent_calls: int = 1
    pool: WorkspacePool[Workspace] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pool = WorkspacePool(self.workspace.rebased, self.concurrent_calls, first=self.workspace)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_inputs(self.graph, inputs)
        with self.pool.take() as workspace, self._threads():
            for name, value in checked.items():
                np.copyto(workspace.views[name], value)
            for step, args in zip(self.steps, workspace.args, strict=True):
                self._run(step, args)
            return {name: workspace.views[name].copy() for name in self.graph.outputs}

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        """Numba's thread count for this thread's calls (a thread-local setting), and the one-at-a-time lock
        where the threading layer needs it."""
        previous = numba.get_num_threads()
        numba.set_num_threads(min(self.threads, numba.config.NUMBA_NUM_THREADS))
        try:
            if self.compile_stats.threading_layer == "workqueue":
                with _WORKQUEUE_LOCK:
                    yield
            else:
                yield
        finally:
            numba.set_num_threads(previous)

    @staticmethod
    def _run(step: Step, args: tuple[Any, ...]) -> None:
        try:
            step.function(*args)
        except ValueError as exc:  # raised by a kernel on bad data, e.g. an unpooling index out of range
            raise GraphError(f"node {step.node!r}: {exc}") from None

    @property
    def stats(self) -> dict[str, Any]:
        return {**asdict(self.compile_stats), "workspaces": self.pool.made}

    @property
    def memory_plan(self) -> dict[str, Any]:
        return self.plan

    @property
    def source(self) -> dict[str, str]:
        """The generated kernel modules, by module name (each once, however many nodes use it)."""
        return {step.kernel.module_name: step.kernel.source for step in self.steps}

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[dict[str, Any]]:
        """Per-step median time in seconds over `repeat` runs, in execution order, with each kernel's
        `algorithm`."""
        checked = check_inputs(self.graph, inputs)
        times = np.zeros((repeat, len(self.steps)))
        with self.pool.take() as workspace, self._threads():
            for name, value in checked.items():
                np.copyto(workspace.views[name], value)
            for run in range(repeat):
                for index, (step, args) in enumerate(zip(self.steps, workspace.args, strict=True)):
                    start = time.perf_counter()
                    self._run(step, args)
                    times[run, index] = time.perf_counter() - start
        medians = np.median(times, axis=0)
        return [{"node": step.node, "kernel": step.kernel.family, "algorithm": algorithm(step.kernel),
                 "seconds": float(seconds)} for step, seconds in zip(self.steps, medians, strict=True)]


# How each kernel family that is one of several ways to compute its op computes it (see `resolve`).
ALGORITHMS = {
    "conv2d_im2col": "im2col+gemm",
    "conv2d_im2col_whole": "im2col+gemm",
    "conv2d_pointwise": "gemm (1x1)",
    "conv2d_depthwise": "depthwise direct",
    "conv2d_direct": "direct",
    "pointwise_conv2d_gated": "gemm (1x1, gated)",
    "separable_conv2d": "depthwise+gemm",
    "separable_conv2d_shared": "depthwise+gemm (whole map)",
    "conv_transpose2d": "gemm+scatter",
    "dense": "gemm",
    "dense_rows": "gemv",
}


def algorithm(kernel: KernelSource) -> str | None:
    """The algorithm a kernel computes its op with, for profiles: Winograd's tile, im2col+gemm, direct (depthwise
    when each group has one channel), ...; None for a kernel that is the only way its op is computed."""
    if kernel.family.startswith("conv2d_winograd_f"):
        tile = kernel.family.removeprefix("conv2d_winograd_f").split("_")[0]
        return f"winograd F({tile},3x3)"
    return ALGORITHMS.get(kernel.family)


def _memory(graph: Graph) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
    """The arena and a view of every value in it, as the memory plan (`cnncomp.planner`) places them. Constants
    are views of their parameter."""
    plan = memory_plan(graph)
    arena = aligned_buffer(plan["arena_bytes"])
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
    """One scratch region for all steps (they run one after another), each step's scratch laid out from 0."""
    layouts, largest = [], 0
    for call in calls:
        offset, placed = 0, []
        for arg in call.args:
            if isinstance(arg, Scratch):
                placed.append(offset)
                offset += aligned(int(np.prod(arg.shape)) * np.dtype(arg.dtype).itemsize)
        layouts.append(placed)
        largest = max(largest, offset)
    buffer = aligned_buffer(largest)
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


def threads_option(options: Mapping[str, Any]) -> int:
    """The threads a call's kernels split their work for: the `threads` option, else the threads Numba started
    (NUMBA_NUM_THREADS, all cores by default). A call runs on at most that many of Numba's threads."""
    requested = options.get("threads")
    return numba.config.NUMBA_NUM_THREADS if requested is None else positive_count("threads", requested, "threads")


def threading_layer() -> str:
    """The Numba threading layer this process runs parallel kernels on, starting Numba's threads if needed:
    with the default configuration Numba picks TBB (installed with cnncomp), else OpenMP, else workqueue."""
    from numba.np.ufunc import parallel

    parallel._launch_threads()
    return numba.threading_layer()


def write_standalone(model: Any, path: str | Path) -> tuple[Path, Path]:
    """Write a model compiled for this backend as one Python program that needs only numpy, numba and scipy
    (`path`, a `.py`), with its weights beside it (`.npz`); see `standalone`."""
    from backends.numba_cpu import standalone

    return standalone.write(model, path)


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> NumbaExecutable:  # noqa: A001
    """Lower every node to kernel calls, compile (or load from the kernel cache) each kernel, lay out memory.

    options: `cache_dir` (default: `$CNNCOMP_CACHE_DIR` or `~/.cache/cnncomp`), `progress` (bool; default: on
    a terminal), `threads` (cores a call uses; default all), `concurrent_calls` (calls that run at once, each in
    a workspace of its own; default `cnncomp.runtime.CONCURRENT_CALLS`), `conv2d_algorithms` ({node name:
    algorithm} overriding `resolve`, for tests and measurements), `opt_level` (at 3 and above, the choices of
    this machine's tuning record, see `tuning`; below, `resolve`'s defaults)."""
    options = dict(options or {})
    start = time.perf_counter()
    graph.validate()
    threads = threads_option(options)
    concurrent_calls = concurrent_calls_option(options)
    blas.configure_single_threaded()
    arena, views, plan = _memory(graph)
    tuned = tuning.tuned_algorithms(graph, threads) if options.get("opt_level", 0) >= TUNED_LEVEL else {}
    context = LoweringContext(graph, views, threads, plan, {**tuned, **options.get("conv2d_algorithms", {})})
    calls = [call for node in graph.nodes if node.op not in ("input", "constant") for call in lower(node, context)]
    scratch, resolved_args = _resolve_scratch(calls)

    cache = KernelCache(Path(options["cache_dir"]) if options.get("cache_dir") else None)
    stats = CompileStats(arena_bytes=arena.nbytes, scratch_bytes=scratch.nbytes, threads=threads,
                         threading_layer=threading_layer())
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
    steps = [Step(call.node, call.kernel, functions[call.kernel.key]) for call in calls]
    stats.seconds = time.perf_counter() - start
    return NumbaExecutable(graph, steps, Workspace(arena, scratch, views, resolved_args), stats, plan, threads,
                           concurrent_calls)
