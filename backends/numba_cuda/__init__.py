"""The Numba CUDA backend: generated `cuda.jit` kernels, run on an NVIDIA GPU (or numba-cuda's simulator).

    executable = compile(graph, {"cache_dir": ..., "progress": True})
    outputs = executable({"image": x})

The weights are copied to the device once, at compile time; every activation lives in one device arena laid out
by the memory plan (`plan_memory`), so a call is one copy in per input, the kernel launches (no host round trip
between them), and one copy out per output.

Needs the `numba-cuda` package (`pip install 'cnncomp[cuda]'`) and a GPU; without a GPU, `NUMBA_ENABLE_CUDASIM=1`
(set before numba is first imported) runs the same kernels in numba-cuda's simulator, plain Python threads, about
0.5 ms per simulated thread: for tests on small shapes. `backends.numba_cuda.ptx` compiles every kernel of a graph
to PTX without a GPU. See `lowering` (which kernel each op becomes, launched how), `templates/` (the kernel
sources) and `kernels` (the on-disk kernel cache). This module imports `numba.cuda` only when asked to compile.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backends.numba_cuda.kernels import KernelCache, KernelSource
from backends.numba_cuda.lowering import NO_LAUNCH, LoweringContext, Slot, lower
from backends.numba_cuda.templates.common import Arena, Launch, Status
from cnncomp.errors import CnnCompError, GraphError
from cnncomp.ir import Graph
from cnncomp.passes.plan_memory import ALIGNMENT, plan_memory, plan_of
from cnncomp.progress import progress
from cnncomp.runtime import check_inputs

NO_GPU = "no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 to simulate)"
NOT_INSTALLED = "the numba-cuda backend needs the numba-cuda package: pip install 'cnncomp[cuda]'"


class CudaUnavailableError(CnnCompError):
    """numba-cuda is not installed, or there is no GPU (and the simulator is off)."""


def cuda_module(require_device: bool = True) -> Any:
    """`numba.cuda` from the numba-cuda package (numba's own, deprecated CUDA target is not used). With
    `require_device`, a GPU or the simulator must be there, else CudaUnavailableError says what to do."""
    try:
        import numba_cuda  # noqa: F401  (the package; numba.cuda is where it puts its API)
    except ImportError:
        raise CudaUnavailableError(NOT_INSTALLED) from None
    try:
        from numba import cuda
    except ImportError as exc:  # numba-cuda present but its CUDA Python bindings are not
        raise CudaUnavailableError(f"{NOT_INSTALLED} ({exc})") from None
    if require_device and not cuda.is_available():
        raise CudaUnavailableError(NO_GPU)
    return cuda


def simulating() -> bool:
    """Whether numba.cuda runs kernels in the simulator (NUMBA_ENABLE_CUDASIM was set when it was imported)."""
    from numba.core import config

    return bool(config.ENABLE_CUDASIM)


def _aligned(size: int) -> int:
    return -(-size // ALIGNMENT) * ALIGNMENT


@dataclass
class Lowered:
    """A graph as launches, decided without a device: the memory plan, every value's arena slot (constants after
    the planned arena, where nothing overwrites them), the arena's size and the launches in order."""

    plan: dict[str, Any]
    slots: dict[str, Slot]
    arena_bytes: int
    launches: list[Launch]
    status_slots: int


