"""The Python builder: a small embedded language for writing CNNs, one call or method per layer.

    b = Builder("lenet5")
    x = b.input("image", (1, 32, 32))
    x = x.conv(6, 5).tanh().avg_pool(2).conv(16, 5).tanh().avg_pool(2).conv(120, 5).tanh()
    logits = x.flatten().dense(84).tanh().dense(10)
    graph = b.build(logits)

Every value is a `Value` whose methods add the next op; `a + b` is a residual add, `b.concat(...)` joins
channels, `with b.scope("layer1"):` prefixes the names of what it builds (and records the block, which
renderers draw as a cluster). An unnamed node is named as the `.cnn` language names it: after the method that made
it, numbered in its scope (`conv1`, `bn1`, `relu6_1`). The methods are the language's functions, one list from the
op registry (`cnncomp.ops.method_names`): an op without a method written here gets one taking its attributes.
Weights are initialized at `build()`, deterministically from the seed: He (std sqrt(2/fan_in)) for nets with
ReLU-family activations, Xavier (std sqrt(2/(fan_in+fan_out))) otherwise, as the lecture's ResNet slide says;
`weights=` loads them from an `.npz` instead.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp.errors import GraphError
from cnncomp.ir import Graph, TensorType
from cnncomp.limits import over_limit
from cnncomp.ops import get_op, method_names
from cnncomp.ops.activation import RELU_FAMILY
from cnncomp.ops.base import REQUIRED

INITS = ("auto", "he", "xavier")


class Value:
    """A tensor of the graph being built. Methods add an op that reads it and return the op's value."""

    def __init__(self, builder: Builder, name: str) -> None:
        self.builder = builder
        self.name = name

    @property
    def type(self) -> TensorType:
        return self.builder.graph.node(self.name).type

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def channels(self) -> int:
        return self.type.channels

    @property
    def height(self) -> int:
        return self.type.shape[2]

    @property
    def width(self) -> int:
        return self.type.shape[3]

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.type})"

    def __add__(self, other: Value) -> Value:
        return self.builder.add(self, other)

    def __mul__(self, other: Value) -> Value:
        return self.builder.mul(self, other)

    def _op(self, op: str, *operands: Value, name: str | None = None, weights: Mapping[str, Any] | None = None,
            **attrs: Any) -> Value:
        return self.builder.op(op, self, *operands, name=name, weights=weights, **attrs)

    # ----- convolutions --------------------------------------------------------------------------------
    def conv(self, out_channels: int, kernel: int | tuple[int, int], stride: Any = 1, padding: Any = 0,
             dilation: Any = 1, groups: int = 1, bias: bool = True, residual: Value | None = None,
             act: str | None = None, name: str | None = None, weights: Mapping[str, Any] | None = None,
             **epilogue: Any) -> Value:
        """2-D convolution. `padding` is an int, a pair, (top, bottom, left, right), "valid" or "same"."""
        operands = (residual,) if residual is not None else ()
        return self._op("conv2d", *operands, name=name, weights=weights, out_channels=out_channels,
                        kernel=kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                        bias=bias, residual=residual is not None, act=act, **epilogue)

    def conv_transpose(self, out_channels: int, kernel: int | tuple[int, int], stride: Any = 1, padding: Any = 0,
                       output_padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: bool = True,
                       name: str | None = None, weights: Mapping[str, Any] | None = None) -> Value:
        """Transposed convolution (up-convolution)."""
        return self._op("conv_transpose2d", name=name, weights=weights, out_channels=out_channels, kernel=kernel,
                        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
                        groups=groups, bias=bias)

    def dense(self, out_features: int, bias: bool = True, act: str | None = None, residual: Value | None = None,
              name: str | None = None, weights: Mapping[str, Any] | None = None, **epilogue: Any) -> Value:
        operands = (residual,) if residual is not None else ()
        return self._op("dense", *operands, name=name, weights=weights, out_features=out_features, bias=bias,
                        act=act, residual=residual is not None, **epilogue)

    # ----- pooling -------------------------------------------------------------------------------------
    def max_pool(self, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                 ceil_mode: bool = False, name: str | None = None) -> Value:
        return self._op("max_pool2d", name=name, kernel=kernel, stride=stride, padding=padding,
                        dilation=dilation, ceil_mode=ceil_mode)

    def max_pool_with_indices(self, kernel: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1,
                              ceil_mode: bool = False, name: str | None = None) -> tuple[Value, Value]:
        """Max pooling and where each max came from (for max_unpool): two nodes, `name` and `name_indices`."""
        pooled = self.max_pool(kernel, stride, padding, dilation, ceil_mode, name=name)
        indices = self._op("max_pool2d_indices", name=f"{pooled.name}_indices", kernel=kernel, stride=stride,
                           padding=padding, dilation=dilation, ceil_mode=ceil_mode)
        return pooled, indices

    def max_unpool(self, indices: Value, kernel: Any, stride: Any = None, padding: Any = 0,
                   output_size: Any = None, name: str | None = None) -> Value:
        return self._op("max_unpool2d", indices, name=name, kernel=kernel, stride=stride, padding=padding,
                        output_size=output_size)

    def avg_pool(self, kernel: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, name: str | None = None) -> Value:
        return self._op("avg_pool2d", name=name, kernel=kernel, stride=stride, padding=padding,
                        ceil_mode=ceil_mode, count_include_pad=count_include_pad)

    def global_avg_pool(self, name: str | None = None) -> Value:
        return self._op("global_avg_pool", name=name)

    def adaptive_avg_pool(self, output_size: Any, name: str | None = None) -> Value:
        return self._op("adaptive_avg_pool2d", name=name, output_size=output_size)

    # ----- activations ---------------------------------------------------------------------------------
    def relu(self, name: str | None = None) -> Value:
        return self._op("relu", name=name)

    def relu6(self, name: str | None = None) -> Value:
        return self._op("relu6", name=name)

    def leaky_relu(self, alpha: float = 0.01, name: str | None = None) -> Value:
        return self._op("leaky_relu", name=name, alpha=alpha)

    def tanh(self, name: str | None = None) -> Value:
        return self._op("tanh", name=name)

    def sigmoid(self, name: str | None = None) -> Value:
        return self._op("sigmoid", name=name)

    def silu(self, name: str | None = None) -> Value:
        return self._op("silu", name=name)

    def hardswish(self, name: str | None = None) -> Value:
        return self._op("hardswish", name=name)

    # ----- normalization and the rest -------------------------------------------------------------------
    def batch_norm(self, eps: float = 1e-5, name: str | None = None,
                   weights: Mapping[str, Any] | None = None) -> Value:
        return self._op("batch_norm", name=name, weights=weights, eps=eps)

    def lrn(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
            name: str | None = None) -> Value:
        """Local response normalization; the defaults are AlexNet's constants."""
        return self._op("lrn", name=name, size=size, alpha=alpha, beta=beta, k=k)

    def softmax(self, axis: int = 1, name: str | None = None) -> Value:
        return self._op("softmax", name=name, axis=axis)

    def flatten(self, name: str | None = None) -> Value:
        return self._op("flatten", name=name)

    def dropout(self, rate: float = 0.5, name: str | None = None) -> Value:
        return self._op("dropout", name=name, rate=rate)

    def identity(self, name: str | None = None) -> Value:
        return self._op("identity", name=name)

    def upsample(self, scale: Any = None, size: Any = None, mode: str = "nearest", align_corners: bool = False,
                 name: str | None = None) -> Value:
        return self._op("upsample", name=name, scale=scale, size=size, mode=mode, align_corners=align_corners)

    def pad(self, pads: Any, mode: str = "zeros", name: str | None = None) -> Value:
        return self._op("pad", name=name, pads=pads, mode=mode)

    def crop(self, reference: Value, name: str | None = None) -> Value:
        """Center crop to the height and width of `reference` (U-Net's copy-and-crop)."""
        return self._op("crop", reference, name=name)

    def channel_slice(self, start: int, stop: int, name: str | None = None) -> Value:
        """Channels start to stop - 1, x[:, start:stop] (DPN's dual-path split, Res2Net's scales)."""
        return self._op("channel_slice", name=name, start=start, stop=stop)


