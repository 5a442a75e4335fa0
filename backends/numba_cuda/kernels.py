"""Generated CUDA kernels: rendered source, written once to a content-addressed file in the kernel cache and
imported from there, so that numba-cuda (`cuda.jit(cache=True)`) keeps the compiled code beside it in
`__pycache__` (it caches only functions that live in real `.py` files). A second compile of the same model, in a
fresh process on the same GPU, loads every kernel from disk.

Nothing here imports `numba.cuda` at module level: the backend must import on a CPU-only install.
"""

from __future__ import annotations

import hashlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from backends import numba_common
from backends.numba_common import KernelModules, default_cache_dir


class KernelSource(numba_common.KernelSource):
    """A numba-cuda kernel module: `source` defines a `cuda.jit` kernel `kernel`."""

    MODULE_PREFIX = "cnncomp_cuda_"

    @property
    def template(self) -> str:
        """The source without its specialization constants: equal for kernels that differ only in the numbers
        (window, stride, tile sizes), not in code."""
        names = {name for name, _ in self.specialization}
        lines = self.source.splitlines()
        return "\n".join(line for line in lines[lines.index("from numba import cuda, float32"):]
                         if line.split(" = ")[0] not in names)


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


class KernelCache(KernelModules):
    """Kernel modules on disk under `<root>/numba-cuda-<toolchain key>/`, imported at most once per process."""

    def __init__(self, root: str | Path | None = None) -> None:
        super().__init__((Path(root) if root else default_cache_dir()) / f"numba-cuda-{toolchain_key()}")

    def is_cached(self, kernel: KernelSource) -> bool:
        """Whether numba-cuda has compiled code for this kernel on disk (an index file beside the source)."""
        pycache = self.directory / "__pycache__"
        return pycache.is_dir() and any(pycache.glob(f"{kernel.module_name}.kernel-*.nbi"))