def lower_graph(graph: Graph) -> Lowered:
    """Lay out memory as the graph's memory plan says (a graph without one is planned here, as plan_memory
    would) and lower every node to launches."""
    graph.validate()
    try:
        plan = plan_of(graph)
    except GraphError:
        plan = plan_of(plan_memory(graph))
    slots: dict[str, Slot] = {}
    end = _aligned(plan["arena_bytes"])
    for node in graph.nodes:
        itemsize = np.dtype(node.type.dtype).itemsize
        if node.op == "constant":
            slots[node.name] = Slot(end // itemsize, node.type.size // node.type.batch, node.shape, node.type.dtype)
            end += _aligned(node.type.nbytes)
            continue
        slot = plan["tensors"][node.name]
        slots[node.name] = Slot(slot["offset"] // itemsize, slot["batch_stride"], node.shape, node.type.dtype)
    context = LoweringContext(graph, slots, plan)
    launches = [launch for node in graph.nodes if node.op not in NO_LAUNCH for launch in lower(node, context)]
    return Lowered(plan, slots, max(end, ALIGNMENT), launches, context.status_slots)


def argument_types(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The Numba types a launch's arguments have on the device: what the kernel is compiled for."""
    from numba import typeof, types

    kinds = []
    for arg in args:
        if isinstance(arg, Arena):
            kinds.append(types.Array(types.int64 if arg is Arena.INT else types.float32, 1, "C"))
        elif arg is Status.ARRAY:
            kinds.append(types.Array(types.int32, 1, "C"))
        elif isinstance(arg, np.ndarray):
            kinds.append(typeof(arg))
        elif isinstance(arg, (int, np.integer)):
            kinds.append(types.int64)
        else:
            raise TypeError(f"unexpected kernel argument {arg!r}")
    return tuple(kinds)


@dataclass
class CompileStats:
    kernels: int = 0  # distinct kernel modules
    compiled: int = 0  # compiled to machine code now (a GPU only)
    from_cache: int = 0  # loaded from the disk cache (a GPU only)
    launches: int = 0  # per call
    seconds: float = 0.0
    arena_bytes: int = 0
    scratch_bytes: int = 0  # the status words kernels report bad data in
    weight_bytes: int = 0
    simulator: bool = False


@dataclass
class Step:
    node: str
    kernel: KernelSource
    function: Any
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[Any, ...]


@dataclass
class CudaExecutable:
    """Callable: `executable({input_name: array}) -> {output_name: array}` (outputs are fresh host arrays)."""

    graph: Graph
    steps: list[Step]
    slots: dict[str, Slot]
    stats: CompileStats
    arena_views: dict[Arena, Any] = field(repr=False)  # the arena as float32 and as int64
    status: Any = field(repr=False)
    status_nodes: list[str] = field(default_factory=list)
    weights: list[Any] = field(repr=False, default_factory=list)  # keeps the device copies alive

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._copy_in(inputs)
        with _quiet_launches():
            for step in self.steps:
                step.function[step.grid, step.block](*step.args)
        self._check_status()
        return {name: self._copy_out(name) for name in self.graph.outputs}

    @property
    def source(self) -> dict[str, str]:
        """The generated kernel modules, by module name (each once, however many nodes use it)."""
        return {step.kernel.module_name: step.kernel.source for step in self.steps}

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[dict[str, Any]]:
        """Per-step median time in seconds over `repeat` runs, in execution order (each launch waited for)."""
        cuda = cuda_module()
        self._copy_in(inputs)
        times = np.zeros((repeat, len(self.steps)))
        with _quiet_launches():
            for run in range(repeat):
                for index, step in enumerate(self.steps):
                    start = time.perf_counter()
                    step.function[step.grid, step.block](*step.args)
                    cuda.synchronize()
                    times[run, index] = time.perf_counter() - start
        self._check_status()
        medians = np.median(times, axis=0)
        return [{"node": step.node, "kernel": step.kernel.family, "seconds": float(seconds)}
                for step, seconds in zip(self.steps, medians, strict=True)]

    def _view(self, slot: Slot) -> Any:
        return self.arena_views[slot.arena]

    def _copy_in(self, inputs: Mapping[str, np.ndarray]) -> None:
        for name, value in check_inputs(self.graph, inputs).items():
            slot = self.slots[name]
            arena = self._view(slot)
            if slot.contiguous:
                arena[slot.at: slot.at + value.size].copy_to_device(value.reshape(-1))
            else:  # an input the plan put inside a concat: its samples lie apart
                for img in range(slot.shape[0]):
                    start = slot.at + img * slot.batch
                    arena[start: start + slot.per_sample].copy_to_device(value[img].reshape(-1))

    def _copy_out(self, name: str) -> np.ndarray:
        slot = self.slots[name]
        count = slot.shape[0]
        span = self._view(slot)[slot.at: slot.at + (count - 1) * slot.batch + slot.per_sample].copy_to_host()
        if slot.contiguous:
            return span.reshape(slot.shape)
        return np.stack([span[img * slot.batch: img * slot.batch + slot.per_sample] for img in range(count)]
                        ).reshape(slot.shape)

    def _check_status(self) -> None:
        if self.status is None:
            return
        flags = self.status.copy_to_host()
        for node, flag in zip(self.status_nodes, flags, strict=True):
            if flag:
                raise GraphError(f"node {node!r}: an unpooling index lies outside the output plane")


@contextlib.contextmanager
def _quiet_launches() -> Iterator[None]:
    """numba-cuda warns on every launch of a small grid; our launch shapes are decided from the layer's size, so
    the warning says nothing the layer does not."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size .* will likely result in GPU under-utilization")
        yield


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> CudaExecutable:  # noqa: A001
    """Lower every node to kernel launches, load each kernel (compiling it on a GPU, or taking it from the kernel
    cache), copy the weights to the device and allocate the arena.

    options: `cache_dir` (default: `$CNNCOMP_CACHE_DIR` or `~/.cache/cnncomp`), `progress` (bool; default: on
    a terminal)."""
    options = dict(options or {})
    start = time.perf_counter()
    cuda = cuda_module()
    lowered = lower_graph(graph)
    cache = KernelCache(Path(options["cache_dir"]) if options.get("cache_dir") else None)
    stats = CompileStats(arena_bytes=lowered.arena_bytes, scratch_bytes=4 * lowered.status_slots,
                         launches=len(lowered.launches), simulator=simulating())

    arena = cuda.to_device(np.zeros(lowered.arena_bytes // 4, np.float32))
    views = {Arena.FLOAT: arena, Arena.INT: arena.view(np.int64)}
    for node in graph.nodes:
        if node.op == "constant":
            slot = lowered.slots[node.name]
            views[slot.arena][slot.at: slot.at + node.type.size].copy_to_device(
                graph.params[f"{node.name}.value"].reshape(-1))
    status = cuda.to_device(np.zeros(lowered.status_slots, np.int32)) if lowered.status_slots else None
    status_nodes = [launch.node for launch in lowered.launches
                    if any(arg is Status.ARRAY for arg in launch.args) and launch.kernel.family.endswith("clear")]

    uploaded: dict[int, tuple[np.ndarray, Any]] = {}

    def device_argument(arg: Any) -> Any:
        if isinstance(arg, Arena):
            return views[arg]
        if arg is Status.ARRAY:
            return status
        if isinstance(arg, np.ndarray):
            if id(arg) not in uploaded:  # the host array is kept, so its id stays its own
                uploaded[id(arg)] = (arg, cuda.to_device(arg))
                stats.weight_bytes += arg.nbytes
            return uploaded[id(arg)][1]
        return int(arg)

    functions: dict[str, Any] = {}
    compiled: set[tuple[str, tuple[Any, ...]]] = set()
    steps = []
    for launch in progress(lowered.launches, len(lowered.launches), "compiling kernels", options.get("progress")):
        kernel = launch.kernel
        if kernel.key not in functions:
            stats.kernels += 1
            if not stats.simulator:
                if cache.is_cached(kernel):
                    stats.from_cache += 1
                else:
                    stats.compiled += 1
            functions[kernel.key] = cache.load(kernel)
        function = functions[kernel.key]
        if not stats.simulator:
            signature = argument_types(launch.args)
            if (kernel.key, signature) not in compiled:
                function.compile(signature)
                compiled.add((kernel.key, signature))
        args = tuple(device_argument(arg) for arg in launch.args)
        steps.append(Step(launch.node, kernel, function, launch.grid, launch.block, args))
    stats.seconds = time.perf_counter() - start
    weights = [device for _, device in uploaded.values()]
    return CudaExecutable(graph, steps, lowered.slots, stats, views, status, status_nodes, weights)
