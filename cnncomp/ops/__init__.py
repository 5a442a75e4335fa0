"""The op registry: every op the IR knows, each with its attributes, shape rule, costs and numpy reference."""

from __future__ import annotations

from cnncomp.errors import GraphError
from cnncomp.ops.base import Attr, Fusion, Op, OpError, ParamSpec, Window

_REGISTRY: dict[str, Op] = {}
_ALIASES: dict[str, str] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add one op (and its aliases) to the registry."""
    for name in (cls.name, *cls.aliases):
        if name in _REGISTRY or name in _ALIASES:
            raise RuntimeError(f"op {name!r} registered twice")
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

__all__ = ["Attr", "Fusion", "Op", "OpError", "ParamSpec", "Window", "get_op", "op_names", "register"]
