"""Pooling: max and average windows, the max-pool indices and the unpooling that uses them, global and adaptive
average pooling."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import (
    Attr,
    Fusion,
    Op,
    OpError,
    Window,
    positive,
    require_nchw,
    require_rank,
    window_output_size,
)
from cnncomp.ops.conv import check_window_attrs, sliding_windows

POOL_ATTRS = {
    "kernel": Attr("pair"),
    "stride": Attr("pair", None),  # defaults to the kernel, as in PyTorch
    "padding": Attr("pads", (0, 0, 0, 0)),
    "ceil_mode": Attr("bool", False),
}


class WindowPool(Op):
    """Shared rules of max and average pooling over KH x KW windows."""

    fusion = Fusion.REDUCE
    dilated = False

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["stride"] is None:
            attrs["stride"] = attrs["kernel"]
        attrs = check_window_attrs(attrs)
        top, bottom, left, right = attrs["padding"]
        kh, kw = attrs["kernel"]
        if max(top, bottom) > kh // 2 or max(left, right) > kw // 2:
            raise OpError(f"padding {attrs['padding']} must be at most half the kernel {attrs['kernel']}, "
                          "so no window lies wholly in the padding", shape=False)
        return attrs

    def output_hw(self, attrs: Mapping[str, Any], x: TensorType, strict: bool) -> tuple[int, int]:
        top, bottom, left, right = attrs["padding"]
        (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
        dh, dw = attrs.get("dilation", (1, 1))
        oh = window_output_size("height", x.shape[2], kh, sh, top, bottom, dh, strict, attrs["ceil_mode"])
        ow = window_output_size("width", x.shape[3], kw, sw, left, right, dw, strict, attrs["ceil_mode"])
        return oh, ow

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        hw = self.output_hw(attrs, x, strict)
        top, _, left, _ = attrs["padding"]
        for axis, size, begin, kernel, stride, dilation in zip(("height", "width"), x.spatial, (top, left),
                                                              attrs["kernel"], attrs["stride"],
                                                              attrs.get("dilation", (1, 1)), strict=True):
            # Only a window starting in the leading padding can miss the input, and only by dilation.
            for start in range(-begin, 0, stride):
                if not any(0 <= start + dilation * tap < size for tap in range(kernel)):
                    raise OpError(f"{axis}: the window at {start} (F={kernel}, D={dilation}) reads padding only, "
                                  f"none of the {size} input pixels")
        return TensorType((x.batch, x.channels, *hw))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return sliding_windows(attrs)


def pool_windows(x: np.ndarray, attrs: Mapping[str, Any], fill: float, out_hw: tuple[int, int]) -> np.ndarray:
    """(N, C, OH, OW, KH, KW) view of the windows; `fill` stands for the padding and for the overhang that
    ceil_mode adds past the bottom/right padding."""
    top, bottom, left, right = attrs["padding"]
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    oh, ow = out_hw
    _, _, h, w = x.shape
    overhang_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + top + bottom))
    overhang_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + left + right))
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom + overhang_h), (left, right + overhang_w)), constant_values=fill)
    windows = sliding_window_view(xp, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), axis=(2, 3))
    return windows[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]


@register
class MaxPool2d(WindowPool):
    """y = max over each window (padding never wins)."""

    name = "max_pool2d"
    method = "max_pool"
    attrs = {**POOL_ATTRS, "dilation": Attr("pair", (1, 1))}

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        windows = pool_windows(x, attrs, -np.inf, self.output_hw(attrs, TensorType(x.shape), False))
        return windows.max(axis=(4, 5))


@register
class MaxPool2dIndices(WindowPool):
    """Where each max of `max_pool2d` (same attributes) came from: the flat index h*W + w in its input plane,
    as PyTorch's return_indices gives it (first position on ties). max_unpool2d takes these."""

    name = "max_pool2d_indices"
    attrs = {**POOL_ATTRS, "dilation": Attr("pair", (1, 1))}

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        return TensorType(super().infer(attrs, inputs, strict).shape, "int64")

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> None:
        return None  # indices carry positions, not a receptive field

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        _, _, h, w = x.shape
        oh, ow = self.output_hw(attrs, TensorType(x.shape), False)
        windows = pool_windows(x, attrs, -np.inf, (oh, ow))
        kh, kw = attrs["kernel"]
        flat = windows.reshape(*windows.shape[:4], kh * kw).argmax(axis=4)
        ki, kj = np.divmod(flat, kw)
        (sh, sw), (dh, dw) = attrs["stride"], attrs["dilation"]
        top, _, left, _ = attrs["padding"]
        rows = np.arange(oh).reshape(oh, 1) * sh - top + ki * dh
        cols = np.arange(ow).reshape(1, ow) * sw - left + kj * dw
        return (rows * w + cols).astype(np.int64)


