"""Ops the passes lower convolutions to, each a kernel a backend implements on its own:

- `depthwise_conv2d`: a conv with groups = in_channels (one KH x KW filter per channel, optional multiplier);
- `pointwise_conv2d`: a 1x1 conv as one matrix product W (O x C) @ X (C x H*W) per image, optionally scaling its
  input channels per sample first (squeeze-and-excitation's gate as a prologue);
- `strided_slice`: every S-th row and column, which turns a strided 1x1 conv into a pointwise one;
- `separable_conv2d`: a depthwise step, an optional bias and activation, then a pointwise step, in one node.

Each carries conv2d's epilogue `act(affine(y + bias) + residual)` on its output and counts exactly the MACs of the
convolutions it replaces, so a model's MAC total does not change when it is lowered.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.activation import ACTIVATIONS, DEFAULT_LEAKY_ALPHA, apply_activation
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
from cnncomp.ops.conv import check_window_attrs, sliding_windows, window_hw
from cnncomp.ops.epilogue import EPILOGUE_ATTRS, apply_epilogue, check_epilogue, epilogue_params, per_channel

WINDOW_ATTRS = {
    "kernel": Attr("pair"),
    "stride": Attr("pair", (1, 1)),
    "padding": Attr("pads", (0, 0, 0, 0)),
    "dilation": Attr("pair", (1, 1)),
    "multiplier": Attr("int", 1),
}


def depthwise_nchw(x: np.ndarray, weight: np.ndarray, stride: tuple[int, int], pads: tuple[int, int, int, int],
                   dilation: tuple[int, int]) -> np.ndarray:
    """Depthwise convolution: output channel c*M + m is input channel c correlated with weight[c*M + m, 0]."""
    n, c, _, _ = x.shape
    channels_out, _, kh, kw = weight.shape
    top, bottom, left, right = pads
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    extent = (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1)
    windows = sliding_window_view(xp, extent, axis=(2, 3))
    windows = windows[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]  # (N, C, OH, OW, KH, KW)
    oh, ow = windows.shape[2:4]
    w = weight.reshape(c, channels_out // c, kh, kw)
    out = np.einsum("nchwij,cmij->ncmhw", windows, w, optimize=True)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(n, channels_out, oh, ow)


def pointwise_nchw(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """y[n] = weight (O x C) @ x[n] (C x H*W): a 1x1 convolution as one matrix product per image."""
    n, c, h, w = x.shape
    y = np.matmul(weight, x.reshape(n, c, h * w))
    return y.reshape(n, weight.shape[0], h, w)


class WindowedDepthwise(Op):
    """Shared rules of the ops whose first step is a depthwise window: attributes, output size, receptive field."""

    fusion = Fusion.OUT_ELEMWISE_FUSABLE

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        positive(attrs["multiplier"], "multiplier")
        if "out_channels" in attrs:
            positive(attrs["out_channels"], "out_channels")
        return check_window_attrs(attrs)

    def depthwise_type(self, attrs: Mapping[str, Any], x: TensorType, strict: bool) -> TensorType:
        return TensorType((x.batch, x.channels * attrs["multiplier"], *window_hw(attrs, x, strict)))

    def depthwise_weight_shape(self, attrs: Mapping[str, Any], x: TensorType) -> tuple[int, ...]:
        return (x.channels * attrs["multiplier"], 1, *attrs["kernel"])

    def depthwise_macs(self, attrs: Mapping[str, Any], x: TensorType) -> int:
        kh, kw = attrs["kernel"]
        return self.depthwise_type(attrs, x, strict=False).size * kh * kw

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return sliding_windows(attrs)


@register
class DepthwiseConv2d(WindowedDepthwise):
    """y = epilogue(depthwise(x, weight) + bias): conv2d with groups = in_channels, out_channels = C * multiplier.

    weight is (C * multiplier, 1, KH, KW), conv2d's layout for groups = C: output channel c*M + m filters input
    channel c with weight[c*M + m, 0]. bias is (C * multiplier,). Operands: x, then the residual if `residual`.
    MACs: output size x KH x KW, as the grouped conv2d it replaces.
    """

    name = "depthwise_conv2d"
    output_weight = "weight"
    arity = (1, 2)
    attrs = {**WINDOW_ATTRS, "bias": Attr("bool", True), **EPILOGUE_ATTRS}

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_nchw(inputs)
        output = self.depthwise_type(attrs, inputs[0], strict)
        check_epilogue(attrs, inputs, output)
        return output

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        channels = inputs[0].channels * attrs["multiplier"]
        specs = {"weight": ParamSpec(self.depthwise_weight_shape(attrs, inputs[0]))}
        if attrs["bias"]:
            specs["bias"] = ParamSpec((channels,), init="zeros")
        return {**specs, **epilogue_params(attrs, channels)}

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        return self.depthwise_macs(attrs, inputs[0])

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        y = depthwise_nchw(inputs[0], params["weight"], attrs["stride"], attrs["padding"], attrs["dilation"])
        return apply_epilogue(y, inputs, params, attrs)


@register
class PointwiseConv2d(Op):
    """y[n] = epilogue(weight @ (gate[n] * x[n]) + bias): a 1x1, stride 1, unpadded conv as a matrix product.

    weight is (out_channels, C): conv2d's (out_channels, C, 1, 1) weight without its unit axes. x[n] is read as a
    C x (H*W) matrix. Operands: x; then, if `gate`, a per-sample per-channel input scale of shape N x C x 1 x 1
    (squeeze-and-excitation's gate, applied to the input before the product); then the residual if `residual`.
    MACs: output size x C, as the 1x1 conv2d it replaces (the gate's scaling is not a MAC of a weighted layer).
    """

    name = "pointwise_conv2d"
    fusion = Fusion.OUT_ELEMWISE_FUSABLE
    output_weight = "weight"
    arity = (1, 3)
    attrs = {"out_channels": Attr("int"), "bias": Attr("bool", True), "gate": Attr("bool", False), **EPILOGUE_ATTRS}

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        positive(attrs["out_channels"], "out_channels")
        return attrs

    @staticmethod
    def epilogue_operands(attrs: Mapping[str, Any], operands: Sequence[Any]) -> list[Any]:
        """The operands in the order the shared epilogue reads them: data, then residual (the gate left out)."""
        return [operands[0], *operands[2:]] if attrs["gate"] else list(operands)

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        if attrs["gate"]:
            if len(inputs) < 2:
                raise OpError("expects a gate operand after the data operand (gate=True)", shape=False)
            if inputs[1].shape != (x.batch, x.channels, 1, 1):
                raise OpError(f"gate has shape {inputs[1]}, expected N x C x 1 x 1 = {x.batch}x{x.channels}x1x1")
        output = TensorType((x.batch, attrs["out_channels"], *x.spatial))
        check_epilogue(attrs, self.epilogue_operands(attrs, inputs), output)
        return output

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        out = attrs["out_channels"]
        specs = {"weight": ParamSpec((out, inputs[0].channels))}
        if attrs["bias"]:
            specs["bias"] = ParamSpec((out,), init="zeros")
        return {**specs, **epilogue_params(attrs, out)}

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        return output.size * inputs[0].channels

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0] * inputs[1] if attrs["gate"] else inputs[0]
        y = pointwise_nchw(x, params["weight"])
        return apply_epilogue(y, self.epilogue_operands(attrs, inputs), params, attrs)


@register
class StridedSlice(Op):
    """y = x[:, :, ::SH, ::SW]: every S-th row and column, starting at the first. Output size ceil(N / S), the
    size of a 1x1 conv with stride S and no padding, which is this slice followed by a pointwise conv."""

    name = "strided_slice"
    fusion = Fusion.INJECTIVE
    attrs = {"stride": Attr("pair")}

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        for value in attrs["stride"]:
            positive(value, "stride")
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        x = require_nchw(inputs)
        h, w = (window_output_size(axis, size, 1, s, 0, 0, 1, strict)
                for axis, size, s in zip(("height", "width"), x.spatial, attrs["stride"], strict=True))
        return TensorType((x.batch, x.channels, h, w))

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window]:
        return tuple(Window(Fraction(1), Fraction(s)) for s in attrs["stride"])

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        sh, sw = attrs["stride"]
        return np.ascontiguousarray(inputs[0][:, :, ::sh, ::sw])


@register
class SeparableConv2d(WindowedDepthwise):
    """y = epilogue(pointwise_weight @ mid_act(depthwise(x, depthwise_weight) + mid_bias) + bias), in one node, so
    a kernel can compute a tile of the depthwise output and consume it in the pointwise step without writing the
    intermediate tensor (Xception: no mid_bias and no mid_act; MobileNet and EfficientNet: the folded batch norm
    as mid_bias, then relu6 or silu as mid_act).

    depthwise_weight is (C * multiplier, 1, KH, KW) as in depthwise_conv2d; mid_bias is (C * multiplier,);
    pointwise_weight is (out_channels, C * multiplier) as in pointwise_conv2d; bias is (out_channels,).
    Operands: x, then the residual if `residual`. MACs: the depthwise step's plus the pointwise step's.
    """

    name = "separable_conv2d"
    output_weight = "pointwise_weight"
    arity = (1, 2)
    attrs = {
        "out_channels": Attr("int"),
        **WINDOW_ATTRS,
        "mid_bias": Attr("bool", False),
        "mid_act": Attr("choice", None, choices=tuple(ACTIVATIONS)),
        "mid_alpha": Attr("float", DEFAULT_LEAKY_ALPHA),
        "bias": Attr("bool", True),
        **EPILOGUE_ATTRS,
    }

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_nchw(inputs)
        mid = self.depthwise_type(attrs, inputs[0], strict)
        output = TensorType((mid.batch, attrs["out_channels"], *mid.spatial))
        check_epilogue(attrs, inputs, output)
        return output

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        mid_channels = inputs[0].channels * attrs["multiplier"]
        out = attrs["out_channels"]
        specs = {"depthwise_weight": ParamSpec(self.depthwise_weight_shape(attrs, inputs[0]))}
        if attrs["mid_bias"]:
            specs["mid_bias"] = ParamSpec((mid_channels,), init="zeros")
        specs["pointwise_weight"] = ParamSpec((out, mid_channels))
        if attrs["bias"]:
            specs["bias"] = ParamSpec((out,), init="zeros")
        return {**specs, **epilogue_params(attrs, out)}

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        return self.depthwise_macs(attrs, inputs[0]) + output.size * inputs[0].channels * attrs["multiplier"]

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        mid = depthwise_nchw(inputs[0], params["depthwise_weight"], attrs["stride"], attrs["padding"],
                             attrs["dilation"])
        if attrs["mid_bias"]:
            mid = mid + per_channel(params["mid_bias"], mid.ndim)
        if attrs["mid_act"] is not None:
            mid = apply_activation(mid, attrs["mid_act"], attrs["mid_alpha"])
        return apply_epilogue(pointwise_nchw(mid, params["pointwise_weight"]), inputs, params, attrs)
