"""The Numba CUDA backend: generated `cuda.jit` kernels, run on an NVIDIA GPU (or numba-cuda's simulator).

    executable = compile(graph, {"cache_dir": ..., "progress": True, "concurrent_calls": 4})
    outputs = executable({"image": x})

The weights are copied to the device once, at compile time, and shared by every call. A call runs in a working set
of its own: a device arena laid out by the memory plan (`cnncomp.planner`) that holds every activation (and a copy of
the graph's constants, after the planned part), a status buffer, and a CUDA stream on which it copies each input
in, launches every kernel (no host round trip between them) and copies each output out, then waits for that stream.

The executable is safe to call from many threads at once. Working sets come from a pool: a call takes a free one,
or makes a new one while fewer than `concurrent_calls` exist (the first is made at compile time), or else waits for
one to be returned. On a GPU, concurrent calls run on their own streams and overlap as far as the device allows;
in the simulator their kernel launches take turns (it runs one launch at a time), their copies do not.

Needs the `numba-cuda` package (`pip install 'cnncomp[cuda]'`) and a GPU; without a GPU, `NUMBA_ENABLE_CUDASIM=1`
(set before numba is first imported) runs the same kernels in numba-cuda's simulator, plain Python threads, about
0.5 ms per simulated thread: for tests on small shapes. `backends.numba_cuda.ptx` compiles every kernel of a graph
to PTX without a GPU. See `lowering` (which kernel each op becomes, launched how), `resolve` (which convolution
algorithm), `templates/` (the kernel sources) and `kernels` (the on-disk kernel cache). This module imports
`numba.cuda` only when asked to compile.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.numba_cuda.kernels import KernelCache, KernelSource
from backends.numba_cuda.lowering import NO_LAUNCH, LoweringContext, Slot, lower
from backends.numba_cuda.templates.common import Arena, Launch, Status
from cnncomp.errors import CnnCompError, GraphError
from cnncomp.ir import Graph
from cnncomp.planner import ALIGNMENT, aligned, memory_plan
from cnncomp.progress import progress
from cnncomp.runtime import GraphShapes, ProfileRow, WorkspacePool, check_inputs, concurrent_calls_option

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
    """Lay out memory as the memory plan (`cnncomp.planner`) says and lower every node to launches."""
    graph.validate()
    plan = memory_plan(graph)
    slots: dict[str, Slot] = {}
    end = aligned(plan["arena_bytes"])
    for node in graph.nodes:
        itemsize = np.dtype(node.type.dtype).itemsize
        if node.op == "constant":
            slots[node.name] = Slot(end // itemsize, node.type.size // node.type.batch, node.shape, node.type.dtype)
            end += aligned(node.type.nbytes)
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
    max_registers: int = 0  # the most registers any kernel's thread takes, which bounds occupancy (a GPU only)
    launches: int = 0  # per call
    seconds: float = 0.0
    arena_bytes: int = 0  # per working set
    scratch_bytes: int = 0  # the status words kernels report bad data in, per working set
    weight_bytes: int = 0
    simulator: bool = False


@dataclass
class Step:
    """One kernel launch. `args` holds the weights as device arrays (shared by every call) and the Arena and Status
    placeholders, which each working set binds to its own arena and status buffer."""

    node: str
    kernel: KernelSource
    function: Any
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[Any, ...]


@dataclass
class WorkingSet:
    """What one call uses alone: its device memory, its stream, and every step's launch bound to them (and to the
    shared weights), in order."""

    arena: dict[Arena, Any]  # the arena as float32 and as int64 (same memory)
    status: Any  # the status buffer; None when no kernel reports bad data
    stream: Any
    launches: list[Callable[[], None]]


class CudaExecutable(GraphShapes):
    """Callable: `executable({input_name: array}) -> {output_name: array}` (outputs are fresh host arrays). Provides
    the executable contract (`cnncomp.runtime.Executable`); safe to call from many threads (see the module
    docstring)."""

    def __init__(self, graph: Graph, steps: list[Step], lowered: Lowered, compile_stats: CompileStats,
                 status_nodes: list[str], weights: list[Any], concurrent_calls: int) -> None:
        self.graph = graph
        self.steps = steps
        self.slots = lowered.slots
        self.compile_stats = compile_stats
        self.status_nodes = status_nodes
        self.weights = weights  # keeps the device copies alive
        # Not the whole Lowered: its launches hold host copies of the weights.
        self._plan = lowered.plan
        self._arena_bytes = lowered.arena_bytes
        self._status_slots = lowered.status_slots
        self._pool = WorkspacePool(self._new_working_set, concurrent_calls)

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        checked = check_inputs(self.graph, inputs)
        with self._pool.take() as work:
            self._copy_in(work, checked)
            for launch in work.launches:
                launch()
            spans = {name: self._span(work, name).copy_to_host(stream=work.stream) for name in self.graph.outputs}
            flags = self._copy_status(work)
            work.stream.synchronize()
        self._check_status(flags)
        return {name: self._unpack(name, span) for name, span in spans.items()}

    @property
    def concurrent_calls(self) -> int:
        """How many calls run at once at most: the size of the pool of working sets."""
        return self._pool.size

    @property
    def memory_plan(self) -> dict[str, Any]:
        """The memory plan every working set's arena is laid out by (`cnncomp.planner`'s format)."""
        return self._plan

    @property
    def source(self) -> dict[str, str]:
        """The generated kernel modules, by module name (each once, however many nodes use it)."""
        return {step.kernel.module_name: step.kernel.source for step in self.steps}

    @property
    def stats(self) -> dict[str, Any]:
        """The compile figures (`CompileStats`) as a plain dict."""
        return asdict(self.compile_stats)

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[ProfileRow]:
        """Per-step median time in seconds over `repeat` runs, in execution order (each launch waited for)."""
        checked = check_inputs(self.graph, inputs)
        times = np.zeros((repeat, len(self.steps)))
        with self._pool.take() as work:
            self._copy_in(work, checked)
            work.stream.synchronize()
            for run in range(repeat):
                for index, launch in enumerate(work.launches):
                    start = time.perf_counter()
                    launch()
                    work.stream.synchronize()
                    times[run, index] = time.perf_counter() - start
            flags = self._copy_status(work)
            work.stream.synchronize()
        self._check_status(flags)
        medians = np.median(times, axis=0)
        return [{"node": step.node, "kernel": step.kernel.family, "seconds": float(seconds)}
                for step, seconds in zip(self.steps, medians, strict=True)]

    def _new_working_set(self) -> WorkingSet:
        """A zeroed arena holding the constants, a zeroed status buffer, a stream, and the launches bound to them."""
        cuda = cuda_module()
        arena = cuda.to_device(self._arena_image())
        views = {Arena.FLOAT: arena, Arena.INT: arena.view(np.int64)}
        status = cuda.to_device(np.zeros(self._status_slots, np.int32)) if self._status_slots else None
        stream = cuda.stream()

        def bound(arg: Any) -> Any:
            if isinstance(arg, Arena):
                return views[arg]
            return status if arg is Status.ARRAY else arg

        with _quiet_launches():  # numba-cuda warns when it configures a launch of a small grid
            launches = [self._bind(step, tuple(bound(arg) for arg in step.args), stream) for step in self.steps]
        return WorkingSet(views, status, stream, launches)

    def _arena_image(self) -> np.ndarray:
        """A new arena's contents, on the host: zeros, and each constant in its slot after the planned part."""
        image = np.zeros(self._arena_bytes // 4, np.float32)
        views = {Arena.FLOAT: image, Arena.INT: image.view(np.int64)}
        for node in self.graph.nodes:
            if node.op == "constant":
                slot = self.slots[node.name]
                views[slot.arena][slot.at: slot.at + node.type.size] = self.graph.params[f"{node.name}.value"].ravel()
        return image

    def _bind(self, step: Step, args: tuple[Any, ...], stream: Any) -> Callable[[], None]:
        """The step's launch on `stream` with `args`, ready to run."""
        if self.compile_stats.simulator:
            return functools.partial(_simulated_launch, step, args)
        return functools.partial(step.function[step.grid, step.block, stream], *args)

    def _copy_in(self, work: WorkingSet, inputs: Mapping[str, np.ndarray]) -> None:
        for name, value in inputs.items():
            slot = self.slots[name]
            arena = work.arena[slot.arena]
            if slot.contiguous:
                arena[slot.at: slot.at + value.size].copy_to_device(value.reshape(-1), stream=work.stream)
            else:  # an input the plan put inside a concat: its samples lie apart
                for img in range(slot.shape[0]):
                    start = slot.at + img * slot.batch
                    arena[start: start + slot.per_sample].copy_to_device(value[img].reshape(-1), stream=work.stream)

    def _span(self, work: WorkingSet, name: str) -> Any:
        """The part of the arena that holds the value `name`, from its first element to its last."""
        slot = self.slots[name]
        return work.arena[slot.arena][slot.at: slot.at + (slot.shape[0] - 1) * slot.batch + slot.per_sample]

    def _unpack(self, name: str, span: np.ndarray) -> np.ndarray:
        """The value `name` from its span copied to the host."""
        slot = self.slots[name]
        if slot.contiguous:
            return span.reshape(slot.shape)
        return np.stack([span[img * slot.batch: img * slot.batch + slot.per_sample] for img in range(slot.shape[0])]
                        ).reshape(slot.shape)

    def _copy_status(self, work: WorkingSet) -> np.ndarray | None:
        """Start copying the status buffer to the host (valid once the stream is synchronized)."""
        return None if work.status is None else work.status.copy_to_host(stream=work.stream)

    def _check_status(self, flags: np.ndarray | None) -> None:
        if flags is None:
            return
        for node, flag in zip(self.status_nodes, flags, strict=True):
            if flag:
                raise GraphError(f"node {node!r}: an unpooling index lies outside the output plane")


# numba-cuda's simulator keeps the launch it runs in module globals (and the grid in the kernel object), so it runs
# one launch at a time in the whole process.
_SIMULATOR_LAUNCH = threading.Lock()


def _simulated_launch(step: Step, args: tuple[Any, ...]) -> None:
    with _SIMULATOR_LAUNCH:
        step.function[step.grid, step.block](*args)


# warnings.catch_warnings swaps process-wide state: one at a time here.
_WARNINGS = threading.Lock()


@contextlib.contextmanager
def _quiet_launches() -> Iterator[None]:
    """numba-cuda warns on every launch configuration of a small grid; our launch shapes are decided from the
    layer's size, so the warning says nothing the layer does not."""
    with _WARNINGS, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Grid size .* will likely result in GPU under-utilization")
        yield


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> CudaExecutable:  # noqa: A001
    """Lower every node to kernel launches, load each kernel (compiling it on a GPU, or taking it from the kernel
    cache), copy the weights to the device and make the first working set.

    options: `cache_dir` (default: `$CNNCOMP_CACHE_DIR` or `~/.cache/cnncomp`), `progress` (bool; default: on
    a terminal), `concurrent_calls` (how many calls run at once at most, each in a working set of its own;
    default cnncomp.runtime.CONCURRENT_CALLS)."""
    options = dict(options or {})
    concurrent_calls = concurrent_calls_option(options)
    start = time.perf_counter()
    weights = DeviceWeights(cuda_module())
    lowered = lower_graph(graph)
    cache = KernelCache(Path(options["cache_dir"]) if options.get("cache_dir") else None)
    stats = CompileStats(arena_bytes=lowered.arena_bytes, scratch_bytes=4 * lowered.status_slots,
                         launches=len(lowered.launches), simulator=simulating())
    status_nodes = [launch.node for launch in lowered.launches
                    if any(arg is Status.ARRAY for arg in launch.args) and launch.kernel.family.endswith("clear")]
    steps = _steps(lowered.launches, cache, weights, stats, options.get("progress"))
    stats.weight_bytes = weights.nbytes
    executable = CudaExecutable(graph, steps, lowered, stats, status_nodes, weights.arrays, concurrent_calls)
    stats.seconds = time.perf_counter() - start
    return executable


class DeviceWeights:
    """The host arrays among the launches' arguments, each copied to the device once, however many launches read
    it."""

    def __init__(self, cuda: Any) -> None:
        self.cuda = cuda
        self._uploaded: dict[int, tuple[np.ndarray, Any]] = {}  # the host array is kept, so its id stays its own

    def argument(self, arg: Any) -> Any:
        """A launch argument as the device sees it: Arena and Status stay placeholders (each working set binds its
        own), arrays become device arrays, numbers ints."""
        if isinstance(arg, (Arena, Status)):
            return arg
        if isinstance(arg, np.ndarray):
            if id(arg) not in self._uploaded:
                self._uploaded[id(arg)] = (arg, self.cuda.to_device(arg))
            return self._uploaded[id(arg)][1]
        return int(arg)

    @property
    def arrays(self) -> list[Any]:
        return [device for _, device in self._uploaded.values()]

    @property
    def nbytes(self) -> int:
        return sum(host.nbytes for host, _ in self._uploaded.values())


def _steps(launches: list[Launch], cache: KernelCache, weights: DeviceWeights, stats: CompileStats,
           progress_enabled: bool | None) -> list[Step]:
    """Each launch as a step: its kernel loaded (on a GPU: from the disk cache or compiled, for each signature it
    is launched with, and its module loaded into the device's context), its arguments on the device. Counts the
    kernels in `stats`."""
    functions: dict[str, Any] = {}
    compiled: set[tuple[str, tuple[Any, ...]]] = set()
    steps = []
    for launch in progress(launches, len(launches), "compiling kernels", progress_enabled):
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
                # Reading the registers loads the kernel's module into the device's context now: numba-cuda loads
                # it at the kernel's first launch otherwise, and two threads launching it first at once collide.
                registers = function.compile(signature).regs_per_thread
                stats.max_registers = max(stats.max_registers, registers)
                compiled.add((kernel.key, signature))
        args = tuple(weights.argument(arg) for arg in launch.args)
        steps.append(Step(launch.node, kernel, function, launch.grid, launch.block, args))
    return steps
