"""Generated kernels: rendered source, written once to a content-addressed file in the kernel cache, imported
from there so that Numba caches the machine code beside it (Numba caches only functions that live in real
`.py` files). A second compile of the same model, in a fresh process, loads everything from disk.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import llvmlite
import numba
from numba.core import types

from backends import numba_common
from backends.numba_common import KernelModules, default_cache_dir, import_module

_PACKAGE_DIR = Path(__file__).parent
# Modules of this package that generated kernels import (in dependency order): a change to any of them must not
# reuse machine code compiled against the old version, so their text is part of the cache key; the standalone
# program inlines them.
RUNTIME_MODULES = ("blas", "mathlib", "simd", "gemm")


class KernelSource(numba_common.KernelSource):
    """A numba-cpu kernel module: `source` defines an `njit` function `kernel`."""

    MODULE_PREFIX = "cnncomp_kernel_"


def _toolchain_key() -> str:
    digest = hashlib.sha256(f"numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    for name in RUNTIME_MODULES:
        digest.update((_PACKAGE_DIR / f"{name}.py").read_bytes())
    return digest.hexdigest()[:12]


class KernelCache(KernelModules):
    """Kernel modules on disk under `<root>/numba-cpu-<toolchain key>/`, imported at most once per process."""

    def __init__(self, root: Path | None = None) -> None:
        super().__init__((root or default_cache_dir()) / f"numba-cpu-{_toolchain_key()}")

    def missing(self, kernel: KernelSource, signatures: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
        """The signatures this process has no machine code for, in memory or in the on-disk cache."""
        dispatcher = self.load(kernel)
        return [sig for sig in signatures
                if tuple(sig) not in dispatcher.overloads and dispatcher._cache.load_overload(sig, dispatcher.targetctx)
                is None]

    def compile_in_workers(self, jobs: list[tuple[KernelSource, list[tuple[Any, ...]]]], progress_enabled: bool | None,
                           workers: int) -> None:
        """Compile kernels in separate processes (`python -m backends.numba_cpu.compile_worker`), which fill the
        on-disk cache; this process then loads them.

        Two reasons: the cores compile kernels in parallel, and every process runs machine code loaded from the
        cache, never code it compiled itself (Numba's in-process compile and its cached object code can differ in
        the last bits of a result, so a model compiled now and the same model loaded later would). The workers
        live as long as this process, so only the first compile pays for starting them. Compiles from several
        threads take turns: each worker speaks to one at a time."""
        descriptions = [{"module": kernel.module_name, "path": str(self.write(kernel)),
                         "signatures": [[encode_type(t) for t in sig] for sig in signatures],
                         "cost": len(kernel.source) * len(signatures)}
                        for kernel, signatures in jobs]
        with _WORKERS_LOCK:
            self._compile(descriptions, progress_enabled, workers)

    @staticmethod
    def _compile(descriptions: list[dict[str, Any]], progress_enabled: bool | None, workers: int) -> None:
        from cnncomp.progress import progress

        pool = _worker_pool(workers)
        shares = balanced_shares(descriptions, len(pool))
        busy = [(worker, share) for worker, share in zip(pool, shares, strict=True) if share]
        for worker, share in busy:
            worker.send(share)
        failures: list[str] = []
        replies = (reply for worker, _ in busy for reply in worker.replies(failures))
        for _ in progress(replies, len(descriptions), "compiling kernels", progress_enabled):
            pass
        if failures:
            raise RuntimeError(f"a kernel failed to compile: {failures[0]}")


def balanced_shares(descriptions: list[dict[str, Any]], workers: int) -> list[list[dict[str, Any]]]:
    """The kernels split into `workers` shares of about equal compile time, the longest first to the least
    loaded share. A kernel's source length stands for its compile time: ResNet-50's Winograd F(4x4) kernel, the
    longest, takes as long as five others, and dealt round robin it shared a worker with half of them."""
    shares: list[list[dict[str, Any]]] = [[] for _ in range(workers)]
    loads = [0] * workers
    for description in sorted(descriptions, key=lambda d: d["cost"], reverse=True):
        least = loads.index(min(loads))
        shares[least].append(description)
        loads[least] += description["cost"]
    return shares


class _Worker:
    """One compiling process: takes a JSON list of jobs per line, answers one line per kernel and an empty line
    when the list is done."""

    def __init__(self) -> None:
        self.kernels = 0  # compiled so far: each stays loaded in the worker
        # Errors go to a file, not a pipe: a long warning can never block the worker.
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115  (lives as long as the worker)
        self.process = subprocess.Popen([sys.executable, "-m", "backends.numba_cpu.compile_worker"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.errors, text=True)

    def alive(self) -> bool:
        return not self.process.stdin.closed and self.process.poll() is None

    def send(self, jobs: list[dict[str, Any]]) -> None:
        self.kernels += len(jobs)
        self.process.stdin.write(json.dumps(jobs) + "\n")
        self.process.stdin.flush()

    def replies(self, failures: list[str]):
        """One item per kernel of the list sent, up to its end; failures (a kernel's error, or the worker's
        death with the last line it wrote to stderr) are appended to `failures`."""
        for line in self.process.stdout:
            if line == "\n":
                return
            reply = json.loads(line)
            if "error" in reply:
                failures.append(reply["error"])
            yield reply
        self.process.wait()
        self.errors.seek(0)
        failures.append((self.errors.read().strip().splitlines() or ["(no message)"])[-1])

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.errors.close()


_WORKERS: list[_Worker] = []
_WORKERS_LOCK = threading.Lock()
# A worker keeps every kernel it compiled loaded; past this many it is replaced, so a long-lived process (a fuzz
# run compiles thousands) does not grow without bound (2 GiB per worker after 1,500 graphs).
WORKER_KERNELS = 300


def _worker_pool(size: int) -> list[_Worker]:
    """`size` live workers (at least), started on first use and stopped when this process exits."""
    if not _WORKERS:
        atexit.register(_stop_workers)
    for worker in _WORKERS:
        if worker.kernels >= WORKER_KERNELS:
            worker.close()
    _WORKERS[:] = [worker for worker in _WORKERS if worker.alive()]
    while len(_WORKERS) < size:
        _WORKERS.append(_Worker())
    return _WORKERS[:size]


def _stop_workers() -> None:
    for worker in _WORKERS:
        worker.close()
    _WORKERS.clear()


def encode_type(numba_type: Any) -> list[Any] | str:
    """A kernel argument's Numba type as JSON: arrays by dtype, rank, layout and writability; scalars by name."""
    if isinstance(numba_type, types.Array):
        return [str(numba_type.dtype), numba_type.ndim, numba_type.layout, numba_type.mutable]
    return str(numba_type)


def decode_type(encoded: list[Any] | str) -> Any:
    if isinstance(encoded, str):
        return getattr(types, encoded)
    dtype, ndim, layout, mutable = encoded
    return types.Array(getattr(types, dtype), ndim, layout, readonly=not mutable)


def compile_kernel(module_name: str, path: str, signatures: list[list[Any]]) -> None:
    """Compile a kernel module's `kernel` for each encoded signature; Numba writes the machine code to its cache
    (beside `path`: a module imported earlier from another cache directory is imported again from this one)."""
    loaded = sys.modules.get(module_name)
    if loaded is not None and Path(loaded.__file__) != Path(path):
        del sys.modules[module_name]
    dispatcher = import_module(module_name, Path(path)).kernel
    for signature in signatures:
        dispatcher.compile(tuple(decode_type(t) for t in signature))
