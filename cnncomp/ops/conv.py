"""Convolutions: conv2d (with its optional fused epilogue) and conv_transpose2d (the up-convolution)."""

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
    ParamSpec,
    Window,
    positive,
    require_nchw,
    window_output_size,
)
from cnncomp.ops.epilogue import EPILOGUE_ATTRS, apply_epilogue, check_epilogue, epilogue_params


def same_pads(kernel: tuple[int, int], dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """The lecture's same padding P = (F-1)/2 per side (D*(F-1)/2 with dilation); an odd total puts the extra
    row/column at the bottom/right."""
    pads = []
    for k, d in zip(kernel, dilation, strict=True):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return (top, bottom, left, right)


def check_window_attrs(attrs: dict[str, Any]) -> dict[str, Any]:
    """Shared checks of kernel/stride/dilation/padding; resolves "same" padding."""
    for key in ("kernel", "stride", "dilation"):
        if key in attrs and attrs[key] is not None:
            for value in attrs[key]:
                positive(value, key)
    if attrs.get("padding") == "same":
        attrs["padding"] = same_pads(attrs["kernel"], attrs.get("dilation", (1, 1)))
    if any(p < 0 for p in attrs["padding"]):
        raise OpError(f"padding must not be negative, got {attrs['padding']}", shape=False)
    return attrs


def window_hw(attrs: Mapping[str, Any], x: TensorType, strict: bool) -> tuple[int, int]:
    """Output height and width of a KH x KW window sliding over x's planes (kernel, stride, padding, dilation)."""
    top, bottom, left, right = attrs["padding"]
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    return (window_output_size("height", x.shape[2], kh, sh, top, bottom, dh, strict),
            window_output_size("width", x.shape[3], kw, sw, left, right, dw, strict))


def sliding_windows(attrs: Mapping[str, Any]) -> tuple[Window, Window]:
    """Receptive-field step of a (dilated) KH x KW window moving by the stride."""
    dilation = attrs.get("dilation", (1, 1))
    return tuple(
        Window(Fraction(d * (k - 1) + 1), Fraction(s))
        for k, s, d in zip(attrs["kernel"], attrs["stride"], dilation, strict=True)
    )


def is_depthwise(attrs: Mapping[str, Any], in_channels: int) -> bool:
    """Whether a conv2d filters each input channel on its own (groups = in_channels, out_channels = C * M), the
    conv depthwise_conv2d computes. A one-channel input counts (groups = C = 1)."""
    return attrs["groups"] == in_channels


def is_pointwise(attrs: Mapping[str, Any], any_stride: bool = False) -> bool:
    """Whether a conv2d is a matrix product per image (pointwise_conv2d): a 1x1 kernel, one group, no padding and
    stride 1, or any stride if `any_stride` (a strided_slice first makes it stride 1). Dilation does not matter
    for a 1x1 kernel."""
    return (attrs["kernel"] == (1, 1) and attrs["groups"] == 1 and not any(attrs["padding"])
            and (any_stride or attrs["stride"] == (1, 1)))


def conv2d_nchw(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int], pads: tuple[int, int, int, int],
                dilation: tuple[int, int], groups: int) -> np.ndarray:
    """Grouped, strided, dilated 2-D convolution (cross-correlation, as every CNN framework computes it) by
    im2col and one batched matrix product per group."""
    n, c, _, _ = x.shape
    out_channels, cg, kh, kw = weight.shape
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    extent = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    windows = sliding_window_view(xp, extent, axis=(2, 3))
    windows = windows[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]
    oh, ow = windows.shape[2:4]
    # (N, G, Cg, OH, OW, KH, KW) -> (N, G, OH*OW, Cg*KH*KW): pixels by receptive field, per group.
    cols = windows.reshape(n, groups, cg, oh, ow, kh, kw).transpose(0, 1, 3, 4, 2, 5, 6)
    cols = cols.reshape(n, groups, oh * ow, cg * kh * kw)
    og = out_channels // groups
    w = weight.reshape(groups, og, cg * kh * kw).transpose(0, 2, 1)
    out = np.matmul(cols, w)  # (N, G, OH*OW, Og)
    return np.ascontiguousarray(out.transpose(0, 1, 3, 2)).reshape(n, out_channels, oh, ow)


CONV_ATTRS = {
    "out_channels": Attr("int"),
    "kernel": Attr("pair"),
    "stride": Attr("pair", (1, 1)),
    "padding": Attr("pads", (0, 0, 0, 0)),
    "dilation": Attr("pair", (1, 1)),
    "groups": Attr("int", 1),
    "bias": Attr("bool", True),
}


class ConvFamily(Op):
    """Rules shared by the convolutions: channel groups, window attributes, a weight and an optional bias."""

    fusion = Fusion.OUT_ELEMWISE_FUSABLE
    output_weight = "weight"

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        positive(attrs["out_channels"], "out_channels")
        positive(attrs["groups"], "groups")
        return check_window_attrs(attrs)

    def check_groups(self, attrs: Mapping[str, Any], x: TensorType) -> None:
        groups = attrs["groups"]
        if x.channels % groups:
            raise OpError(f"groups={groups} does not divide the {x.channels} input channels")
        if attrs["out_channels"] % groups:
            raise OpError(f"groups={groups} does not divide the {attrs['out_channels']} output channels")

    def weight_shape(self, attrs: Mapping[str, Any], x: TensorType) -> tuple[int, ...]:
        raise NotImplementedError

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        specs = {"weight": ParamSpec(self.weight_shape(attrs, inputs[0]))}
        if attrs["bias"]:
            specs["bias"] = ParamSpec((attrs["out_channels"],), init="zeros")
        return specs


