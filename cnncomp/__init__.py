"""cnncomp: a graph-IR compiler for convolutional neural networks.

    import cnncomp
    model = cnncomp.compile(cnncomp.load_model("resnet18"), backend="numba-cpu", opt_level=2)
    logits = model(x)                      # x: N x 3 x 224 x 224 float32
    model.save("resnet18.cnnx")
    model = cnncomp.load("resnet18.cnnx")
    results = cnncomp.run_many(model, ["photos/a.jpg", ...], batch=32)   # client=: on a Dask cluster

The API lives in `cnncomp.api`; it is imported on first use, so `import cnncomp.ir` stays light (and the core
never imports the passes, frontends or backends before it needs them).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "cnncomp.api",
    "compile": "cnncomp.api",
    "load": "cnncomp.api",
    "CompiledModel": "cnncomp.api",
    "Profile": "cnncomp.api",
    "tune": "cnncomp.api",
    "run_many": "cnncomp.batch",
    "iter_many": "cnncomp.batch",
    "CnnCompError": "cnncomp.errors",
    "InputError": "cnncomp.errors",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'cnncomp' has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
