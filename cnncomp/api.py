"""The Python API: load a model, compile it for a backend, run it, save it and load it again.

    import cnncomp
    graph = cnncomp.load_model("resnet18")                  # a .cnn or .py file, or a zoo name
    model = cnncomp.compile(graph, backend="numba-cpu", opt_level=2, batch=1)
    logits = model(x)                                       # x: N x C x H x W float32; any N
    model.save("resnet18.cnnx")
    model = cnncomp.load("resnet18.cnnx")                   # kernels generated again, from the kernel cache

A model is compiled for one batch size; called with another, it compiles that variant once and keeps it. A model
compiled `fully_convolutional` also takes other image sizes. Backends are found by name (`cnncomp.plugins`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp import plugins
from cnncomp.data import default_preprocessing
from cnncomp.driver import load_model
from cnncomp.errors import CnnCompError, GraphError, InputError
from cnncomp.ir import Graph
from cnncomp.runtime import TUNED_LEVEL, Executable, GraphShapes, ProfileRow, positive_count
from cnncomp.summary import node_macs

DEFAULT_BACKEND = "numba-cpu"
__all__ = ["DEFAULT_BACKEND", "CompiledModel", "Profile", "compile", "load", "load_model", "tune"]

Shapes = tuple[tuple[str, tuple[int, ...]], ...]


def compile(model: Graph | str | Path, backend: str = DEFAULT_BACKEND, opt_level: int = 2,  # noqa: A001
            batch: int | None = 1, fully_convolutional: bool = False, *, disable: Sequence[str] = (),
            threads: int | None = None, preprocessing: Mapping[str, Any] | None = None,
            options: Mapping[str, Any] | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
            after_pass: Callable[[str, Graph], None] | None = None) -> CompiledModel:
    """Optimize `model` at `opt_level` (0-3, without the `disable`d passes) and compile it for `backend` at
    `batch` (None: the model's own). `threads` is how many cores one call uses (default: all; the backend's
    `threads` option). `preprocessing` says how images become its input (default: see `cnncomp.data`);
    `options` go to the backend (numba-cpu: `progress`, `cache_dir`, `concurrent_calls`). `input_shapes` and
    `after_pass` are `cnncomp.pipeline.optimize`'s (fully convolutional, the image size to compile for; a hook
    after each pass); what each pass did is the result's `pass_runs`."""
    from cnncomp.pipeline import optimize

    options = _with_threads(options, threads)
    graph = model if isinstance(model, Graph) else load_model(model)
    if batch is not None:
        graph = graph.with_batch(batch)
    started = time.perf_counter()
    optimized, runs = optimize(graph, opt_level, disable, fully_convolutional, after_pass=after_pass,
                               input_shapes=input_shapes)
    compiled = CompiledModel(optimized, backend, opt_level, fully_convolutional=fully_convolutional,
                             disabled_passes=tuple(disable), preprocessing=preprocessing, options=options)
    compiled.pass_runs = runs
    compiled.compile_seconds = time.perf_counter() - started
    return compiled


def load(path: str | Path, backend: str | None = None, options: Mapping[str, Any] | None = None, *,
         threads: int | None = None, content: bytes | None = None) -> CompiledModel:
    """A model saved with `CompiledModel.save`, verified (see `cnncomp.artifact`), compiled for the backend it
    was saved for (or `backend`), using `threads` cores per call (default: all). With `content`, the artifact
    is these bytes (read or received already) and `path` only names it."""
    from cnncomp import artifact

    started = time.perf_counter()
    manifest, graph = artifact.read(path, content)
    model = CompiledModel(graph, backend or manifest["backend"], manifest["opt_level"],
                          fully_convolutional=manifest["fully_convolutional"],
                          disabled_passes=tuple(manifest["disabled_passes"]),
                          preprocessing=manifest.get("preprocessing"), options=_with_threads(options, threads))
    model.compile_seconds = time.perf_counter() - started
    return model


