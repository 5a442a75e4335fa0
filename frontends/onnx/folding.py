"""Constant folding: ONNX nodes whose operands are all known at import time, computed with numpy.

Exporters compute shapes inside the model (`Shape -> Gather -> Unsqueeze -> Concat -> Reshape` for a flatten,
`Shape -> Slice -> Concat -> Resize` for an upsampling to a size); with static shapes these are constants, and
folding them lets the converters see the flatten or the resize they describe. Each folder follows the ONNX
operator's definition for the opsets it names (attributes turned into inputs at some opset are read from
wherever that opset keeps them).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from cnncomp.limits import over_limit
from frontends.onnx.graph import OnnxNode, Unsupported, onnx_dtype

Folder = Callable[[OnnxNode, Sequence[np.ndarray | None], int], list[np.ndarray]]
FOLDERS: dict[str, Folder] = {}


def folder(*op_types: str) -> Callable[[Folder], Folder]:
    def register(function: Folder) -> Folder:
        for op_type in op_types:
            FOLDERS[op_type] = function
        return function

    return register


def _raw_axes(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int, since: int) -> list[int]:
    """Axes from the attribute (before opset `since`) or the second input (from `since`), as given."""
    axes = node.attrs.get("axes") if opset < since else inputs[1] if len(inputs) > 1 else None
    return [] if axes is None else [int(a) for a in np.ravel(axes)]


def _axes(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int, since: int, rank: int) -> list[int]:
    """The axes made non-negative for a tensor of `rank`."""
    return [a + rank if a < 0 else a for a in _raw_axes(node, inputs, opset, since)]


def _result_shape(shape: Sequence[int], dtype: np.dtype) -> tuple[int, ...]:
    """The shape of a folder's result if it is valid and within the memory limit: the folders that can make a
    tensor larger than their inputs (ConstantOfShape, Expand, Range, broadcasting) check it before allocating."""
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise Unsupported(f"a negative dimension in the shape {list(shape)}")
    reason = over_limit(f"the constant {list(shape)} it folds to", math.prod(shape) * np.dtype(dtype).itemsize)
    if reason is not None:
        raise Unsupported(reason)
    return shape


def _broadcast(*arrays: np.ndarray) -> None:
    _result_shape(np.broadcast_shapes(*(a.shape for a in arrays)), np.result_type(*arrays))


@folder("Constant")
def _constant(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    attrs = node.attrs
    if "value" in attrs:
        return [attrs["value"]]
    for key, dtype in (("value_float", np.float32), ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return [np.asarray(attrs[key], dtype=dtype)]
    raise Unsupported("a Constant holding a sparse tensor or strings")


@folder("Identity")
def _identity(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    return [inputs[0]]


@folder("Cast")
def _cast(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    target = onnx_dtype(node.attrs["to"])
    if target.isbuiltin != 1 or inputs[0].dtype.isbuiltin != 1:
        # bfloat16, float8, int4 and the like (ml_dtypes): ONNX saturates and rounds them in ways numpy's cast
        # does not.
        raise Unsupported(f"a Cast of {inputs[0].dtype} to {target} (cnncomp folds casts between numpy's own types)")
    return [inputs[0].astype(target)]


@folder("Gather")
def _gather(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data, indices = inputs[0], inputs[1].astype(np.int64)
    axis = node.attrs.get("axis", 0)
    size = data.shape[axis]
    return [np.take(data, np.where(indices < 0, indices + size, indices), axis=axis)]


@folder("Unsqueeze")
def _unsqueeze(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    axes = _raw_axes(node, inputs, opset, 13)
    result = data
    for axis in sorted(_axes(node, inputs, opset, 13, data.ndim + len(axes))):
        result = np.expand_dims(result, axis)
    return [result]


@folder("Squeeze")
def _squeeze(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    axes = _axes(node, inputs, opset, 13, data.ndim)
    return [np.squeeze(data, axis=tuple(axes)) if axes else np.squeeze(data)]


@folder("Concat")
def _concat(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    parts = [x for x in inputs if x is not None]
    return [np.concatenate(parts, axis=node.attrs["axis"])]


def slice_bounds(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int,
                 shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """Per axis of `shape`, the (start, stop, step) a Slice takes, clamped as ONNX defines it (attributes before
    opset 10, inputs from 10)."""
    rank = len(shape)
    if opset < 10:
        starts, ends = node.attrs["starts"], node.attrs["ends"]
        axes = node.attrs.get("axes", list(range(len(starts))))
        steps = [1] * len(starts)
    else:
        starts, ends = inputs[1].tolist(), inputs[2].tolist()
        axes = inputs[3].tolist() if len(inputs) > 3 and inputs[3] is not None else list(range(len(starts)))
        steps = inputs[4].tolist() if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
    bounds = [(0, size, 1) for size in shape]
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        axis = axis + rank if axis < 0 else axis
        size = shape[axis]
        if step == 0:
            raise Unsupported("a Slice with step 0")
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), size), min(max(end, 0), size)
        else:
            start, end = min(max(start, 0), size - 1), min(max(end, -1), size - 1)
        bounds[axis] = (int(start), int(end), int(step))
    return bounds


@folder("Slice")
def _slice(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    bounds = slice_bounds(node, inputs, opset, data.shape)
    index = tuple(slice(start, None if stop < 0 else stop, step) for start, stop, step in bounds)
    return [data[index]]


def reshape_target(shape: Sequence[int], requested: Sequence[int], allowzero: bool) -> tuple[int, ...]:
    """ONNX Reshape's output shape: 0 copies the input's dimension (unless allowzero), -1 is inferred."""
    target = [int(d) for d in requested]
    if not allowzero:
        target = [shape[i] if d == 0 else d for i, d in enumerate(target)]
    if target.count(-1) > 1:
        raise Unsupported(f"a Reshape to {target} with more than one -1")
    if -1 in target:
        known = int(np.prod([d for d in target if d != -1]))
        total = int(np.prod(shape))
        if known == 0 or total % known:
            raise Unsupported(f"a Reshape of {list(shape)} to {target}: the sizes do not divide")
        target[target.index(-1)] = total // known
    if int(np.prod(target)) != int(np.prod(shape)):
        raise Unsupported(f"a Reshape of {list(shape)} to {target}: the element counts differ")
    return tuple(target)


@folder("Reshape")
def _reshape(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    return [data.reshape(reshape_target(data.shape, inputs[1].tolist(), bool(node.attrs.get("allowzero", 0))))]


@folder("Flatten")
def _flatten(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    axis = node.attrs.get("axis", 1)
    axis = axis + data.ndim if axis < 0 else axis
    return [data.reshape(int(np.prod(data.shape[:axis])), -1)]


@folder("Transpose")
def _transpose(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    return [np.transpose(inputs[0], node.attrs.get("perm"))]


@folder("ConstantOfShape")
def _constant_of_shape(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    value = node.attrs.get("value", np.zeros(1, np.float32))
    return [np.full(_result_shape(np.ravel(inputs[0]), value.dtype), value.reshape(-1)[0], dtype=value.dtype)]


@folder("Range")
def _range(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    start, limit, delta = (x.reshape(()) for x in inputs[:3])
    if delta == 0:
        raise Unsupported("Range with a zero step")
    _result_shape((max(0, math.ceil((float(limit) - float(start)) / float(delta))),), start.dtype)
    return [np.arange(start, limit, delta, dtype=start.dtype)]


@folder("Expand")
def _expand(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data, shape = inputs[0], tuple(int(d) for d in inputs[1])
    # ONNX's Expand broadcasts both ways: a 1 in `shape` keeps the input's dimension.
    _result_shape(np.broadcast_shapes(data.shape, _result_shape(shape, data.dtype)), data.dtype)
    return [data * np.ones(shape, dtype=data.dtype)]


def _arithmetic(function: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Folder:
    def fold(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
        a, b = inputs[0], inputs[1]
        _broadcast(a, b)
        return [np.asarray(function(a, b)).astype(np.result_type(a, b), copy=False)]

    return fold


@folder("Max", "Min")
def _extremum(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """Max and Min take one or more operands."""
    operands = [x for x in inputs if x is not None]
    _broadcast(*operands)
    function = np.maximum if node.op_type == "Max" else np.minimum
    result = operands[0]
    for operand in operands[1:]:
        result = function(result, operand)
    return [np.asarray(result).astype(np.result_type(*operands), copy=False)]


@folder("Mod")
def _modulo(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """fmod=0 (integers only) takes the divisor's sign, as numpy's mod; fmod=1 the dividend's, as C's fmod."""
    a, b = inputs[0], inputs[1]
    _broadcast(a, b)
    function = np.fmod if node.attrs.get("fmod", 0) else np.mod
    with np.errstate(invalid="ignore", divide="ignore"):  # x mod 0 and inf mod y are NaN, as ONNX defines them
        return [np.asarray(function(a, b)).astype(np.result_type(a, b), copy=False)]


@folder("Pow")
def _power(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    """The result has the base's type, whatever the exponent's."""
    base, exponent = inputs[0], inputs[1]
    _broadcast(base, exponent)
    return [np.asarray(np.power(base, exponent)).astype(base.dtype, copy=False)]


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # Integer Div truncates toward zero in ONNX (numpy's // floors).
    if np.issubdtype(np.result_type(a, b), np.integer):
        return np.trunc(np.true_divide(a, b))
    return np.true_divide(a, b)


for _name, _function in (("Add", np.add), ("Sub", np.subtract), ("Mul", np.multiply), ("Div", _divide)):
    FOLDERS[_name] = _arithmetic(_function)


@folder("Equal", "Less", "Greater")
def _compare(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    function = {"Equal": np.equal, "Less": np.less, "Greater": np.greater}[node.op_type]
    _broadcast(inputs[0], inputs[1])
    return [function(inputs[0], inputs[1])]


@folder("Where")
def _where(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    _broadcast(*inputs[:3])
    return [np.where(inputs[0], inputs[1], inputs[2])]


@folder("Not")
def _not(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    return [np.logical_not(inputs[0])]


def _unary(function: Callable[[np.ndarray], np.ndarray]) -> Folder:
    def fold(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
        return [np.asarray(function(inputs[0])).astype(inputs[0].dtype, copy=False)]

    return fold


for _name, _function in (("Neg", np.negative), ("Abs", np.abs), ("Floor", np.floor), ("Ceil", np.ceil),
                         ("Sqrt", np.sqrt), ("Reciprocal", np.reciprocal), ("Relu", lambda x: np.maximum(x, 0)),
                         ("Sigmoid", lambda x: 1 / (1 + np.exp(-x))), ("Tanh", np.tanh), ("Exp", np.exp)):
    FOLDERS[_name] = _unary(_function)


@folder("ReduceProd", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceMean")
def _reduce(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    since = 13 if node.op_type == "ReduceSum" else 18
    axes = _axes(node, inputs, opset, since, data.ndim)
    if not axes and node.attrs.get("noop_with_empty_axes", 0):
        return [data]
    function = {"ReduceProd": np.prod, "ReduceSum": np.sum, "ReduceMax": np.max, "ReduceMin": np.min,
                "ReduceMean": np.mean}[node.op_type]
    keepdims = bool(node.attrs.get("keepdims", 1))
    extra = {}
    if node.op_type in ("ReduceMax", "ReduceMin"):
        # The identity an empty reduction gives: the type's lowest value for a maximum, its highest for a minimum.
        low, high = _type_range(data.dtype)
        extra["initial"] = low if node.op_type == "ReduceMax" else high
    return [np.asarray(function(data, axis=tuple(axes) or None, keepdims=keepdims, **extra)).astype(data.dtype)]


def _type_range(dtype: np.dtype) -> tuple[object, object]:
    if dtype == np.bool_:
        return False, True
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min, np.iinfo(dtype).max
    return -np.inf, np.inf


def split_sizes(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int, size: int) -> list[int]:
    """The lengths of Split's outputs along its axis (of length `size`): the `split` attribute (before opset 13) or
    input (from 13), else equal parts, one per output (from opset 18 `num_outputs` of them, the last smaller
    when they do not divide `size`)."""
    count = int(node.attrs.get("num_outputs", len(node.outputs))) if opset >= 18 else len(node.outputs)
    if count != len(node.outputs):
        raise Unsupported(f"a Split into num_outputs={count} parts with {len(node.outputs)} outputs")
    if opset < 13:
        given = node.attrs.get("split")
    else:
        given = inputs[1].tolist() if len(inputs) > 1 and inputs[1] is not None else None
    if given is not None:
        sizes = [int(length) for length in given]
        if len(sizes) != count or sum(sizes) != size or min(sizes) < 0:
            raise Unsupported(f"a Split of length {size} into {sizes} for {count} outputs (expected one length "
                              f"per output, none negative, summing to {size})")
        return sizes
    chunk = -(-size // count)
    if (opset < 18 and size % count) or (count - 1) * chunk >= size:
        raise Unsupported(f"a Split of length {size} into {count} equal parts")
    return [min(chunk, size - i * chunk) for i in range(count)]


@folder("Split")
def _split(node: OnnxNode, inputs: Sequence[np.ndarray | None], opset: int) -> list[np.ndarray]:
    data = inputs[0]
    axis = node.attrs.get("axis", 0)
    sizes = split_sizes(node, inputs, opset, data.shape[axis])
    return np.split(data, np.cumsum(sizes)[:-1], axis=axis)
