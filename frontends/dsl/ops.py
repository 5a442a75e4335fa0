"""The ops of the model language: each is a method of the Python builder, so the language and Python code make
nodes the same way. Argument names, order and defaults come from the builder method's signature; an argument that
is an attribute of the registry op is checked by that attribute's own rule, before the builder sees it.

A registry op the builder has no method for (the ops passes lower to, constants, max-pool indices) is called by its
registry name, with every attribute by its registry name (`REGISTRY_ONLY`), so every graph can be written as text
(`frontends.dsl.writer`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnncomp.ops import get_op
from cnncomp.ops.base import REQUIRED, Attr
from frontends.builder import Builder, Value

# language name: (builder method, registry op it makes). Methods of Value take the first operand as `x`.
OPS: dict[str, tuple[Callable[..., Any], str]] = {
    "conv": (Value.conv, "conv2d"),
    "conv_transpose": (Value.conv_transpose, "conv_transpose2d"),
    "upconv": (Value.conv_transpose, "conv_transpose2d"),  # the lecture's name for the transposed convolution
    "dense": (Value.dense, "dense"),
    "max_pool": (Value.max_pool, "max_pool2d"),
    "avg_pool": (Value.avg_pool, "avg_pool2d"),
    "global_avg_pool": (Value.global_avg_pool, "global_avg_pool"),
    "adaptive_avg_pool": (Value.adaptive_avg_pool, "adaptive_avg_pool2d"),
    "relu": (Value.relu, "relu"),
    "relu6": (Value.relu6, "relu6"),
    "leaky_relu": (Value.leaky_relu, "leaky_relu"),
    "tanh": (Value.tanh, "tanh"),
    "sigmoid": (Value.sigmoid, "sigmoid"),
    "silu": (Value.silu, "silu"),
    "swish": (Value.silu, "silu"),
    "hardswish": (Value.hardswish, "hardswish"),
    "batch_norm": (Value.batch_norm, "batch_norm"),
    "bn": (Value.batch_norm, "batch_norm"),
    "lrn": (Value.lrn, "lrn"),
    "softmax": (Value.softmax, "softmax"),
    "flatten": (Value.flatten, "flatten"),
    "dropout": (Value.dropout, "dropout"),
    "identity": (Value.identity, "identity"),
    "upsample": (Value.upsample, "upsample"),
    "pad": (Value.pad, "pad"),
    "crop": (Value.crop_to, "crop"),
    "channel_slice": (Value.channel_slice, "channel_slice"),
    "max_unpool": (Value.max_unpool, "max_unpool2d"),
    "concat": (Builder.concat, "concat"),
    "add": (Builder.add, "add"),
    "mul": (Builder.mul, "mul"),
}

# Registry ops without a builder method, called by their registry name (see `_registry_method`).
REGISTRY_ONLY = ("depthwise_conv2d", "pointwise_conv2d", "separable_conv2d", "strided_slice", "max_pool2d_indices",
                 "constant")
# Attributes whose True brings an operand, given by name like conv's residual: `residual=skip`, `gate=g`.
OPERAND_FLAGS = ("gate", "residual")


def _registry_method(op: str) -> Callable[..., Any]:
    """A builder-like method making one `op` node: `method(x, residual=skip, **attrs)`, or for an op without
    operands (constant) `method(builder, **attrs)`; an operand flag is set by giving its operand."""
    opdef = get_op(op)
    flags = [flag for flag in OPERAND_FLAGS if flag in opdef.attrs]

    def method(receiver: Any, name: str | None = None, weights: Any = None, **arguments: Any) -> Value:
        operands = []
        for flag in flags:
            operand = arguments.pop(flag, None)
            if operand is not None:
                operands.append(operand)
                arguments[flag] = True
        if isinstance(receiver, Builder):
            return receiver.op(op, name=name, weights=weights, **arguments)
        return receiver.builder.op(op, receiver, *operands, name=name, weights=weights, **arguments)

    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("self", positional)]
    for key, attr in opdef.attrs.items():
        if key in flags:
            parameters.append(inspect.Parameter(key, positional, default=None, annotation="Value | None"))
        else:
            default = attr.default
            if isinstance(default, tuple) and len(set(default)) == 1:
                default = default[0]  # (1, 1) is written 1, as the builder's methods take it
            parameters.append(inspect.Parameter(key, positional, default=inspect.Parameter.empty
                                                if default is REQUIRED else default))
    parameters += [inspect.Parameter("name", positional, default=None), inspect.Parameter("weights", positional,
                                                                                         default=None)]
    method.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    method.__qualname__ = f"{'Builder' if opdef.arity[1] == 0 else 'Value'}.{op}"
    return method


OPS.update({op: (_registry_method(op), op) for op in REGISTRY_ONLY})

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