@register
class Conv2d(ConvFamily):
    """y = epilogue(conv(x, weight) + bias); weight is (out_channels, in_channels/groups, KH, KW)."""

    name = "conv2d"
    method = "conv"
    arity = (1, 2)
    attrs = {**CONV_ATTRS, **EPILOGUE_ATTRS}

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        self.check_groups(attrs, x)
        output = TensorType((x.batch, attrs["out_channels"], *window_hw(attrs, x, strict)))
        check_epilogue(attrs, inputs, output)
        return output

    def weight_shape(self, attrs: Mapping[str, Any], x: TensorType) -> tuple[int, ...]:
        return (attrs["out_channels"], x.channels // attrs["groups"], *attrs["kernel"])

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        return {**super().params(attrs, inputs), **epilogue_params(attrs, attrs["out_channels"])}

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        kh, kw = attrs["kernel"]
        return output.size * (inputs[0].channels // attrs["groups"]) * kh * kw

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return sliding_windows(attrs)

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        y = conv2d_nchw(inputs[0], params["weight"], attrs["stride"], attrs["padding"], attrs["dilation"],
                        attrs["groups"])
        return apply_epilogue(y, inputs, params, attrs)


def transposed_output_size(axis: str, size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                           dilation: int, output_padding: int) -> int:
    out = (size - 1) * stride - pad_begin - pad_end + dilation * (kernel - 1) + output_padding + 1
    if out <= 0:
        raise OpError(
            f"{axis}: output size (N-1)*S - P + D*(F-1) + output_padding + 1 = ({size}-1)*{stride} - "
            f"{pad_begin + pad_end} + {dilation}*({kernel}-1) + {output_padding} + 1 = {out} is not positive"
        )
    return out


@register
class ConvTranspose2d(ConvFamily):
    """The transposed convolution (up-convolution): each input pixel scatters weight-scaled copies of the kernel
    into the output at stride S. weight is (in_channels, out_channels/groups, KH, KW), as in PyTorch."""

    name = "conv_transpose2d"
    method = "conv_transpose"
    aliases = ("upconv",)  # the lecture's name
    attrs = {**CONV_ATTRS, "output_padding": Attr("pair", (0, 0))}

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["padding"] == "same":
            raise OpError('padding "same" is not defined for conv_transpose2d; give explicit pads', shape=False)
        attrs = super().finalize(attrs)
        for op, s, d in zip(attrs["output_padding"], attrs["stride"], attrs["dilation"], strict=True):
            if op < 0 or (op >= s and op >= d):
                raise OpError(f"output_padding {attrs['output_padding']} must be non-negative and smaller than "
                              f"the stride {attrs['stride']} or the dilation {attrs['dilation']}", shape=False)
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        self.check_groups(attrs, x)
        top, bottom, left, right = attrs["padding"]
        (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
        oph, opw = attrs["output_padding"]
        oh = transposed_output_size("height", x.shape[2], kh, sh, top, bottom, dh, oph)
        ow = transposed_output_size("width", x.shape[3], kw, sw, left, right, dw, opw)
        return TensorType((x.batch, attrs["out_channels"], oh, ow))

    def weight_shape(self, attrs: Mapping[str, Any], x: TensorType) -> tuple[int, ...]:
        return (x.channels, attrs["out_channels"] // attrs["groups"], *attrs["kernel"])

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        kh, kw = attrs["kernel"]
        return inputs[0].size * (attrs["out_channels"] // attrs["groups"]) * kh * kw

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        # An output pixel is reached by at most ceil(extent / S) input pixels along an axis.
        return tuple(
            Window(Fraction(-(-(d * (k - 1) + 1) // s)), Fraction(1, s))
            for k, s, d in zip(attrs["kernel"], attrs["stride"], attrs["dilation"], strict=True)
        )

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x, weight = inputs[0], params["weight"]
        n, c, h, w = x.shape
        groups = attrs["groups"]
        cg, og, kh, kw = c // groups, weight.shape[1], weight.shape[2], weight.shape[3]
        (sh, sw), (dh, dw), (oph, opw) = attrs["stride"], attrs["dilation"], attrs["output_padding"]
        top, bottom, left, right = attrs["padding"]
        # Every (output channel, kernel tap) contribution of every input pixel, one matrix product per group.
        taps = weight.reshape(groups, cg, og * kh * kw).transpose(0, 2, 1)
        contrib = np.matmul(taps, x.reshape(n, groups, cg, h * w)).reshape(n, groups * og, kh, kw, h, w)
        full_h = (h - 1) * sh + dh * (kh - 1) + 1 + max(0, oph - bottom)
        full_w = (w - 1) * sw + dw * (kw - 1) + 1 + max(0, opw - right)
        full = np.zeros((n, groups * og, full_h, full_w), dtype=np.float32)
        # Scatter-add one kernel tap at a time: a strided slice of the output per tap.
        for i in range(kh):
            for j in range(kw):
                full[:, :, i * dh: i * dh + (h - 1) * sh + 1: sh, j * dw: j * dw + (w - 1) * sw + 1: sw] += \
                    contrib[:, :, i, j]
        oh = (h - 1) * sh - top - bottom + dh * (kh - 1) + oph + 1
        ow = (w - 1) * sw - left - right + dw * (kw - 1) + opw + 1
        y = full[:, :, top: top + oh, left: left + ow]
        if "bias" in params:
            y = y + params["bias"].reshape(1, -1, 1, 1)
        return np.ascontiguousarray(y)
