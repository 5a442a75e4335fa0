"""The op table: one converter per ONNX op, versioned by the opset where its definition changed.

A converter takes the importer (`cx`, see `Importer`'s converter interface) and the node, adds the nodes of ours
that compute the same function, and returns what each ONNX output is bound to (our node's name, a constant, or
MaxPool's flat indices). It raises `Unsupported` with the reason when the node, as used, has no exact
counterpart; it never approximates. `@converter("Clip", since=11)` registers the implementation for opsets 11
and later; the importer picks the newest one not newer than the model's opset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncomp.ops.activation import ACTIVATIONS, Activation
from frontends.onnx.folding import reshape_target, slice_bounds, split_sizes
from frontends.onnx.graph import FlatIndices, OnnxNode, Overhanging, PendingSlice, Unsupported, attribute_value
from frontends.onnx.resize import ResizeSpec, upsample_attrs

if TYPE_CHECKING:
    from frontends.onnx.importer import Importer

Converter = Callable[["Importer", OnnxNode], Any]
CONVERTERS: dict[str, dict[int, Converter]] = {}


def converter(op_type: str, since: int = 1) -> Callable[[Converter], Converter]:
    def register(function: Converter) -> Converter:
        CONVERTERS.setdefault(op_type, {})[since] = function
        return function

    return register


def find_converter(op_type: str, opset: int) -> Converter | None:
    """The implementation for `opset`: the one registered with the newest `since` not above it."""
    versions = [since for since in CONVERTERS.get(op_type, {}) if since <= opset]
    return CONVERTERS[op_type][max(versions)] if versions else None


def first_opset(op_type: str) -> int | None:
    versions = CONVERTERS.get(op_type)
    return min(versions) if versions else None


def supported_ops() -> dict[str, list[int]]:
    """Every op type with a converter, with the opsets from which each implementation applies."""
    return {op: sorted(versions) for op, versions in sorted(CONVERTERS.items())}


# ----- attribute helpers ------------------------------------------------------------------------------------------
def _pair(values: Sequence[int], what: str) -> tuple[int, int]:
    values = [int(v) for v in values]
    if len(values) != 2:
        raise Unsupported(f"{what} over {len(values)} spatial axes (cnncomp works on 2-D images)")
    return values[0], values[1]


def _nchw(cx: Importer, x: str, what: str) -> None:
    if cx.type(x).rank != 4:
        raise Unsupported(f"{what} of a tensor of shape {cx.type(x)} (cnncomp expects NCHW here)")


def window_padding(node: OnnxNode, in_hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                   dilations: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) from `pads` ([top, left, bottom, right]) or `auto_pad` (SAME_UPPER puts an odd
    extra row/column at the end, SAME_LOWER at the start)."""
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
        if len(pads) != 4:
            raise Unsupported(f"pads {pads} over {len(pads) // 2} spatial axes (cnncomp works on 2-D images)")
        return pads[0], pads[2], pads[1], pads[3]
    if auto_pad == "VALID":
        return 0, 0, 0, 0
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad}")
    result = []
    for size, k, s, d in zip(in_hw, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, large = total // 2, total - total // 2
        result.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
    (top, bottom), (left, right) = result
    return top, bottom, left, right


def _window(cx: Importer, node: OnnxNode, x: str, kernel: tuple[int, int]) -> dict[str, Any]:
    strides = _pair(node.attrs.get("strides", [1, 1]), "strides")
    dilations = _pair(node.attrs.get("dilations", [1, 1]), "dilations")
    padding = window_padding(node, cx.type(x).spatial, kernel, strides, dilations)
    return {"kernel": kernel, "stride": strides, "dilation": dilations, "padding": padding}


def _per_channel(value: np.ndarray, channels: int, rank: int) -> np.ndarray | None:
    """A constant broadcasting over a rank-`rank` tensor as one value per channel (axis 1) or one for all: its
    (C,) vector; else None."""
    value = np.asarray(value)
    if value.ndim > rank:
        return None
    shape = (1,) * (rank - value.ndim) + value.shape
    if any(d != 1 for axis, d in enumerate(shape) if axis != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(value.reshape(-1).astype(np.float32), (channels,)).copy()


# ----- convolutions and dense layers ------------------------------------------------------------------------------
@converter("Conv")
def _conv(cx: Importer, node: OnnxNode) -> str:
    x, weight, bias = cx.value(node, 0), cx.const(node, 1), cx.const(node, 2, required=False)
    if weight.ndim != 4:
        raise Unsupported(f"a Conv over {weight.ndim - 2} spatial axes (cnncomp convolves 2-D images)")
    _nchw(cx, x, "a Conv")
    kernel = _pair(node.attrs.get("kernel_shape", weight.shape[2:]), "kernel_shape")
    attrs = {**_window(cx, node, x, kernel), "out_channels": weight.shape[0], "groups": node.attrs.get("group", 1),
             "bias": bias is not None}
    params = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    return cx.emit(node, "conv2d", [x], attrs, params)


@converter("ConvTranspose")
def _conv_transpose(cx: Importer, node: OnnxNode) -> str:
    x, weight, bias = cx.value(node, 0), cx.const(node, 1), cx.const(node, 2, required=False)
    if weight.ndim != 4:
        raise Unsupported(f"a ConvTranspose over {weight.ndim - 2} spatial axes (cnncomp convolves 2-D images)")
    _nchw(cx, x, "a ConvTranspose")
    groups = node.attrs.get("group", 1)
    kernel = _pair(node.attrs.get("kernel_shape", weight.shape[2:]), "kernel_shape")
    strides = _pair(node.attrs.get("strides", [1, 1]), "strides")
    dilations = _pair(node.attrs.get("dilations", [1, 1]), "dilations")
    output_padding = _pair(node.attrs.get("output_padding", [0, 0]), "output_padding")
    auto_pad = node.attrs.get("auto_pad", "NOTSET")
    in_hw = cx.type(x).spatial
    output_shape = node.attrs.get("output_shape")
    if output_shape is None and auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        output_shape = [n * s for n, s in zip(in_hw, strides, strict=True)]
    if output_shape is not None:
        # ONNX: total padding = S*(N-1) + output_padding + D*(K-1) + 1 - output_shape, split as the spec says.
        output_shape = list(output_shape)[-2:]
        pads = []
        for n, k, s, d, op, out in zip(in_hw, kernel, strides, dilations, output_padding, output_shape, strict=True):
            total = s * (n - 1) + op + d * (k - 1) + 1 - out
            if total < 0:
                raise Unsupported(f"a ConvTranspose to output_shape {output_shape} larger than its full output")
            pads.append((total // 2, total - total // 2) if auto_pad == "SAME_UPPER"
                        else (total - total // 2, total // 2))
        (top, bottom), (left, right) = pads
        padding = (top, bottom, left, right)
    elif auto_pad in ("NOTSET", "", "VALID"):
        padding = window_padding(node, in_hw, kernel, strides, dilations)
    else:
        raise Unsupported(f"auto_pad={auto_pad}")
    attrs = {"out_channels": weight.shape[1] * groups, "kernel": kernel, "stride": strides, "dilation": dilations,
             "padding": padding, "output_padding": output_padding, "groups": groups, "bias": bias is not None}
    params = {"weight": weight, **({"bias": bias} if bias is not None else {})}
    return cx.emit(node, "conv_transpose2d", [x], attrs, params)


def _dense(cx: Importer, node: OnnxNode, x: str, weight: np.ndarray, bias: np.ndarray | None) -> str:
    if cx.type(x).rank != 2:
        raise Unsupported(f"a matrix product on a tensor of shape {cx.type(x)} (cnncomp's dense layer reads N x "
                          "features)")
    attrs = {"out_features": weight.shape[0], "bias": bias is not None}
    return cx.emit(node, "dense", [x], attrs, {"weight": weight, **({"bias": bias} if bias is not None else {})})


@converter("Gemm")
def _gemm(cx: Importer, node: OnnxNode) -> str:
    """Y = alpha * A' @ B' + beta * C: A the graph value (not transposed), B and C constants."""
    if node.attrs.get("transA", 0):
        raise Unsupported("a Gemm with transA=1 (cnncomp's dense layer reads N x features)")
    x, b = cx.value(node, 0), cx.const(node, 1)
    weight = (b if node.attrs.get("transB", 0) else b.T) * np.float32(node.attrs.get("alpha", 1.0))
    c = cx.const(node, 2, required=False)
    bias = None
    if c is not None:
        bias = _per_channel(c * np.float32(node.attrs.get("beta", 1.0)), weight.shape[0], 2)
        if bias is None:
            raise Unsupported(f"a Gemm whose C of shape {list(c.shape)} is not one value per output")
    return _dense(cx, node, x, weight, bias)


@converter("MatMul")
def _matmul(cx: Importer, node: OnnxNode) -> str:
    x, b = cx.value(node, 0), cx.const(node, 1)
    if b.ndim != 2:
        raise Unsupported(f"a MatMul by a constant of shape {list(b.shape)} (cnncomp's dense layer takes a matrix)")
    return _dense(cx, node, x, b.T, None)


# ----- pooling ----------------------------------------------------------------------------------------------------
def _onnx_pool_size(size: int, pads: int, kernel: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    span = size + pads - dilation * (kernel - 1) - 1
    return (-(-span // stride) if ceil_mode else span // stride) + 1


def _pool(cx: Importer, node: OnnxNode, op: str) -> Any:
    """MaxPool and AveragePool; returns (values, indices), a value wrapped in Overhanging where ONNX's ceil mode
    keeps a last window that starts in the padding."""
    x = cx.value(node, 0)
    _nchw(cx, x, f"a {node.op_type}")
    kernel = _pair(node.attrs["kernel_shape"], "kernel_shape")
    window = _window(cx, node, x, kernel)
    ceil_mode = bool(node.attrs.get("ceil_mode", 0))
    if node.attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") and window["dilation"] != (1, 1):
        # The ONNX definition pads for the dilated extent, ONNX Runtime for the kernel: refused, not guessed.
        raise Unsupported(f"a {node.op_type} with auto_pad={node.attrs['auto_pad']} and dilations "
                          f"{list(window['dilation'])} (ONNX Runtime and the ONNX definition disagree on its padding)")
    attrs = {"kernel": kernel, "stride": window["stride"], "padding": window["padding"], "ceil_mode": ceil_mode}
    if op == "max_pool2d":
        attrs["dilation"] = window["dilation"]
    elif window["dilation"] != (1, 1):
        raise Unsupported(f"an AveragePool with dilations {list(window['dilation'])}")
    else:
        attrs["count_include_pad"] = bool(node.attrs.get("count_include_pad", 0))
    t = cx.type(x)
    top, bottom, left, right = window["padding"]
    onnx_hw = tuple(_onnx_pool_size(n, p, k, s, d, ceil_mode) for n, p, k, s, d in zip(
        t.spatial, (top + bottom, left + right), kernel, window["stride"], window["dilation"], strict=True))
    results: list[Any] = [None, None]
    if op == "max_pool2d" and cx.used(node, 1):
        if node.attrs.get("storage_order", 0):
            raise Unsupported("MaxPool indices in column-major order (storage_order=1)")
        if kernel == (1, 1) and window["stride"] == (1, 1) and window["padding"] == (0, 0, 0, 0):
            # A 1x1 pool's indices do not depend on the data: the flat index of every element (PyTorch's export
            # of return_indices subtracts a slice of them to get per-plane indices).
            results[1] = np.arange(t.size, dtype=np.int64).reshape(t.shape)
        else:
            indices = cx.emit(node, "max_pool2d_indices", [x], attrs, output=1)
            results[1] = FlatIndices(indices, t.spatial[0] * t.spatial[1])
    if cx.used(node, 0):
        results[0] = cx.emit(node, op, [x], attrs)
    computed = [r if isinstance(r, str) else r.node for r in results if isinstance(r, (str, FlatIndices))]
    if computed and cx.type(computed[0]).spatial != onnx_hw:
        shape = (*t.shape[:2], *onnx_hw)
        results = [Overhanging(r, shape) if isinstance(r, (str, FlatIndices)) else r for r in results]
    return results


@converter("MaxPool")
def _max_pool(cx: Importer, node: OnnxNode) -> Any:
    return _pool(cx, node, "max_pool2d")


@converter("AveragePool")
def _average_pool(cx: Importer, node: OnnxNode) -> Any:
    return _pool(cx, node, "avg_pool2d")[0]


@converter("GlobalAveragePool")
def _global_average_pool(cx: Importer, node: OnnxNode) -> str:
    x = cx.value(node, 0)
    _nchw(cx, x, "a GlobalAveragePool")
    return cx.emit(node, "global_avg_pool", [x])


@converter("GlobalMaxPool")
def _global_max_pool(cx: Importer, node: OnnxNode) -> str:
    x = cx.value(node, 0)
    _nchw(cx, x, "a GlobalMaxPool")
    return cx.emit(node, "max_pool2d", [x], {"kernel": cx.type(x).spatial})


def _reduce_axes(cx: Importer, node: OnnxNode, since: int) -> list[int] | None:
    x = cx.value(node, 0)
    rank = cx.type(x).rank
    axes = node.attrs.get("axes") if cx.opset < since else cx.const(node, 1, required=False)
    if axes is None:
        return None if node.attrs.get("noop_with_empty_axes", 0) else list(range(rank))
    return sorted(int(a) + rank if a < 0 else int(a) for a in np.ravel(axes))


def _global_reduce(cx: Importer, node: OnnxNode, since: int, op: str) -> str:
    """ReduceMean/ReduceMax over H and W: global average or max pooling (then flatten without keepdims)."""
    x = cx.value(node, 0)
    axes = _reduce_axes(cx, node, since)
    t = cx.type(x)
    if t.rank != 4 or axes != [2, 3]:
        raise Unsupported(f"a {node.op_type} over axes {axes} of {t} (cnncomp reduces H and W of NCHW tensors)")
    attrs = {} if op == "global_avg_pool" else {"kernel": t.spatial}
    if node.attrs.get("keepdims", 1):
        return cx.emit(node, op, [x], attrs)
    return cx.emit(node, "flatten", [cx.emit(node, op, [x], attrs, step="pool")])


@converter("ReduceMean")
def _reduce_mean(cx: Importer, node: OnnxNode) -> str:
    return _global_reduce(cx, node, 18, "global_avg_pool")


@converter("ReduceMax")
def _reduce_max(cx: Importer, node: OnnxNode) -> str:
    return _global_reduce(cx, node, 18, "max_pool2d")


@converter("MaxUnpool", since=9)
def _max_unpool(cx: Importer, node: OnnxNode) -> str:
    x, indices = cx.value(node, 0), cx.raw(node, 1)
    _nchw(cx, x, "a MaxUnpool")
    if not isinstance(indices, FlatIndices):
        raise Unsupported("a MaxUnpool whose indices do not come from a MaxPool of this graph")
    kernel = _pair(node.attrs["kernel_shape"], "kernel_shape")
    strides = _pair(node.attrs.get("strides", [1, 1]), "strides")
    padding = window_padding(node, cx.type(x).spatial, kernel, strides, (1, 1))
    output_shape = cx.const(node, 2, required=False)
    output_size = None if output_shape is None else tuple(int(d) for d in output_shape[-2:])
    attrs = {"kernel": kernel, "stride": strides, "padding": padding, "output_size": output_size}
    result = cx.emit(node, "max_unpool2d", [x, indices.node], attrs)
    oh, ow = cx.type(result).spatial
    if indices.plane is not None and oh * ow != indices.plane:
        raise Unsupported(f"a MaxUnpool to {oh}x{ow} planes of indices counted over planes of {indices.plane} "
                          "pixels (flat indices would land in other planes)")
    return result


# ----- normalization ----------------------------------------------------------------------------------------------
@converter("BatchNormalization")
def _batch_norm(cx: Importer, node: OnnxNode) -> str:
    if node.attrs.get("training_mode", 0) or any(cx.used(node, i) for i in range(1, len(node.outputs))):
        raise Unsupported("a BatchNormalization in training mode (cnncomp runs inference)")
    if not node.attrs.get("spatial", 1):
        raise Unsupported("a BatchNormalization with spatial=0 (statistics per pixel)")
    x = cx.value(node, 0)
    params = {key: cx.const(node, i) for i, key in enumerate(("weight", "bias", "running_mean", "running_var"), 1)}
    return cx.emit(node, "batch_norm", [x], {"eps": float(node.attrs.get("epsilon", 1e-5))}, params)


@converter("LRN")
def _lrn(cx: Importer, node: OnnxNode) -> str:
    size = int(node.attrs["size"])
    if size % 2 == 0:
        raise Unsupported(f"an LRN of even size {size}: ONNX sums channels [c - {(size - 1) // 2}, c + {size // 2}], "
                          f"cnncomp (as PyTorch) [c - {size // 2}, c + {(size - 1) // 2}]")
    attrs = {"size": size, "alpha": float(node.attrs.get("alpha", 1e-4)), "beta": float(node.attrs.get("beta", 0.75)),
             "k": float(node.attrs.get("bias", 1.0))}
    return cx.emit(node, "lrn", [cx.value(node, 0)], attrs)


def _softmax(cx: Importer, node: OnnxNode, coerce_2d: bool) -> str:
    x = cx.value(node, 0)
    t = cx.type(x)
    axis = int(node.attrs.get("axis", 1 if coerce_2d else -1))
    axis = axis + t.rank if axis < 0 else axis
    if coerce_2d and math.prod(t.shape[axis + 1:]) != 1:
        raise Unsupported(f"a Softmax (opset {cx.opset} < 13) over axes {axis}.. of {t} jointly (cnncomp's "
                          "softmax runs along one axis)")
    if axis == 0:
        raise Unsupported("a Softmax along the batch axis")
    return cx.emit(node, "softmax", [x], {"axis": axis})


@converter("Softmax")
def _softmax_coerced(cx: Importer, node: OnnxNode) -> str:
    """Before opset 13 the input is seen as 2-D, [d0 * ... * d(axis-1), d(axis) * ... * dn]."""
    return _softmax(cx, node, coerce_2d=True)


@converter("Softmax", since=13)
def _softmax_axis(cx: Importer, node: OnnxNode) -> str:
    return _softmax(cx, node, coerce_2d=False)


# ----- activations ------------------------------------------------------------------------------------------------
def _onnx_default(cx: Importer, node: OnnxNode, name: str) -> Any:
    """The value ONNX's definition gives an attribute the node leaves out (None: no default)."""
    attribute = cx.onnx.defs.get_schema(node.op_type, cx.opset).attributes[name].default_value
    return attribute_value(cx.onnx, attribute) if attribute.type else None


def _activation(op: Activation) -> Converter:
    """The ONNX operator of an activation's registry entry, with the attributes its definition fixes, as the
    activation; its other attributes become ours."""
    spelling = op.onnx

    def convert(cx: Importer, node: OnnxNode) -> str:
        for name, value in spelling.fixed.items():
            given = node.attrs.get(name, _onnx_default(cx, node, name))
            if given != value:
                raise Unsupported(f"a {node.op_type} with {name}={_shown(given)} (cnncomp's {op.name} has "
                                  f"{name}={_shown(value)})")
        attrs = {ours: node.attrs[theirs] for theirs, ours in spelling.attrs.items() if theirs in node.attrs}
        return cx.emit(node, op.name, [cx.value(node, 0)], attrs)

    return convert


def _shown(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# x * gate(x) as one activation (x * Sigmoid(x) is silu): {gate: activation}.
SELF_GATED = {op.self_gated_by: name for name, op in ACTIVATIONS.items() if op.self_gated_by is not None}


@converter("PRelu")
def _prelu(cx: Importer, node: OnnxNode) -> str:
    slope = cx.const(node, 1)
    if slope.size == 0 or not np.all(slope == slope.reshape(-1)[0]):
        raise Unsupported("a PRelu with a slope per channel (cnncomp's leaky_relu has one slope)")
    return cx.emit(node, "leaky_relu", [cx.value(node, 0)], {"alpha": float(slope.reshape(-1)[0])})


FLOAT32_MAX = float(np.finfo(np.float32).max)


def _clip(cx: Importer, node: OnnxNode, low: float, high: float) -> str:
    x = cx.value(node, 0)
    if low == 0 and high == 6:
        return cx.emit(node, "relu6", [x])
    if low == 0 and high >= FLOAT32_MAX:
        return cx.emit(node, "relu", [x])
    raise Unsupported(f"a Clip to [{low:g}, {high:g}] (cnncomp clips to [0, 6] with relu6 or [0, inf) with relu)")


@converter("Clip", since=6)
def _clip_attributes(cx: Importer, node: OnnxNode) -> str:
    return _clip(cx, node, float(node.attrs.get("min", -FLOAT32_MAX)), float(node.attrs.get("max", FLOAT32_MAX)))


@converter("Clip", since=11)
def _clip_inputs(cx: Importer, node: OnnxNode) -> str:
    low, high = cx.const(node, 1, required=False), cx.const(node, 2, required=False)
    return _clip(cx, node, -math.inf if low is None else float(low), math.inf if high is None else float(high))


@converter("HardSigmoid")
def _hard_sigmoid(cx: Importer, node: OnnxNode) -> str:
    """max(0, min(1, alpha*x + beta)) = relu6(6*alpha*x + 6*beta) / 6: two exact per-channel affines around a
    relu6. x * HardSigmoid(x) with alpha 1/6 and beta 1/2 becomes hardswish (see Mul)."""
    x = cx.value(node, 0)
    alpha, beta = float(node.attrs.get("alpha", 0.2)), float(node.attrs.get("beta", 0.5))
    scaled = cx.unit_affine(node, x, np.float32(6 * alpha), np.float32(6 * beta), step="scaled")
    clipped = cx.emit(node, "relu6", [scaled], step="relu6")
    result = cx.unit_affine(node, clipped, np.float32(1 / 6), np.float32(0))
    cx.hard_sigmoids[result] = (x, alpha, beta)
    return result


# Every activation's ONNX operator, unless the operator has a converter of its own above (Clip, which is relu6 or
# relu by its bounds).
for _op in ACTIVATIONS.values():
    if _op.onnx.name not in CONVERTERS:
        converter(_op.onnx.name, since=_op.onnx.since)(_activation(_op))


# ----- elementwise arithmetic -------------------------------------------------------------------------------------
def _is_plane_offsets(offsets: np.ndarray, shape: tuple[int, ...], plane: int) -> bool:
    """Whether a constant is (n*C + c) * plane for every (n, c) of an NCHW `shape`."""
    n, c = shape[:2]
    expected = (np.arange(n * c, dtype=np.int64) * plane).reshape(n, c, 1, 1)
    try:
        return bool(np.array_equal(np.broadcast_to(offsets, shape), np.broadcast_to(expected, shape)))
    except ValueError:
        return False


def _index_arithmetic(cx: Importer, node: OnnxNode, a: Any, b: Any) -> Any:
    """The index arithmetic around MaxPool and MaxUnpool (ours per plane, ONNX's flat over the tensor):
    flat - (n*C + c)*H*W and flat mod H*W are our per-plane indices; plane + (n*C + c)*P are flat indices."""
    op = node.op_type
    if isinstance(a, FlatIndices) and isinstance(b, np.ndarray):
        if op == "Sub" and _is_plane_offsets(b, cx.type(a.node).shape, a.plane):
            return a.node
        if op == "Mod" and b.size == 1 and int(b.reshape(-1)[0]) == a.plane:
            return a.node
    if op == "Add":
        indices, offsets = (a, b) if isinstance(a, str) else (b, a)
        if isinstance(indices, str) and isinstance(offsets, np.ndarray):
            shape = cx.type(indices).shape
            planes = shape[0] * shape[1]
            if planes == 1 and not np.any(offsets):
                return FlatIndices(indices, None)  # one plane: flat and per-plane indices agree
            plane = int(np.max(offsets)) // (planes - 1) if planes > 1 else 0
            if plane > 0 and _is_plane_offsets(offsets, shape, plane):
                return FlatIndices(indices, plane)
    raise Unsupported(f"{op} on MaxPool indices other than the conversions between flat and per-plane indices")


def _holds_indices(cx: Importer, bound: Any) -> bool:
    return isinstance(bound, FlatIndices) or isinstance(bound, str) and cx.type(bound).dtype == "int64"


def _arithmetic(cx: Importer, node: OnnxNode) -> Any:
    a, b = cx.raw(node, 0), cx.raw(node, 1)
    op = node.op_type
    if _holds_indices(cx, a) or _holds_indices(cx, b):
        return _index_arithmetic(cx, node, a, b)
    if op == "Mod":
        raise Unsupported("a Mod of float tensors")
    if isinstance(a, str) and isinstance(b, str):
        return _between_values(cx, node, a, b)
    if isinstance(a, str) and isinstance(b, np.ndarray):
        return _with_constant(cx, node, a, b, constant_first=False)
    if isinstance(b, str) and isinstance(a, np.ndarray):
        return _with_constant(cx, node, b, a, constant_first=True)
    return cx.value(node, 0 if not isinstance(a, str) else 1)  # raises Unsupported with the reason


def _between_values(cx: Importer, node: OnnxNode, a: str, b: str) -> str:
    op = node.op_type
    if op == "Add":
        return cx.emit(node, "add", [a, b])
    if op == "Sub":
        # a - b = a + (-b), exactly.
        negated = cx.unit_affine(node, b, np.float32(-1), np.float32(0), step="negated")
        return cx.emit(node, "add", [a, negated])
    if op == "Mul":
        for x, gate in ((a, b), (b, a)):
            producer = cx.graph.node(gate)
            if producer.op in SELF_GATED and producer.inputs[0] == x:
                return cx.emit(node, SELF_GATED[producer.op], [x])
            pattern = cx.hard_sigmoids.get(gate)
            if pattern is not None and pattern[0] == x and np.isclose(pattern[1], 1 / 6) and pattern[2] == 0.5:
                return cx.emit(node, "hardswish", [x])
        return cx.emit(node, "mul", [a, b])
    raise Unsupported(f"a {op} of two computed tensors (cnncomp divides by constants only)")


def _with_constant(cx: Importer, node: OnnxNode, x: str, constant: np.ndarray, constant_first: bool) -> str:
    """x op c with c one value per channel (or one for all): a per-channel affine, folded into the bias of the
    conv or dense layer before it when that layer has no other reader."""
    op = node.op_type
    t = cx.type(x)
    values = _per_channel(constant, t.channels, t.rank) if t.rank in (2, 4) else None
    if values is None:
        raise Unsupported(f"a {op} of {t} and a constant of shape {list(np.shape(constant))} (cnncomp takes "
                          "constants of one value per channel)")
    if op == "Add":
        scale, shift = np.ones_like(values), values
    elif op == "Mul":
        scale, shift = values, np.zeros_like(values)
    elif op == "Sub":
        scale, shift = (-np.ones_like(values), values) if constant_first else (np.ones_like(values), -values)
    elif constant_first:
        raise Unsupported("a Div of a constant by a computed tensor")
    else:
        scale, shift = np.float32(1) / values, np.zeros_like(values)  # x / c as x * (1/c)
    folded = _fold_into_bias(cx, node, x, shift) if np.all(scale == 1) else None
    return folded if folded is not None else cx.unit_affine(node, x, scale, shift)


BIASED_LAYERS = ("conv2d", "conv_transpose2d", "dense")


def _fold_into_bias(cx: Importer, node: OnnxNode, x: str, shift: np.ndarray) -> str | None:
    """layer(x) + c => layer(x) with bias + c, when only this node reads the layer's value: the layer is
    replaced by its biased twin of the same name (or of the output's name, if that is a graph output)."""
    layer = cx.graph.node(x)
    onnx_value = next(name for name in node.inputs if isinstance(cx.values.get(name), str) and cx.values[name] == x)
    if layer.op not in BIASED_LAYERS or cx.graph.consumers(x) or not cx.sole_reader(onnx_value) \
            or layer.attrs.get("act") is not None or layer.attrs.get("affine") or layer.attrs.get("residual"):
        return None
    params = dict(cx.graph.node_params(layer.name))
    params["bias"] = params.get("bias", np.zeros_like(shift)) + shift
    cx.graph.remove_node(layer.name)
    name = node.outputs[0] if node.outputs[0] in cx.output_names else layer.name
    folded = cx.graph.add_node(name, layer.op, layer.inputs, {**layer.attrs, "bias": True}, params=params,
                               meta=layer.meta).name
    cx.values[onnx_value] = folded
    return folded


for _op in ("Add", "Sub", "Mul", "Div", "Mod"):
    converter(_op, since=7)(_arithmetic)


@converter("Sum")
def _sum(cx: Importer, node: OnnxNode) -> str:
    operands = [cx.value(node, i) for i in range(len(node.inputs))]
    total = operands[0]
    for index, operand in enumerate(operands[1:], start=1):
        last = index == len(operands) - 1
        total = cx.emit(node, "add", [total, operand], step=None if last else f"partial{index}")
    return total if len(operands) > 1 else cx.emit(node, "identity", [total])


# ----- tensors ----------------------------------------------------------------------------------------------------
@converter("Concat")
def _concat(cx: Importer, node: OnnxNode) -> str:
    operands = [cx.value(node, i) for i, name in enumerate(node.inputs) if name]
    rank = cx.type(operands[0]).rank
    axis = int(node.attrs["axis"])
    return cx.emit(node, "concat", operands, {"axis": axis + rank if axis < 0 else axis})


def _flatten_to(cx: Importer, node: OnnxNode, x: str, target: Sequence[int]) -> str:
    """A reshape of x to `target` when it is a flatten, (N, C*H*W), or changes nothing."""
    shape = cx.type(x).shape
    if tuple(target) == shape:
        return cx.emit(node, "identity", [x])
    if len(target) == 2 and target[0] == shape[0]:
        return cx.emit(node, "flatten", [x])
    shown = "x".join(map(str, target))
    raise Unsupported(f"a reshape of {cx.type(x)} to {shown} is not a flatten (cnncomp's tensors are NCHW or "
                      "N x features; only (N, -1) and (N, C*H*W) reshapes are supported)")


@converter("Flatten")
def _flatten(cx: Importer, node: OnnxNode) -> str:
    x = cx.value(node, 0)
    shape = cx.type(x).shape
    axis = int(node.attrs.get("axis", 1))
    axis = axis + len(shape) if axis < 0 else axis
    return _flatten_to(cx, node, x, (math.prod(shape[:axis]), math.prod(shape[axis:])))


@converter("Reshape", since=5)
def _reshape(cx: Importer, node: OnnxNode) -> str:
    x = cx.value(node, 0)
    target = reshape_target(cx.type(x).shape, cx.const(node, 1).tolist(), bool(node.attrs.get("allowzero", 0)))
    return _flatten_to(cx, node, x, target)


def _squeeze(cx: Importer, node: OnnxNode, axes: Any) -> str:
    x = cx.value(node, 0)
    shape = cx.type(x).shape
    axes = [i for i, d in enumerate(shape) if d == 1] if axes is None else \
        [a + len(shape) if a < 0 else a for a in axes]
    return _flatten_to(cx, node, x, [d for i, d in enumerate(shape) if i not in axes])


@converter("Squeeze")
def _squeeze_attribute(cx: Importer, node: OnnxNode) -> str:
    return _squeeze(cx, node, node.attrs.get("axes"))


@converter("Squeeze", since=13)
def _squeeze_input(cx: Importer, node: OnnxNode) -> str:
    axes = cx.const(node, 1, required=False)
    return _squeeze(cx, node, None if axes is None else [int(a) for a in axes])


@converter("Identity")
def _identity(cx: Importer, node: OnnxNode) -> Any:
    bound = cx.raw(node, 0)
    return bound if isinstance(bound, (FlatIndices, Overhanging)) else cx.emit(node, "identity", [cx.value(node, 0)])


@converter("Cast", since=6)
def _cast(cx: Importer, node: OnnxNode) -> str:
    x = cx.value(node, 0)
    if node.attrs["to"] != 1 or cx.type(x).dtype != "float32":  # 1: FLOAT
        raise Unsupported(f"a Cast of {cx.type(x).dtype} to another type (cnncomp computes float32)")
    return cx.emit(node, "identity", [x])


def _dropout(cx: Importer, node: OnnxNode, ratio: float) -> str:
    if cx.used(node, 1):
        raise Unsupported("a Dropout whose mask is read (cnncomp runs inference)")
    return cx.emit(node, "dropout", [cx.value(node, 0)], {"rate": ratio})


@converter("Dropout")
def _dropout_attribute(cx: Importer, node: OnnxNode) -> str:
    return _dropout(cx, node, float(node.attrs.get("ratio", 0.5)))


@converter("Dropout", since=12)
def _dropout_inputs(cx: Importer, node: OnnxNode) -> str:
    training = cx.const(node, 2, required=False)
    if training is not None and bool(training.reshape(-1)[0]):
        raise Unsupported("a Dropout in training mode (training_mode=true)")
    ratio = cx.const(node, 1, required=False)
    return _dropout(cx, node, 0.5 if ratio is None else float(ratio))


@converter("Shape")
def _shape(cx: Importer, node: OnnxNode) -> np.ndarray:
    """Shapes are static once imported: a constant (start and end from opset 15)."""
    shape = np.asarray(cx.type(cx.value(node, 0)).shape, dtype=np.int64)
    start, end = node.attrs.get("start", 0), node.attrs.get("end")
    return shape[start:end]


@converter("Size")
def _size(cx: Importer, node: OnnxNode) -> np.ndarray:
    return np.asarray(cx.type(cx.value(node, 0)).size, dtype=np.int64)


def _find_reference(cx: Importer, shape: tuple[int, ...]) -> str | None:
    """The latest graph value of this batch and spatial size: crop reads only its reference's shape."""
    for candidate in reversed(cx.graph.nodes):
        t = candidate.type
        if t.rank == 4 and t.dtype == "float32" and t.batch == shape[0] and t.spatial == shape[2:]:
            return candidate.name
    return None


def _slice_value(cx: Importer, node: OnnxNode, bounds: list[tuple[int, int, int]], x: str) -> Any:
    """A Slice of a value: a range of its channels (channel_slice), then of an NCHW value's rows and columns:
    every row/column (identity), every S-th from the first (strided_slice), or the center with the extra
    row/column of an odd margin at the end (crop; pending until a tensor of its size exists, as when an exporter
    cuts one axis per Slice)."""
    t = cx.type(x)
    if bounds[0] != (0, t.batch, 1):
        raise Unsupported(f"a Slice of {t} along the batch axis")
    uncut = [(0, size, 1) for size in t.shape]
    if bounds[1] != uncut[1]:
        start, stop, step = bounds[1]
        if step != 1 or stop <= start:
            raise Unsupported(f"a Slice of {t} to channels {start}:{stop}:{step} (cnncomp slices a non-empty range "
                              "of channels with step 1)")
        whole = bounds[2:] == uncut[2:]
        x = cx.emit(node, "channel_slice", [x], {"start": start, "stop": stop}, step=None if whole else "channels")
        if whole:
            return x
        t = cx.type(x)
    elif bounds == uncut:
        return cx.emit(node, "identity", [x])
    if t.rank != 4:
        raise Unsupported(f"a Slice of {t} along axes 2 and above (cnncomp slices those of NCHW tensors only)")
    (h0, h1, sh), (w0, w1, sw) = bounds[2:]
    h, w = t.spatial
    if sh > 0 and sw > 0 and h0 == 0 and w0 == 0 and h1 == h and w1 == w:
        return cx.emit(node, "strided_slice", [x], {"stride": (sh, sw)})
    rh, rw = h1 - h0, w1 - w0
    if (sh, sw) == (1, 1) and rh > 0 and rw > 0 and (h0, w0) == ((h - rh) // 2, (w - rw) // 2):
        reference = _find_reference(cx, (t.batch, t.channels, rh, rw))
        if reference is None:
            return PendingSlice(x, ((h0, h1), (w0, w1)))
        return cx.emit(node, "crop", [x, reference])
    raise Unsupported(f"a Slice of {t} to rows {h0}:{h1}:{sh}, columns {w0}:{w1}:{sw} (cnncomp slices every S-th "
                      "row and column from the first, or crops the center with an odd margin's extra row at the end)")


def _slice(cx: Importer, node: OnnxNode) -> Any:
    bound = cx.raw(node, 0)
    inputs = [None] + [cx.const(node, i, required=False) for i in range(1, len(node.inputs))]
    if isinstance(bound, Overhanging):
        # Only a slice keeping our pool's windows (ONNX's leading ones) reads a ceil-mode overhang.
        inner = bound.inner
        ours = cx.type(inner.node if isinstance(inner, FlatIndices) else inner).shape
        if slice_bounds(node, inputs, cx.opset, bound.shape) != [(0, d, 1) for d in ours]:
            return cx.value(node, 0)  # raises Unsupported with the reason
        return inner
    if isinstance(bound, PendingSlice):
        # A slice of a pending crop: its bounds are relative to the crop.
        source = cx.type(bound.source)
        local = slice_bounds(node, inputs, cx.opset, (*source.shape[:2], *bound.size))
        bounds = local[:2] + [(start + offset, stop + offset, step)
                              for (start, stop, step), (offset, _) in zip(local[2:], bound.bounds, strict=True)]
        return _slice_value(cx, node, bounds, bound.source)
    x = cx.value(node, 0)
    return _slice_value(cx, node, slice_bounds(node, inputs, cx.opset, cx.type(x).shape), x)


# Its bounds are attributes before opset 10 and inputs from 10: slice_bounds reads them by opset.
converter("Slice")(_slice)


def _split(cx: Importer, node: OnnxNode) -> list[str]:
    """A Split of a computed tensor along channels: one channel_slice per output (a view where the memory plan
    allows, so the split copies nothing)."""
    x = cx.value(node, 0)
    t = cx.type(x)
    axis = int(node.attrs.get("axis", 0))
    axis = axis + t.rank if axis < 0 else axis
    inputs = [None] + [cx.const(node, i, required=False) for i in range(1, len(node.inputs))]
    sizes = split_sizes(node, inputs, cx.opset, t.shape[axis])
    if axis != 1:
        where = "the batch axis" if axis == 0 else f"axis {axis}"
        raise Unsupported(f"a Split of {t} along {where} (cnncomp splits computed tensors along channels only)")
    if min(sizes) == 0:
        raise Unsupported(f"a Split of {t} into channel counts {sizes}, one of them empty")
    outputs, start = [], 0
    for index, size in enumerate(sizes):
        outputs.append(cx.emit(node, "channel_slice", [x], {"start": start, "stop": start + size}, output=index))
        start += size
    return outputs


# Its lengths are an attribute before opset 13 and an input from 13: split_sizes reads them by opset.
converter("Split")(_split)


# ----- padding and resizing ---------------------------------------------------------------------------------------
PAD_MODES = {"constant": "zeros", "reflect": "reflect", "edge": "replicate"}


def _pad(cx: Importer, node: OnnxNode, pads: Sequence[int], mode: str, value: float,
         axes: Sequence[int] | None) -> str:
    x = cx.value(node, 0)
    t = cx.type(x)
    axes = list(range(t.rank)) if axes is None else [a + t.rank if a < 0 else a for a in axes]
    if len(pads) != 2 * len(axes):
        raise Unsupported(f"a Pad with {len(pads)} pads for {len(axes)} axes")
    begins = dict(zip(axes, pads[: len(axes)], strict=True))
    ends = dict(zip(axes, pads[len(axes):], strict=True))
    if t.rank != 4 or any(begins.get(a, 0) or ends.get(a, 0) for a in (0, 1)):
        raise Unsupported(f"a Pad of {t} along the batch or channel axis")
    padding = (begins.get(2, 0), ends.get(2, 0), begins.get(3, 0), ends.get(3, 0))
    if min(padding) < 0:
        raise Unsupported(f"a Pad with negative pads {list(pads)} (a crop)")
    if mode not in PAD_MODES:
        raise Unsupported(f"a Pad in mode {mode}")
    if mode == "constant" and value != 0:
        raise Unsupported(f"a Pad with the constant {value:g} (cnncomp pads with zeros)")
    return cx.emit(node, "pad", [x], {"pads": padding, "mode": PAD_MODES[mode]})


@converter("Pad", since=2)
def _pad_attributes(cx: Importer, node: OnnxNode) -> str:
    return _pad(cx, node, node.attrs["pads"], node.attrs.get("mode", "constant"), float(node.attrs.get("value", 0.0)),
                None)


@converter("Pad", since=11)
def _pad_inputs(cx: Importer, node: OnnxNode) -> str:
    value = cx.const(node, 2, required=False)
    axes = cx.const(node, 3, required=False) if cx.opset >= 18 else None
    return _pad(cx, node, [int(p) for p in cx.const(node, 1)], node.attrs.get("mode", "constant"),
                0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0]),
                None if axes is None else [int(a) for a in axes])


def _spatial_factors(cx: Importer, node: OnnxNode, x: str, values: np.ndarray, axes: Any, what: str) -> list[Any]:
    """Scales or sizes for H and W, from values for every axis (or for `axes`); N and C must stay."""
    t = cx.type(x)
    full: list[Any] = [1.0 if what == "scales" else d for d in t.shape]
    axes = list(range(t.rank)) if axes is None else [a + t.rank if a < 0 else a for a in axes]
    values = [float(v) if what == "scales" else int(v) for v in np.ravel(values)]
    if len(values) != len(axes):
        raise Unsupported(f"a {node.op_type} with {len(values)} {what} for {len(axes)} axes")
    for axis, v in zip(axes, values, strict=True):
        full[axis] = v
    if t.rank != 4 or full[:2] != ([1.0, 1.0] if what == "scales" else list(t.shape[:2])):
        raise Unsupported(f"a {node.op_type} of {t} with {what} {full} (cnncomp resizes H and W of NCHW tensors)")
    return full[2:]


def _resize(cx: Importer, node: OnnxNode, spec: ResizeSpec) -> str:
    x = cx.value(node, 0)
    return cx.emit(node, "upsample", [x], upsample_attrs(spec, cx.type(x).spatial))


def _legacy_nearest(scales: Sequence[float]) -> str:
    # Upsample and opset-10 Resize take floor(x / scale) when enlarging, ceil when shrinking (ONNX Runtime's
    # rule for these ops).
    return "floor" if min(scales) >= 1 else "ceil"


def _legacy_resize(cx: Importer, node: OnnxNode, scales: np.ndarray) -> str:
    x = cx.value(node, 0)
    hw = tuple(_spatial_factors(cx, node, x, scales, None, "scales"))
    mode = node.attrs.get("mode", "nearest")
    mode = {"bilinear": "linear"}.get(mode, mode)
    return _resize(cx, node, ResizeSpec(mode, "asymmetric", _legacy_nearest(hw), scales=hw))


@converter("Upsample", since=7)
def _upsample_attribute(cx: Importer, node: OnnxNode) -> str:
    return _legacy_resize(cx, node, np.asarray(node.attrs["scales"]))


@converter("Upsample", since=9)
def _upsample_input(cx: Importer, node: OnnxNode) -> str:
    return _legacy_resize(cx, node, cx.const(node, 1))


@converter("Resize", since=10)
def _resize_v10(cx: Importer, node: OnnxNode) -> str:
    return _legacy_resize(cx, node, cx.const(node, 1))


@converter("Resize", since=11)
def _resize_v11(cx: Importer, node: OnnxNode) -> str:
    """Inputs X, roi, scales, sizes (from opset 13 roi and scales may be omitted); from opset 18 `axes`,
    `antialias` and `keep_aspect_ratio_policy`; from 19 half_pixel_symmetric."""
    x = cx.value(node, 0)
    attrs = node.attrs
    scales, sizes = cx.const(node, 2, required=False), cx.const(node, 3, required=False)
    axes = attrs.get("axes")
    if sizes is not None and sizes.size:
        if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Unsupported(f"a Resize with keep_aspect_ratio_policy={attrs['keep_aspect_ratio_policy']}")
        factors: dict[str, Any] = {"sizes": tuple(_spatial_factors(cx, node, x, sizes, axes, "sizes"))}
    elif scales is not None and scales.size:
        factors = {"scales": tuple(_spatial_factors(cx, node, x, scales, axes, "scales"))}
    else:
        raise Unsupported("a Resize with neither scales nor sizes")
    spec = ResizeSpec(attrs.get("mode", "nearest"), attrs.get("coordinate_transformation_mode", "half_pixel"),
                      attrs.get("nearest_mode", "round_prefer_floor"), float(attrs.get("cubic_coeff_a", -0.75)),
                      bool(attrs.get("exclude_outside", 0)), **factors)
    in_hw = cx.type(x).spatial
    if attrs.get("antialias", 0) and any(o < n for o, n in zip(spec.output_size(in_hw), in_hw, strict=True)):
        raise Unsupported("a Resize with antialias=1 that shrinks (an averaging filter cnncomp's upsample lacks)")
    return _resize(cx, node, spec)
