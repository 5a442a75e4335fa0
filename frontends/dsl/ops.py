"""The ops of the model language: each is a method of the Python builder, so the language and Python code make
nodes the same way and call them by the same names (`cnncomp.ops.method_names`). Argument names, order and
defaults come from the builder method's signature; an argument that is an attribute of the registry op is checked
by that attribute's own rule, before the builder sees it. Ops the builder has no hand-written method for (the ops
passes lower to, constants, max-pool indices) take every attribute by its registry name, so every graph can be
written as text (`frontends.dsl.writer`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnncomp.ops import get_op, method_names
from cnncomp.ops.base import REQUIRED, Attr
from frontends.builder import Builder, Value

# language name: (builder method, registry op it makes), from the registry's one list of names: every op's
# method and aliases are the builder's methods (Value's, or Builder's for concat, add, mul and constant).
OPS: dict[str, tuple[Callable[..., Any], str]] = {
    name: (getattr(Value, name, None) or getattr(Builder, name), op) for name, op in method_names().items()
}

# Ops whose weight a description may set (`weight=`): the lecture's image filters are convolutions with set kernels.
FIXED_WEIGHT_OPS = ("conv2d", "conv_transpose2d", "dense")

# Builder arguments the language spells its own way: `as NAME` names the node, `weight=` fixes the weight.
HIDDEN = {"self", "name", "weights"}


@dataclass(frozen=True)
class Parameter:
    """One argument of an op. kind: "tensor", "tensors" (any number of them), "attr" (checked by `attr`), or
    "weight" (fixed weight values, broadcast to the weight's shape)."""

    name: str
    kind: str
    default: Any = REQUIRED
    attr: Attr | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        if self.kind == "tensors":
            return f"{self.name}..."
        if self.required:
            return self.name
        if self.default is None:  # optional, with no value of its own: [residual], [weight]
            return f"[{self.name}]"
        return f"{self.name}={_show(self.default)}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class OpSignature:
    name: str
    method: Callable[..., Any]
    op: str
    parameters: tuple[Parameter, ...]

    @property
    def on_builder(self) -> bool:
        """Builder methods (concat, add, mul) take their operands as arguments; Value methods are called on x."""
        return self.method.__qualname__.startswith("Builder.")

    def parameter(self, name: str) -> Parameter | None:
        return next((p for p in self.parameters if p.name == name), None)

    def describe(self) -> str:
        return f"{self.name}({', '.join(p.describe() for p in self.parameters)})"


def _signature(name: str, method: Callable[..., Any], op: str) -> OpSignature:
    registry = get_op(op)
    parameters: list[Parameter] = []
    if not method.__qualname__.startswith("Builder."):
        parameters.append(Parameter("x", "tensor"))
    for p in inspect.signature(method).parameters.values():
        if p.name in HIDDEN:
            continue
        if p.kind is inspect.Parameter.VAR_KEYWORD:  # the registry attributes the method passes on unnamed
            named = {q.name for q in parameters} | set(inspect.signature(method).parameters)
            parameters += [Parameter(key, "attr", attr.default, attr) for key, attr in registry.attrs.items()
                           if key not in named]
            continue
        default = REQUIRED if p.default is inspect.Parameter.empty else p.default
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            parameters.append(Parameter(p.name, "tensors"))
        elif "Value" in str(p.annotation):
            parameters.append(Parameter(p.name, "tensor", default))
        else:
            parameters.append(Parameter(p.name, "attr", default, registry.attrs[p.name]))
    if op in FIXED_WEIGHT_OPS:
        parameters.append(Parameter("weight", "weight", None))
    return OpSignature(name, method, op, tuple(parameters))


SIGNATURES: dict[str, OpSignature] = {name: _signature(name, method, op) for name, (method, op) in OPS.items()}


def symbols(parameter: Parameter) -> tuple[str, ...]:
    """Bare words an argument accepts as strings: `padding=same`, `mode=bilinear`, `act=relu`."""
    if parameter.attr is None:
        return ()
    if parameter.attr.kind == "pads":
        return ("same", "valid")
    if parameter.attr.kind == "choice":
        return parameter.attr.choices
    return ()
