"""Generated CUDA kernels: rendered source, written once to a content-addressed file in the kernel cache and
imported from there, so that numba-cuda (`cuda.jit(cache=True)`) keeps the compiled code beside it in
`__pycache__` (it caches only functions that live in real `.py` files). A second compile of the same model, in a
fresh process on the same GPU, loads every kernel from disk.

Nothing here imports `numba.cuda` at module level: the backend must import on a CPU-only install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class KernelSource:
    """One generated kernel module. `family` names the template; `source` defines a `cuda.jit` kernel `kernel`."""

    family: str
    source: str
    # The constants the template was specialized on, for listings and `--emit-source` headers.
    specialization: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def module_name(self) -> str:
        return f"cnncomp_cuda_{self.family}_{self.key}"

    @property
    def template(self) -> str:
        """The source without its specialization constants: equal for kernels that differ only in the numbers
        (window, stride, tile sizes), not in code."""
        names = {name for name, _ in self.specialization}
        lines = self.source.splitlines()
        return "\n".join(line for line in lines[lines.index("from numba import cuda, float32"):]
                         if line.split(" = ")[0] not in names)


def default_cache_dir() -> Path:
    """`$CNNCOMP_CACHE_DIR`, else `$XDG_CACHE_HOME/cnncomp`, else `~/.cache/cnncomp` (as the numba-cpu backend)."""
    explicit = os.environ.get("CNNCOMP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnncomp"


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "none"


def toolchain_key() -> str:
    """Compiled kernels depend on numba, numba-cuda and the NVVM that numba-cuda uses: a new version of any of
    them gets a directory of its own instead of stale machine code."""
    versions = " ".join(f"{name} {_package_version(name)}" for name in ("numba", "numba-cuda", "nvidia-nvvm"))
    return hashlib.sha256(versions.encode()).hexdigest()[:12]


class KernelCache:
    """Kernel modules on disk under `<root>/numba-cuda-<toolchain key>/`, imported at most once per process."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.directory = (Path(root) if root else default_cache_dir()) / f"numba-cuda-{toolchain_key()}"

    def path(self, kernel: KernelSource) -> Path:
        return self.directory / f"{kernel.module_name}.py"

    def is_cached(self, kernel: KernelSource) -> bool:
        """Whether numba-cuda has compiled code for this kernel on disk (an index file beside the source)."""
        pycache = self.directory / "__pycache__"
        return pycache.is_dir() and any(pycache.glob(f"{kernel.module_name}.kernel-*.nbi"))

    def write(self, kernel: KernelSource) -> Path:
        path = self.path(kernel)
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            # Write then rename: a reader never sees half a file, and the cache stamp (mtime, size) of a finished
            # file never changes afterwards.
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                handle.write(kernel.source)
            os.replace(tmp, path)
        return path

    def load(self, kernel: KernelSource) -> Any:
        """The kernel's dispatcher (a `cuda.jit` kernel, or the simulator's), importing its module (written
        first if new; written here too if this process imported it from another cache directory)."""
        path = self.write(kernel)
        module = sys.modules.get(kernel.module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(kernel.module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[kernel.module_name] = module
            spec.loader.exec_module(module)
        return module.kernel
