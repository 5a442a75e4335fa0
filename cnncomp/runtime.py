"""The executable contract: what every backend's `compile(graph, options)` returns, and the input check all of them
run first.

Thread safety is part of the contract: an executable may be called from any number of threads at once, and each
call returns exactly what it would return alone. Calls overlap as far as the backend allows (`concurrent_calls`);
beyond that they wait for each other, they never share working memory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, Protocol, TypeVar, runtime_checkable

import numpy as np

from cnncomp.errors import CnnCompError, InputError
from cnncomp.ir import Graph

# The backend options every backend hears (`api.CompiledModel` sets them): `opt_level`, the level the graph was
# optimized at; from TUNED_LEVEL on, a backend uses what `cnncomp tune` measured on this machine (numba-cpu's
# tuning record), below it the defaults it ships with.
TUNED_LEVEL = 3

# A profile row: {"node": name, "kernel": what ran it, "seconds": median time over the repeats}, and, from a
# backend that chooses among several ways to compute an op, "algorithm": the one this kernel uses (None where
# there was no choice), such as numba-cpu's "winograd F(4x4,3x3)" or "im2col+gemm".
ProfileRow = dict[str, Any]


@runtime_checkable
class Executable(Protocol):
    """A graph compiled for one backend at fixed input shapes. `api.CompiledModel` relies on this and nothing else.

    - `executable({input: array})` returns `{output: array}`: fresh arrays the caller owns, in the graph's output
      order. Inputs are checked first (`check_inputs`); a bad one is an InputError naming it.
    - Safe to call from many threads at once (see the module docstring); `concurrent_calls` says how many calls
      run at the same time at most (None: no limit of the backend's own); more callers wait for a free slot.
    - `input_shapes`, `output_shapes`: the compiled shapes by name.
    - `memory_plan`: where each value lives in the backend's arena (`cnncomp.planner`'s format), or None for a
      backend that allocates per operation.
    - `source`: the generated kernel modules by name ({} where nothing is generated).
    - `stats`: the backend's compile figures (plain data).
    - `profile(inputs, repeat)`: each kernel's (or operation's) median time over `repeat` runs, in order
      (`ProfileRow`); NotImplementedError from a backend that cannot time its kernels.
    """

    graph: Graph

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]: ...

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]: ...

    @property
    def concurrent_calls(self) -> int | None: ...

    @property
    def memory_plan(self) -> dict[str, Any] | None: ...

    @property
    def source(self) -> dict[str, str]: ...

    @property
    def stats(self) -> dict[str, Any]: ...

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[ProfileRow]: ...


class GraphShapes:
    """The shapes part of the contract, read off the compiled graph (a base for backends' executables)."""

    graph: Graph

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {node.name: node.shape for node in self.graph.inputs}

    @property
    def output_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self.graph.node(name).shape for name in self.graph.outputs}


class OperationByOperation(GraphShapes):
    """The rest of the contract for a backend that runs the graph one framework operation at a time (the
    reference, the PyTorch and ONNX Runtime peers): no limit of its own on concurrent calls (a call's values are
    its own), no arena (each operation allocates its result), no generated source, no compile figures."""

    @property
    def concurrent_calls(self) -> int | None:
        return None

    @property
    def memory_plan(self) -> dict[str, Any] | None:
        return None

    @property
    def source(self) -> dict[str, str]:
        return {}

    @property
    def stats(self) -> dict[str, Any]:
        return {}


# Calls of one executable that run at once by default, each in a workspace of its own; more callers wait. Enough
# for a web server's or Dask worker's thread pool on a small machine without holding an arena per thread of a
# large pool.
CONCURRENT_CALLS = max(4, os.cpu_count() or 1)


def positive_count(name: str, value: Any, what: str) -> int:
    """`value` if it is a positive int (an option such as `threads` or `concurrent_calls`), else CnnCompError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CnnCompError(f"{name}={value!r}: expected a positive number of {what}")
    return value


def concurrent_calls_option(options: Mapping[str, Any]) -> int:
    """The `concurrent_calls` option of a backend that runs each call in a workspace (default CONCURRENT_CALLS)."""
    value = options.get("concurrent_calls")
    return positive_count("concurrent_calls", CONCURRENT_CALLS if value is None else value, "calls")


Work = TypeVar("Work")


class WorkspacePool(Generic[Work]):
    """At most `size` per-call workspaces (a backend's arena, scratch, stream...), made by `make` when a call finds
    none free; the first is made at once (or given as `first`), so that memory that cannot be had shows at compile
    time. A call that finds all `size` lent waits until one is given back."""

    def __init__(self, make: Callable[[], Work], size: int, first: Work | None = None) -> None:
        self.size = size
        self._make = make
        self._free = [make() if first is None else first]
        self._made = 1
        self._returned = threading.Condition()

    @property
    def made(self) -> int:
        """Workspaces made so far."""
        return self._made

    @contextlib.contextmanager
    def take(self) -> Iterator[Work]:
        """Lend a workspace for the duration of the `with` block."""
        work = self._acquire()
        try:
            yield work
        finally:
            with self._returned:
                self._free.append(work)
                self._returned.notify()

    def _acquire(self) -> Work:
        with self._returned:
            while not self._free and self._made >= self.size:
                self._returned.wait()
            if self._free:
                return self._free.pop()
            self._made += 1
        try:
            return self._make()  # outside the lock: the calls that have a workspace need not wait for this one
        except BaseException:
            with self._returned:
                self._made -= 1
                self._returned.notify()
            raise


def offset_in(view: np.ndarray, buffer: np.ndarray) -> int | None:
    """The byte offset at which `view`'s data starts inside `buffer`'s memory, or None if it starts outside."""
    address = view.__array_interface__["data"][0]
    start = buffer.__array_interface__["data"][0]
    return address - start if start <= address < start + buffer.nbytes else None


def check_inputs(graph: Graph, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the inputs as C-contiguous arrays, or raise InputError naming the input and what was expected."""
    expected = {node.name: node.type for node in graph.inputs}
    missing = [name for name in expected if name not in inputs]
    unknown = [name for name in inputs if name not in expected]
    if missing or unknown:
        problems = [f"missing input {name!r}" for name in missing] + [f"unknown input {name!r}" for name in unknown]
        raise InputError(f"{'; '.join(problems)}; model {graph.name!r} takes {', '.join(map(repr, expected))}")
    checked = {}
    for name, type_ in expected.items():
        value = inputs[name]
        if not isinstance(value, np.ndarray):
            raise InputError(f"input {name!r}: expected a numpy array, got {type(value).__name__}")
        if value.dtype != np.dtype(type_.dtype):
            raise InputError(f"input {name!r}: dtype {value.dtype}, expected {type_.dtype}")
        if value.shape != type_.shape:
            raise InputError(f"input {name!r}: shape {'x'.join(map(str, value.shape))}, expected {type_}")
        checked[name] = np.ascontiguousarray(value)
    return checked
