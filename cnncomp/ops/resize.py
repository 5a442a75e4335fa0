"""Upsampling by interpolation: nearest neighbour, bilinear, bicubic (the lecture's three kinds)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import Attr, Fusion, Op, OpError, Window, positive, require_nchw

CUBIC_A = -0.75  # the cubic convolution constant of PyTorch and ONNX
TAPS = {"nearest": 1, "bilinear": 2, "bicubic": 4}


def _coordinate_scale(in_size: int, out_size: int, scale: float | None, align_corners: bool) -> float:
    if align_corners:
        return (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return 1.0 / scale if scale is not None else in_size / out_size


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    a = CUBIC_A
    x1, x2 = t + 1.0, 1.0 - t
    w0 = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * x2 - (a + 3)) * x2 * x2 + 1
    x3 = 2.0 - t
    w3 = ((a * x3 - 5 * a) * x3 + 8 * a) * x3 - 4 * a
    return np.stack([w0, w1, w2, w3], axis=1)


def interpolation_taps(in_size: int, out_size: int, mode: str, scale: float | None,
                       align_corners: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights, each (out_size, taps), of one axis, with PyTorch's coordinate rules."""
    coord_scale = _coordinate_scale(in_size, out_size, scale, align_corners)
    dst = np.arange(out_size)
    if mode == "nearest":
        # PyTorch computes floor(dst * scale) in float32; doing the same keeps every index identical.
        src = np.floor(dst.astype(np.float32) * np.float32(coord_scale)).astype(np.int64)
        return np.minimum(src, in_size - 1)[:, None], np.ones((out_size, 1))
    src = coord_scale * dst if align_corners else coord_scale * (dst + 0.5) - 0.5
    if mode == "bilinear":
        src = np.maximum(src, 0.0)
        i0 = np.floor(src).astype(np.int64)
        i0 = np.minimum(i0, in_size - 1)
        i1 = np.minimum(i0 + 1, in_size - 1)
        frac = src - i0
        return np.stack([i0, i1], axis=1), np.stack([1.0 - frac, frac], axis=1)
    i0 = np.floor(src).astype(np.int64)
    indices = np.clip(i0[:, None] + np.arange(-1, 3)[None, :], 0, in_size - 1)
    return indices, _cubic_weights(src - i0)


def interpolate_axis(x: np.ndarray, axis: int, indices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    shape = [1] * x.ndim
    shape[axis] = indices.shape[0]
    result = np.zeros(x.shape[:axis] + (indices.shape[0],) + x.shape[axis + 1:], dtype=np.float64)
    for tap in range(indices.shape[1]):
        result += np.take(x, indices[:, tap], axis=axis) * weights[:, tap].reshape(shape)
    return result


@register
class Upsample(Op):
    """Resize H x W by `scale` (output floor(N * scale)) or to `size`. Coordinates follow PyTorch's interpolate:
    with a scale, source = dest / scale; with a size, source = dest * N_in / N_out; align_corners maps the
    corner pixel centers onto each other (bilinear and bicubic only)."""

    name = "upsample"
    fusion = Fusion.INJECTIVE
    attrs = {
        "mode": Attr("choice", "nearest", choices=tuple(TAPS)),
        "scale": Attr("float_pair", None),
        "size": Attr("pair", None),
        "align_corners": Attr("bool", False),
    }

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (attrs["scale"] is None) == (attrs["size"] is None):
            raise OpError("give exactly one of scale and size", shape=False)
        if attrs["scale"] is not None and min(attrs["scale"]) <= 0:
            raise OpError(f"scale must be positive, got {attrs['scale']}", shape=False)
        if attrs["align_corners"] and attrs["mode"] == "nearest":
            raise OpError("align_corners applies to bilinear and bicubic modes only", shape=False)
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        if attrs["size"] is not None:
            oh, ow = attrs["size"]
        else:
            oh, ow = (math.floor(n * s) for n, s in zip(x.spatial, attrs["scale"], strict=True))
        positive(oh, "output height")
        positive(ow, "output width")
        return TensorType((x.batch, x.channels, oh, ow))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        out = self.infer(attrs, inputs, False).spatial
        return tuple(Window(Fraction(TAPS[attrs["mode"]]), Fraction(n, o))
                     for n, o in zip(inputs[0].spatial, out, strict=True))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        oh, ow = self.infer(attrs, [TensorType(x.shape)], False).spatial
        scales = attrs["scale"] or (None, None)
        y = x
        for axis, out_size, scale in ((2, oh, scales[0]), (3, ow, scales[1])):
            indices, weights = interpolation_taps(x.shape[axis], out_size, attrs["mode"], scale,
                                                  attrs["align_corners"])
            y = interpolate_axis(y, axis, indices, weights)
        return y.astype(np.float32)