def tune(model: Graph | str | Path, backend: str = DEFAULT_BACKEND, batch: int | None = 1, *,
         threads: int | None = None,
         on_layer: Callable[[int, int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Measure on this machine each way `backend` can compute each distinct layer of `model`, as -O3 optimizes it
    at `batch` (None: the model's own), on `threads` cores (default: all), and store the fastest in the backend's
    tuning record, which `compile` at -O3 uses from then on. `on_layer(done, total, layer)` is called after each
    layer. Returns the backend's report: what it chose and what it measured per layer."""
    from cnncomp.pipeline import optimize

    tuner = getattr(plugins.backend(backend), "tune", None)
    if tuner is None:
        raise CnnCompError(f"backend {backend!r} has nothing to tune; numba-cpu has")
    graph = model if isinstance(model, Graph) else load_model(model)
    if batch is not None:
        graph = graph.with_batch(batch)
    optimized, _ = optimize(graph, TUNED_LEVEL)
    return tuner(optimized, _with_threads(None, threads), on_layer)


def _with_threads(options: Mapping[str, Any] | None, threads: int | None) -> dict[str, Any]:
    """The backend options with `threads` set (if given, and a positive int)."""
    if threads is None:
        return dict(options or {})
    return {**(options or {}), "threads": positive_count("threads", threads, "threads")}


class Profile(list):
    """Where a call's time goes: a row per node that ran, in execution order, of `node`, `kernel` (what ran it,
    as the backend names it; a node that ran several, joined by "+"), `algorithm` (how, where the backend chose
    among several ways, such as numba-cpu's "winograd F(4x4,3x3)"; else None), `ms` (the median over the
    repeats; the sum of a node's kernels), `percent` (its share of all rows' time), `macs` (the node's, as
    `summary` counts them) and `gflops` (2 FLOPs per MAC over `ms`; None for a node without MACs).

    `end_to_end_ms` is the median of as many whole calls, timed apart: against `kernel_ms`, the rows' sum, it
    shows the time a call spends outside the kernels (input checks, copies in and out, dispatch). Prints as a
    table, slowest first, with those totals; `as_dict` is the same as plain data."""

    def __init__(self, rows: Iterable[dict[str, Any]], end_to_end_ms: float, repeat: int) -> None:
        super().__init__(rows)
        self.end_to_end_ms = end_to_end_ms
        self.repeat = repeat

    @property
    def kernel_ms(self) -> float:
        return sum(row["ms"] for row in self)

    @property
    def outside_ms(self) -> float:
        """The call's time outside the kernels (negative where timing noise exceeds it)."""
        return self.end_to_end_ms - self.kernel_ms

    @property
    def gflops(self) -> float | None:
        """All rows' MACs, 2 FLOPs each, over the kernel time."""
        macs = sum(row["macs"] for row in self)
        return 2 * macs / self.kernel_ms / 1e6 if macs and self.kernel_ms else None

    def slowest_first(self) -> list[dict[str, Any]]:
        return sorted(self, key=lambda row: row["ms"], reverse=True)

    def as_dict(self) -> dict[str, Any]:
        return {"repeat": self.repeat, "rows": self.slowest_first(), "kernel_ms": self.kernel_ms,
                "gflops": self.gflops, "end_to_end_ms": self.end_to_end_ms, "outside_ms": self.outside_ms}

    def __str__(self) -> str:
        rows = self.slowest_first()
        nodes = f"{len(rows)} node{'s' if len(rows) != 1 else ''}"
        totals = [f"sum ({nodes})", f"end-to-end call (median of {self.repeat})", "outside the kernels"]
        width = max(len("node"), *(len(row["node"]) for row in rows))
        # The totals' labels span the node and kernel columns.
        kernel_width = max(len("kernel"), *(len(row["kernel"]) for row in rows), *(len(t) - width - 2 for t in totals))
        lead = width + 2 + kernel_width

        def gflops(value: float | None) -> str:
            return f"{value:8.1f}" if value is not None else f"{'-':>8}"

        lines = [f"{'node':<{width}}  {'kernel':<{kernel_width}}  {'ms':>8}  {'%':>5}  {'GFLOP/s':>8}  algorithm"]
        lines += [f"{row['node']:<{width}}  {row['kernel']:<{kernel_width}}  {row['ms']:8.3f}  {row['percent']:5.1f}"
                  f"  {gflops(row['gflops'])}  {row['algorithm'] or '-'}" for row in rows]
        share = 100 * self.outside_ms / self.end_to_end_ms if self.end_to_end_ms else 0.0
        lines += [f"{totals[0]:<{lead}}  {self.kernel_ms:8.3f}  {100.0:5.1f}  {gflops(self.gflops)}",
                  f"{totals[1]:<{lead}}  {self.end_to_end_ms:8.3f}",
                  f"{totals[2]:<{lead}}  {self.outside_ms:8.3f}  {share:5.1f}% of the call"]
        return "\n".join(lines)


def _node_rows(graph: Graph, steps: Sequence[ProfileRow]) -> list[dict[str, Any]]:
    """The backend's profile rows (one per kernel) as Profile's rows (one per node, its kernels summed)."""
    by_node: dict[str, list[ProfileRow]] = {}
    for step in steps:
        by_node.setdefault(step["node"], []).append(step)
    total = sum(step["seconds"] for step in steps) or 1.0
    rows = []
    for name, parts in by_node.items():
        seconds = sum(part["seconds"] for part in parts)
        macs = node_macs(graph, graph.node(name))
        algorithms = [part["algorithm"] for part in parts if part.get("algorithm")]
        rows.append({"node": name, "kernel": "+".join(dict.fromkeys(part["kernel"] for part in parts)),
                     "algorithm": "+".join(dict.fromkeys(algorithms)) or None, "ms": 1e3 * seconds,
                     "percent": 100 * seconds / total, "macs": macs,
                     "gflops": 2 * macs / seconds / 1e9 if macs and seconds else None})
    return rows


class CompiledModel(GraphShapes):
    """A model compiled for a backend: call it on arrays, save it, read what was generated.

    `graph` is the optimized graph at the compiled batch size; `stats` the backend's compile figures (numba-cpu:
    kernels, compiled, from_cache, seconds, arena_bytes, scratch_bytes), `compile_seconds` the time of the whole
    compile (passes included) or load.
    """

    def __init__(self, graph: Graph, backend: str = DEFAULT_BACKEND, opt_level: int = 2, *,
                 fully_convolutional: bool = False, disabled_passes: tuple[str, ...] = (),
                 preprocessing: Mapping[str, Any] | None = None, options: Mapping[str, Any] | None = None) -> None:
        self.graph = graph
        self.backend = backend
        self.opt_level = opt_level
        self.fully_convolutional = fully_convolutional
        self.disabled_passes = disabled_passes
        self.preprocessing = dict(preprocessing) if preprocessing is not None else default_preprocessing(graph)
        self.options = dict(options or {})
        self.compile_seconds = 0.0
        self.pass_runs: list[Any] = []  # what each pass did (cnncomp.pipeline.PassRun), if compiled here
        self._backend = plugins.backend(backend)
        self._memory_plan: dict[str, Any] | None = None
        self._variants: dict[Shapes, Executable] = {self._key(self.input_shapes): self._compile(graph, self.options)}
        # Held while a batch-size variant compiles, so that concurrent callers compile each variant once.
        self._variants_lock = threading.Lock()

    # ----- what was compiled ---------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def variants(self) -> list[dict[str, tuple[int, ...]]]:
        """The input shapes compiled so far: the compiled ones first, then each other batch size met."""
        return [dict(key) for key in self._variants]

    @property
    def executable(self) -> Executable:
        """The backend's executable at the compiled shapes."""
        return self._variants[self._key(self.input_shapes)]

    @property
    def threads(self) -> int | None:
        """The cores one call uses, as compiled (None: the backend's default, all of them)."""
        return self.options.get("threads")

    @property
    def stats(self) -> dict[str, Any]:
        return dict(self.executable.stats)

    @property
    def source(self) -> dict[str, str]:
        """The generated kernel modules by name ({} for a backend that generates none, such as the reference)."""
        return dict(self.executable.source)

    @property
    def memory_plan(self) -> dict[str, Any]:
        """Where each tensor lives in the arena: the executable's plan, or, for a backend that allocates per
        operation, the one the planner makes for the graph."""
        plan = self.executable.memory_plan
        if plan is not None:
            return plan
        if self._memory_plan is None:
            from cnncomp.planner import memory_plan

            self._memory_plan = memory_plan(self.graph)
        return self._memory_plan

    @property
    def softmax_output(self) -> bool:
        """Whether the (single) output is a softmax already, so its values are probabilities."""
        return len(self.graph.outputs) == 1 and self.graph.node(self.graph.outputs[0]).op == "softmax"

    # ----- running -------------------------------------------------------------------------------------------
    def __call__(self, x: np.ndarray | Mapping[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """Run on one N x C x H x W float32 array (a model with one input) or a dict of them by input name; returns
        one array (a model with one output) or a dict by output name."""
        inputs = self._inputs(x)
        outputs = self._variant(inputs)(inputs)
        return next(iter(outputs.values())) if len(outputs) == 1 else outputs

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Like calling the model, always with dicts."""
        inputs = self._inputs(dict(inputs))
        return self._variant(inputs)(inputs)

    def profile(self, x: np.ndarray | Mapping[str, np.ndarray], repeat: int = 10) -> Profile:
        """Each node's kernel time, the median over `repeat` runs, in execution order, and the median of `repeat`
        whole calls timed apart (see `Profile`); after one call that warms up (thread pools, caches). A backend
        that runs operation by operation (reference, torch, onnxruntime) times each operation."""
        repeat = positive_count("repeat", repeat, "runs")
        inputs = self._inputs(x)
        executable = self._variant(inputs)
        self.run(inputs)
        try:
            steps = executable.profile(inputs, repeat)
        except NotImplementedError:
            raise CnnCompError(f"backend {self.backend!r} cannot time its kernels; it has no profile") from None
        calls = []
        for _ in range(repeat):  # timed as `bench` times a call
            start = time.perf_counter()
            self.run(inputs)
            calls.append(time.perf_counter() - start)
        return Profile(_node_rows(executable.graph, steps), 1e3 * float(np.median(calls)), repeat)

    def _inputs(self, x: np.ndarray | Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The inputs by name, each checked: a float32 array of the compiled shape, but for the batch size (and
        the image size, if compiled fully convolutional)."""
        expected = {node.name: node.type for node in self.graph.inputs}
        if isinstance(x, Mapping):
            inputs = dict(x)
        elif len(expected) == 1:
            inputs = {next(iter(expected)): x}
        else:
            raise InputError(f"model {self.name!r} has inputs {', '.join(expected)}; pass a dict of arrays")
        missing = [name for name in expected if name not in inputs]
        unknown = [name for name in inputs if name not in expected]
        if missing or unknown:
            problem = f"missing input {missing[0]!r}" if missing else f"unknown input {unknown[0]!r}"
            raise InputError(f"{problem}; model {self.name!r} takes {', '.join(map(repr, expected))}")
        for name, type_ in expected.items():
            value = inputs[name]
            if not isinstance(value, np.ndarray):
                raise InputError(f"input {name!r}: expected a numpy array, got {type(value).__name__}")
            if value.dtype != np.dtype(type_.dtype):
                raise InputError(f"input {name!r}: dtype {value.dtype}, expected {type_.dtype}")
            free = 2 if self.fully_convolutional else len(type_.shape)  # dims that must match after the batch
            fixed = type_.shape[1:free]
            if value.ndim != len(type_.shape) or value.shape[1:free] != fixed or value.shape[0] < 1:
                wanted = "x".join(["N", *map(str, fixed), *("H", "W")[: len(type_.shape) - free]])
                got = "x".join(map(str, value.shape)) or "a scalar"
                raise InputError(f"input {name!r}: shape {got}, expected {wanted} (compiled for {type_})")
        return inputs

    def _variant(self, inputs: Mapping[str, np.ndarray]) -> Executable:
        """The executable for these input shapes, compiled on first use (once, however many threads ask)."""
        shapes = {name: value.shape for name, value in inputs.items()}
        key = self._key(shapes)
        executable = self._variants.get(key)
        if executable is not None:
            return executable
        with self._variants_lock:
            if key not in self._variants:
                self._variants[key] = self._compile(self._graph_at(shapes), {**self.options, "progress": False})
            return self._variants[key]

    def _graph_at(self, shapes: Mapping[str, tuple[int, ...]]) -> Graph:
        """The graph at these input shapes (the backend plans its memory)."""
        try:
            return self.graph.with_input_shapes(shapes)
        except GraphError as exc:
            raise InputError(f"model {self.name!r} cannot run on inputs of shape "
                             f"{', '.join('x'.join(map(str, s)) for s in shapes.values())}: {exc}") from None

    def _compile(self, graph: Graph, options: Mapping[str, Any]) -> Executable:
        # The backend hears the opt level too: numba-cpu uses this machine's tuning record at -O3.
        executable = self._backend.compile(graph, {**options, "opt_level": self.opt_level})
        if not isinstance(executable, Executable):
            raise CnnCompError(f"backend {self.backend!r} returned a {type(executable).__name__}, which does not "
                               f"provide the executable contract (cnncomp.runtime.Executable)")
        return executable

    @staticmethod
    def _key(shapes: Mapping[str, tuple[int, ...]]) -> Shapes:
        return tuple(sorted((name, tuple(shape)) for name, shape in shapes.items()))

    # ----- saving --------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the `.cnnx` artifact (see `cnncomp.artifact`); the file appears whole or not at all."""
        from cnncomp import artifact

        return artifact.save(self, path)

    def save_standalone(self, path: str | Path) -> tuple[Path, Path]:
        """Write one Python file that runs this model with numpy and numba only, and its weights beside it
        (`model.py`, `model.npz`), where the backend can (its plugin's `write_standalone`: numba-cpu's)."""
        write_standalone = getattr(self._backend, "write_standalone", None)
        if write_standalone is None:
            raise CnnCompError(f"backend {self.backend!r} writes no standalone program; compile it with -b numba-cpu")
        return write_standalone(self, path)

    def __repr__(self) -> str:
        shapes = ", ".join(f"{name}: {'x'.join(map(str, shape))}" for name, shape in self.input_shapes.items())
        return f"CompiledModel({self.name!r}, {self.backend}, -O{self.opt_level}, {shapes})"
