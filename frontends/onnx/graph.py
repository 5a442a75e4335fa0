"""The importer's view of an ONNX model: nodes with decoded attributes, the kinds of value a converter binds to
an ONNX value name, and `Unsupported`, which a converter raises for a node it cannot express exactly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

import numpy as np


class Unsupported(Exception):
    """A node cnncomp cannot compute exactly as ONNX defines it; the message says what and why (no node name:
    the importer adds it)."""


@dataclass(frozen=True)
class OnnxNode:
    """One ONNX node; `inputs` keeps "" for an omitted optional input, `attrs` holds plain Python and numpy
    values (strings decoded, tensors as arrays)."""

    op_type: str
    name: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any]

    @classmethod
    def from_proto(cls, proto: Any, onnx: Any) -> OnnxNode:
        attrs = {a.name: attribute_value(onnx, a) for a in proto.attribute}
        domain = "" if proto.domain == "ai.onnx" else proto.domain
        return cls(proto.op_type, proto.name, domain, tuple(proto.input), tuple(proto.output), attrs)

    @property
    def qualified_op(self) -> str:
        return f"{self.domain}.{self.op_type}" if self.domain else self.op_type

    @property
    def label(self) -> str:
        """The node's name, or its first output's when it has none."""
        return self.name or (self.outputs[0] if self.outputs else "")

    def describe(self) -> str:
        return f"{self.qualified_op} {self.label!r}"

    def input(self, index: int) -> str:
        """The name of input `index`, "" when omitted."""
        return self.inputs[index] if index < len(self.inputs) else ""


def attribute_value(onnx: Any, attribute: Any) -> Any:
    """An attribute's value as converters read it: strings decoded, tensors as arrays."""
    value = onnx.helper.get_attribute_value(attribute)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, onnx.TensorProto):
        return onnx.numpy_helper.to_array(value)
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8", "replace") for v in value]
    return value


def onnx_dtype(elem_type: int) -> np.dtype:
    from onnx.helper import tensor_dtype_to_np_dtype

    return np.dtype(tensor_dtype_to_np_dtype(elem_type))


@dataclass(frozen=True)
class FlatIndices:
    """ONNX's MaxPool indices, flat over the whole tensor: ((n*C + c)*H + h)*W + w = our per-plane indices (the
    max_pool2d_indices node `node`, h*W + w) + (n*C + c) * `plane` (None: a single plane, where both agree)."""

    node: str
    plane: int | None


@dataclass(frozen=True)
class Overhanging:
    """A ceil-mode pool whose ONNX output has one more row or column than ours: ONNX keeps a last window that
    starts in the bottom/right padding, PyTorch (and we) drop it. `inner` is our pool's value; only a Slice that
    keeps our windows, `shape`'s leading ones, can read it."""

    inner: Value
    shape: tuple[int, ...]


@dataclass(frozen=True)
class PendingSlice:
    """A center crop of `source` (rows and columns `bounds`, (start, stop) each) that no graph value's size
    matches yet: exporters crop one axis per Slice, and our crop, which takes its size from a reference tensor,
    can only be added once both axes are cut (by a following Slice)."""

    source: str
    bounds: tuple[tuple[int, int], tuple[int, int]]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(stop - start for start, stop in self.bounds)


# What an ONNX value name is bound to: a graph value (our node's name), a constant, or one of the above.
Value = Union[str, np.ndarray, FlatIndices, Overhanging, PendingSlice]  # noqa: UP007
