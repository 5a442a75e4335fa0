"""Generated kernels: rendered source, written once to a content-addressed file in the kernel cache, imported
from there so that Numba caches the machine code beside it (Numba caches only functions that live in real
`.py` files). A second compile of the same model, in a fresh process, loads everything from disk.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llvmlite
import numba

_PACKAGE_DIR = Path(__file__).parent
# Modules generated kernels import; a change to any of them must not reuse machine code compiled against the old
# version, so their text is part of the cache key.
_RUNTIME_MODULES = ("blas.py",)


@dataclass(frozen=True)
class KernelSource:
    """One generated kernel module. `family` names the template; `source` defines a function `kernel`."""

    family: str
    source: str
    # The constants the template was specialized on, for listings and `--emit-source` headers.
    specialization: tuple[tuple[str, Any], ...] = field(default=())

    @property
    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def module_name(self) -> str:
        return f"cnncomp_kernel_{self.family}_{self.key}"


def default_cache_dir() -> Path:
    """`$CNNCOMP_CACHE_DIR`, else `$XDG_CACHE_HOME/cnncomp`, else `~/.cache/cnncomp`."""
    explicit = os.environ.get("CNNCOMP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnncomp"


def _toolchain_key() -> str:
    digest = hashlib.sha256(f"numba {numba.__version__} llvmlite {llvmlite.__version__}".encode())
    for name in _RUNTIME_MODULES:
        digest.update((_PACKAGE_DIR / name).read_bytes())
    return digest.hexdigest()[:12]


class KernelCache:
    """Kernel modules on disk under `<root>/numba-cpu-<toolchain key>/`, imported at most once per process."""

    def __init__(self, root: Path | None = None) -> None:
        self.directory = (root or default_cache_dir()) / f"numba-cpu-{_toolchain_key()}"

    def path(self, kernel: KernelSource) -> Path:
        return self.directory / f"{kernel.module_name}.py"

    def is_cached(self, kernel: KernelSource) -> bool:
        """Whether Numba has machine code for this kernel on disk (an index file beside the source)."""
        pycache = self.directory / "__pycache__"
        return pycache.is_dir() and any(pycache.glob(f"{kernel.module_name}.kernel-*.nbi"))

    def load(self, kernel: KernelSource) -> Any:
        """The kernel's Numba dispatcher, importing its module (written first if new)."""
        module = sys.modules.get(kernel.module_name)
        if module is None:
            path = self.path(kernel)
            if not path.exists():
                self.directory.mkdir(parents=True, exist_ok=True)
                # Write then rename: a reader never sees half a file, and Numba's cache stamp (mtime, size) of
                # a finished file never changes afterwards.
                fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
                with os.fdopen(fd, "w") as handle:
                    handle.write(kernel.source)
                os.replace(tmp, path)
            spec = importlib.util.spec_from_file_location(kernel.module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[kernel.module_name] = module
            spec.loader.exec_module(module)
        return module.kernel