@register
class AvgPool2d(WindowPool):
    """y = mean over each window; with count_include_pad the zero padding counts in the divisor (never the
    ceil_mode overhang), as PyTorch defines it."""

    name = "avg_pool2d"
    method = "avg_pool"
    attrs = {**POOL_ATTRS, "count_include_pad": Attr("bool", True)}

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        out_hw = self.output_hw(attrs, TensorType(x.shape), False)
        sums = pool_windows(x, attrs, 0.0, out_hw).sum(axis=(4, 5), dtype=np.float32)
        return (sums / self.divisors(attrs, x.shape[2:], out_hw)).astype(np.float32)

    def divisors(self, attrs: Mapping[str, Any], in_hw: Sequence[int], out_hw: tuple[int, int]) -> np.ndarray:
        """Each window's divisor (OH x OW, float32): its taps inside the input, or with count_include_pad inside
        the padded input (never the ceil_mode overhang)."""
        mask = np.ones((1, 1, *in_hw), dtype=np.float32)
        mask_attrs = attrs
        if attrs["count_include_pad"]:
            # The padding counts: a plane of ones padded with ones, windowed with no further padding.
            top, bottom, left, right = attrs["padding"]
            mask = np.pad(mask, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=1.0)
            mask_attrs = {**attrs, "padding": (0, 0, 0, 0)}
        return pool_windows(mask, mask_attrs, 0.0, out_hw).sum(axis=(4, 5), dtype=np.float32)[0, 0]


@register
class MaxUnpool2d(Op):
    """The lecture's unpooling: each value goes back to the position its max came from (indices from
    max_pool2d_indices); every other output is zero. Output size (H-1)*S - P + K unless given."""

    name = "max_unpool2d"
    method = "max_unpool"
    fusion = Fusion.INJECTIVE
    arity = (2, 2)
    attrs = {
        "kernel": Attr("pair"),
        "stride": Attr("pair", None),
        "padding": Attr("pads", (0, 0, 0, 0)),
        "output_size": Attr("pair", None),
    }

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["stride"] is None:
            attrs["stride"] = attrs["kernel"]
        return check_window_attrs(attrs)

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_rank(inputs, 4)
        x, indices = inputs
        if x.dtype != "float32" or indices.dtype != "int64":
            raise OpError(f"expects float32 values and int64 indices, got {x.dtype} and {indices.dtype}")
        if x.shape != indices.shape:
            raise OpError(f"values {x} and indices {indices} must have the same shape")
        if attrs["output_size"] is not None:
            oh, ow = attrs["output_size"]
        else:
            top, bottom, left, right = attrs["padding"]
            (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
            oh = (x.shape[2] - 1) * sh - top - bottom + kh
            ow = (x.shape[3] - 1) * sw - left - right + kw
        positive(oh, "output height")
        positive(ow, "output width")
        return TensorType((x.batch, x.channels, oh, ow))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return tuple(Window(Fraction(-(-k // s)), Fraction(1, s))
                     for k, s in zip(attrs["kernel"], attrs["stride"], strict=True))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x, indices = inputs
        n, c = x.shape[:2]
        out_shape = self.infer(attrs, [TensorType(x.shape), TensorType(indices.shape, "int64")], False).shape
        plane = out_shape[2] * out_shape[3]
        flat_indices = indices.reshape(n, c, -1)
        if flat_indices.size and (flat_indices.min() < 0 or flat_indices.max() >= plane):
            raise OpError(f"an unpooling index lies outside the {out_shape[2]}x{out_shape[3]} output plane")
        out = np.zeros((n, c, plane), dtype=np.float32)
        np.put_along_axis(out, flat_indices, x.reshape(n, c, -1), axis=2)
        return out.reshape(out_shape)


@register
class GlobalAvgPool(Op):
    """y[n, c] = mean of x[n, c] over all pixels; output N x C x 1 x 1."""

    name = "global_avg_pool"
    fusion = Fusion.REDUCE

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_nchw(inputs)
        return TensorType((inputs[0].batch, inputs[0].channels, 1, 1))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return tuple(Window(Fraction(size), Fraction(size)) for size in inputs[0].spatial)

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return inputs[0].mean(axis=(2, 3), keepdims=True, dtype=np.float32)


def adaptive_bins(size: int, out: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's bins: output i averages input [floor(i*N/out), ceil((i+1)*N/out))."""
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


@register
class AdaptiveAvgPool2d(Op):
    """Average pooling to a fixed output size, bins as PyTorch defines them."""

    name = "adaptive_avg_pool2d"
    method = "adaptive_avg_pool"
    fusion = Fusion.REDUCE
    attrs = {"output_size": Attr("pair")}

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for value in attrs["output_size"]:
            positive(value, "output_size")
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        return TensorType((x.batch, x.channels, *attrs["output_size"]))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return tuple(Window(Fraction(-(-size // out)), Fraction(size, out))
                     for size, out in zip(inputs[0].spatial, attrs["output_size"], strict=True))

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        n, c, h, w = x.shape
        (h0, h1), (w0, w1) = (adaptive_bins(h, attrs["output_size"][0]),
                              adaptive_bins(w, attrs["output_size"][1]))
        # Summed-area table: each bin's sum from four corners, in float64 so long sums keep their precision.
        table = np.zeros((n, c, h + 1, w + 1))
        table[:, :, 1:, 1:] = x.cumsum(axis=2, dtype=np.float64).cumsum(axis=3)
        sums = (table[:, :, h1[:, None], w1[None, :]] - table[:, :, h0[:, None], w1[None, :]]
                - table[:, :, h1[:, None], w0[None, :]] + table[:, :, h0[:, None], w0[None, :]])
        counts = (h1 - h0)[:, None] * (w1 - w0)[None, :]
        return (sums / counts).astype(np.float32)