class Builder:
    """Builds one Graph. `batch` is the batch size of the inputs (a compile parameter: graphs can be re-inferred
    for another); `strict=True` refuses window sizes that do not divide."""

    def __init__(self, name: str = "model", *, seed: int = 0, init: str = "auto", batch: int = 1,
                 strict: bool = False) -> None:
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        self.graph = Graph(name, strict=strict)
        self.seed = seed
        self.init = init
        self.batch = batch
        self._scopes: list[str] = []
        self._counters: dict[str, int] = {}

    @contextlib.contextmanager
    def scope(self, name: str) -> Iterator[None]:
        """Prefix node names with `name.` (nestable) and record the block in each node's meta."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    def auto_name(self, base: str) -> str:
        """The next free name `base1`, `base2`, ... in the current scope (without the scope's prefix)."""
        prefix = "".join(f"{s}." for s in self._scopes)
        while True:
            self._counters[prefix + base] = self._counters.get(prefix + base, 0) + 1
            local = numbered(base, self._counters[prefix + base])
            if prefix + local not in self.graph:
                return local

    def _name(self, op: str, name: str | None) -> str:
        prefix = "".join(f"{s}." for s in self._scopes)
        return prefix + (name if name is not None else self.auto_name(get_op(op).method or op))

    def op(self, op: str, *operands: Value, name: str | None = None, weights: Mapping[str, Any] | None = None,
           **attrs: Any) -> Value:
        """Add any registry op; the typed methods of Value are shorthands for this. `weights` fixes some or all
        of the node's parameters (the rest are initialized at build())."""
        node_name = self._name(op, name)
        meta = {"block": ".".join(self._scopes)} if self._scopes else None
        attrs = {key: value for key, value in attrs.items() if value is not None}
        self.graph.add_node(node_name, op, [v.name for v in operands], attrs, params=weights, meta=meta)
        return Value(self, node_name)

    def input(self, name: str, shape: Sequence[int]) -> Value:
        """A graph input of shape C x H x W (or features); the batch axis is added from the builder."""
        return self.op("input", name=name, shape=(self.batch, *shape))

    def add(self, a: Value, b: Value, name: str | None = None) -> Value:
        return self.op("add", a, b, name=name)

    def mul(self, a: Value, b: Value, name: str | None = None) -> Value:
        return self.op("mul", a, b, name=name)

    def concat(self, *values: Value, axis: int = 1, name: str | None = None) -> Value:
        return self.op("concat", *values, name=name, axis=axis)

    def build(self, *outputs: Value, weights: str | Path | Mapping[str, np.ndarray] | None = None) -> Graph:
        """Finish the graph: set the outputs, initialize every parameter not yet given, validate."""
        self.graph.set_outputs(v.name for v in outputs)
        initialize_params(self.graph, self.seed, self.init)
        if weights is not None:
            self.graph.load_params(weights)
        self.graph.validate()
        return self.graph


def numbered(base: str, count: int) -> str:
    """The name of the count-th unnamed node made by `base`: conv1, conv2; relu6_1 where base ends in a digit."""
    return f"{base}{'_' if base[-1].isdigit() else ''}{count}"


# Attributes whose True brings an operand, given by name like conv's residual: `residual=skip`, `gate=g`.
OPERAND_FLAGS = ("gate", "residual")


def _registry_method(op: str) -> Callable[..., Any]:
    """A method making one `op` node, for an op with no method written above: `x.op(residual=skip, **attrs)`, or
    for an op without operands (constant) `builder.op(**attrs)`; an operand flag is set by giving its operand."""
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
    parameters += [inspect.Parameter("name", positional, default=None),
                   inspect.Parameter("weights", positional, default=None)]
    method.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    method.__name__ = op
    method.__qualname__ = f"{'Builder' if opdef.arity[1] == 0 else 'Value'}.{op}"
    method.__doc__ = opdef.__doc__
    return method


def _alias(method: Callable[..., Any], alias: str) -> Callable[..., Any]:
    """`method` under another name, which also names the nodes it makes (`x.bn()` makes bn1, as `bn` does in .cnn)."""

    def call(receiver: Any, *args: Any, name: str | None = None, **kwargs: Any) -> Value:
        builder = receiver if isinstance(receiver, Builder) else receiver.builder
        return method(receiver, *args, name=name if name is not None else builder.auto_name(alias), **kwargs)

    call.__signature__ = inspect.signature(method)  # type: ignore[attr-defined]
    call.__name__ = alias
    call.__qualname__ = f"{method.__qualname__.split('.')[0]}.{alias}"
    call.__doc__ = method.__doc__
    return call


def _add_op_methods() -> None:
    """Give Value (or Builder, for ops without operands) a method for every name of `method_names()` it lacks."""

    def existing(name: str) -> Callable[..., Any] | None:
        return getattr(Value, name, None) or getattr(Builder, name, None)

    def attach(name: str, method: Callable[..., Any]) -> None:
        setattr(Builder if method.__qualname__.startswith("Builder.") else Value, name, method)

    for spelling, op in method_names().items():
        own = get_op(op).method or op
        if existing(own) is None:
            attach(own, _registry_method(op))
        if existing(spelling) is None:
            attach(spelling, _alias(existing(own), spelling))


_add_op_methods()


def uses_relu(graph: Graph) -> bool:
    return any(node.op in RELU_FAMILY or node.attrs.get("act") in RELU_FAMILY for node in graph.nodes)


def initialize_params(graph: Graph, seed: int = 0, init: str = "auto") -> None:
    """Give every declared parameter the graph lacks a value: weights He- or Xavier-normal by fan, the rest
    zeros or ones as the op declares. Each parameter's random stream depends only on the seed and its name.
    Parameters that would take more than the memory limit in all are refused before any is drawn."""
    he = init == "he" or (init == "auto" and uses_relu(graph))
    total = sum(math.prod(spec.shape) * 4 for node in graph.nodes
                for spec in get_op(node.op).params(node.attrs, [graph.node(i).type for i in node.inputs]).values())
    reason = over_limit(f"the parameters of graph {graph.name!r}", total)
    if reason is not None:
        raise GraphError(reason)
    for node in graph.nodes:
        specs = get_op(node.op).params(node.attrs, [graph.node(i).type for i in node.inputs])
        fresh = {}
        for local, spec in specs.items():
            key = f"{node.name}.{local}"
            if key in graph.params:
                continue
            if spec.init == "zeros":
                fresh[local] = np.zeros(spec.shape, dtype=np.float32)
            elif spec.init == "ones":
                fresh[local] = np.ones(spec.shape, dtype=np.float32)
            else:
                receptive = math.prod(spec.shape[2:])
                fan_in, fan_out = spec.shape[1] * receptive, spec.shape[0] * receptive
                std = math.sqrt(2.0 / fan_in) if he else math.sqrt(2.0 / (fan_in + fan_out))
                rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
                fresh[local] = (rng.standard_normal(spec.shape) * std).astype(np.float32)
        if fresh:
            graph.set_node_params(node.name, fresh)
