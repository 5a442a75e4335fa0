"""The op registry: every op the IR knows, each with its attributes, shape rule, costs and numpy reference."""

from __future__ import annotations

from cnncomp.errors import GraphError
from cnncomp.ops.base import Attr, Fusion, Op, OpError, ParamSpec, Window

_REGISTRY: dict[str, Op] = {}
_ALIASES: dict[str, str] = {}
_METHODS: dict[str, str] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add one op (and its aliases) to the registry."""
    for name in (cls.name, *cls.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise RuntimeError(f"op {name!r} registered twice")
    # Only the class's own `method` counts: a subclass (a lowered form) is another op with a name of its own.
    cls.method = cls.__dict__.get("method", cls.name)
    spellings = (cls.method, *cls.aliases) if cls.method is not None else ()
    for spelling in spellings:
        if spelling in _METHODS:
            raise RuntimeError(f"ops {_METHODS[spelling]!r} and {cls.name!r} are both called {spelling!r}")
        _METHODS[spelling] = cls.name
    _REGISTRY[cls.name] = cls()
    for alias in cls.aliases:
        _ALIASES[alias] = cls.name
    return cls


def get_op(name: str) -> Op:
    try:
        return _REGISTRY[_ALIASES.get(name, name)]
    except KeyError:
        raise GraphError(f"unknown op {name!r}; known ops: {', '.join(sorted(_REGISTRY))}") from None


def op_names() -> list[str]:
    return sorted(_REGISTRY)


def method_names() -> dict[str, str]:
    """The one list of what users call each op, {name: registry op}: the Python builder's methods and the `.cnn`
    language's functions both (`conv` for conv2d, `bn` as well as `batch_norm`), each op's own name first."""
    return dict(_METHODS)


# Importing the families registers their ops.
from cnncomp.ops import (  # noqa: E402,F401
    activation,
    constant,
    conv,
    dense,
    elementwise,
    lowered,
    norm,
    pool,
    resize,
    tensor,
)

__all__ = ["Attr", "Fusion", "Op", "OpError", "ParamSpec", "Window", "get_op", "method_names", "op_names", "register"]
