"""Ops that move data without arithmetic: graph inputs, identity and dropout, concat and channel slices, flatten,
pad and crop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import (
    Attr,
    Fusion,
    Op,
    OpError,
    Window,
    positive,
    prod,
    require_float,
    require_nchw,
    require_rank,
)


@register
class Input(Op):
    """A graph input; its shape includes the batch size, which is a compile parameter."""

    name = "input"
    method = None  # a graph input is `input NAME: CxHxW` in .cnn and Builder.input in Python
    fusion = Fusion.OPAQUE
    arity = (0, 0)
    attrs = {"shape": Attr("shape"), "dtype": Attr("choice", "float32", choices=("float32",))}

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        shape = attrs["shape"]
        if len(shape) < 2:
            raise OpError(f"input shape {shape} needs a batch axis and at least one more")
        for size in shape:
            positive(size, "every input dimension")
        return TensorType(shape, attrs["dtype"])


@register
class Identity(Op):
    """y = x."""

    name = "identity"
    fusion = Fusion.ELEMWISE
    copies_operand = True

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        return inputs[0]

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return True

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return inputs[0]


@register
class Dropout(Identity):
    """Dropout at inference: y = x (the rate only matters in training)."""

    name = "dropout"
    attrs = {"rate": Attr("float", 0.5)}

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not 0.0 <= attrs["rate"] < 1.0:
            raise OpError(f"rate must lie in [0, 1), got {attrs['rate']}", shape=False)
        return attrs


@register
class Concat(Op):
    """Operands joined along `axis` (1: channels, the inception module's filter concatenation)."""

    name = "concat"
    fusion = Fusion.INJECTIVE
    arity = (1, None)
    attrs = {"axis": Attr("int", 1)}

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return attrs["axis"] == 1  # along the channels

    def is_identity(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> bool:
        return len(inputs) == 1

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        first = inputs[0]
        axis = attrs["axis"]
        if not 1 <= axis < first.rank:
            raise OpError(f"axis {axis} is not a non-batch axis of a rank-{first.rank} tensor", shape=False)
        for index, t in enumerate(inputs[1:], start=1):
            others = [d for i, d in enumerate(t.shape) if i != axis]
            expected = [d for i, d in enumerate(first.shape) if i != axis]
            if t.rank != first.rank or others != expected:
                wanted = "x".join("*" if i == axis else str(d) for i, d in enumerate(first.shape))
                raise OpError(f"operand {index} has shape {t}, but operand 0 has {first}: all operands must "
                              f"have shape {wanted} (equal except on axis {axis})")
        shape = list(first.shape)
        shape[axis] = sum(t.shape[axis] for t in inputs)
        return TensorType(tuple(shape))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return np.concatenate(inputs, axis=attrs["axis"])


@register
class ChannelSlice(Op):
    """y = x[:, start:stop]: channels start to stop - 1 of x (DPN's dual-path split, one of Res2Net's scales); for a
    flat N x features tensor, those features. The inverse of concat along axis 1: one contiguous block per
    sample, so the memory plan makes it a view of x (no copy) at any batch size, its samples as far apart as
    x's; only the slice of a constant (which lives among the parameters, not in the arena) is copied."""

    name = "channel_slice"
    fusion = Fusion.INJECTIVE
    attrs = {"start": Attr("int"), "stop": Attr("int")}

    def is_identity(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> bool:
        return output == inputs[0]  # all the channels

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not 0 <= attrs["start"] < attrs["stop"]:
            raise OpError(f"channels {attrs['start']}:{attrs['stop']}: expected 0 <= start < stop", shape=False)
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        x = inputs[0]
        if attrs["stop"] > x.channels:
            raise OpError(f"channels {attrs['start']}:{attrs['stop']} reach past the {x.channels} of {x}")
        return TensorType((x.batch, attrs["stop"] - attrs["start"], *x.shape[2:]))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return inputs[0][:, attrs["start"]: attrs["stop"]]


@register
class Flatten(Op):
    """N x C x H x W -> N x (C*H*W), in C, H, W order (as PyTorch's flatten)."""

    name = "flatten"
    fusion = Fusion.INJECTIVE
    copies_operand = True

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        x = inputs[0]
        return TensorType((x.batch, prod(x.shape[1:])))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window] | None:
        if inputs[0].rank != 4:
            return None
        return tuple(Window(Fraction(size), Fraction(size)) for size in inputs[0].spatial)

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return inputs[0].reshape(inputs[0].shape[0], -1)


PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}


@register
class Pad(Op):
    """Spatial padding (top, bottom, left, right) with zeros, the reflection, or the replicated border."""

    name = "pad"
    fusion = Fusion.INJECTIVE
    attrs = {"pads": Attr("pads"), "mode": Attr("choice", "zeros", choices=tuple(PAD_MODES))}

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["pads"] == "same":
            raise OpError('pads "same" needs a kernel; give explicit pads', shape=False)
        if any(p < 0 for p in attrs["pads"]):
            raise OpError(f"pads must not be negative, got {attrs['pads']}", shape=False)
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        top, bottom, left, right = attrs["pads"]
        h, w = x.spatial
        if attrs["mode"] == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
            raise OpError(f"reflect padding {attrs['pads']} must be smaller than the input's {h}x{w}")
        return TensorType((x.batch, x.channels, h + top + bottom, w + left + right))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        top, bottom, left, right = attrs["pads"]
        return np.pad(inputs[0], ((0, 0), (0, 0), (top, bottom), (left, right)), mode=PAD_MODES[attrs["mode"]])


@register
class Crop(Op):
    """U-Net's copy-and-crop: the center of x, cut to the height and width of a reference tensor
    (operand 1, read for its shape only). An odd margin leaves the extra row/column at the bottom/right."""

    name = "crop"
    fusion = Fusion.INJECTIVE
    arity = (2, 2)
    shape_only_operands = (1,)

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_rank(inputs, 4)
        require_float(inputs)
        x, ref = inputs
        if ref.shape[2] > x.shape[2] or ref.shape[3] > x.shape[3]:
            raise OpError(f"cannot crop {x} to the {ref.shape[2]}x{ref.shape[3]} of the reference {ref}: "
                          "the reference is larger")
        return TensorType((x.batch, x.channels, ref.shape[2], ref.shape[3]))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x, ref = inputs
        (h, w), (rh, rw) = x.shape[2:], ref.shape[2:]
        top, left = (h - rh) // 2, (w - rw) // 2
        return x[:, :, top: top + rh, left: left + rw]
