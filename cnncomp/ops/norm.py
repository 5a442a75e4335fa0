"""Normalizations: batch norm (inference form), local response normalization, softmax."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import Attr, Fusion, Op, OpError, ParamSpec, positive, require_float, require_nchw
from cnncomp.ops.epilogue import per_channel


@register
class BatchNorm(Op):
    """y = (x - running_mean) / sqrt(running_var + eps) * weight + bias, per channel. weight and bias are
    learned; the running statistics are not (and are not counted as parameters)."""

    name = "batch_norm"
    aliases = ("bn",)
    fusion = Fusion.BROADCAST
    attrs = {"eps": Attr("float", 1e-5)}

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return True

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["eps"] <= 0:
            raise OpError(f"eps must be positive, got {attrs['eps']}", shape=False)
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        if inputs[0].rank not in (2, 4):
            raise OpError(f"input has shape {inputs[0]}, expected NCHW or N x features")
        return inputs[0]

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        c = (inputs[0].channels,)
        return {
            "weight": ParamSpec(c, init="ones"),
            "bias": ParamSpec(c, init="zeros"),
            "running_mean": ParamSpec(c, learnable=False, init="zeros"),
            "running_var": ParamSpec(c, learnable=False, init="ones"),
        }

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        scale = params["weight"] / np.sqrt(params["running_var"] + np.float32(attrs["eps"]))
        shift = params["bias"] - params["running_mean"] * scale
        return x * per_channel(scale, x.ndim) + per_channel(shift, x.ndim)


@register
class LocalResponseNorm(Op):
    """AlexNet's LRN across channels: y_c = x_c / (k + alpha/size * sum of x_j^2 over the `size` channels
    around c)^beta. alpha is divided by size, as in PyTorch and ONNX (AlexNet: size 5, alpha 1e-4,
    beta 0.75, k 2)."""

    name = "lrn"
    fusion = Fusion.OPAQUE
    attrs = {
        "size": Attr("int", 5),
        "alpha": Attr("float", 1e-4),
        "beta": Attr("float", 0.75),
        "k": Attr("float", 1.0),
    }

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        positive(attrs["size"], "size")
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        return require_nchw(inputs)

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        size = attrs["size"]
        squares = np.pad(x.astype(np.float64) ** 2, ((0, 0), (size // 2, (size - 1) // 2), (0, 0), (0, 0)))
        running = np.concatenate([np.zeros_like(squares[:, :1]), squares.cumsum(axis=1)], axis=1)
        window_sums = running[:, size:] - running[:, :-size]
        denominator = (attrs["k"] + attrs["alpha"] / size * window_sums) ** attrs["beta"]
        return (x / denominator).astype(np.float32)


@register
class Softmax(Op):
    """y = exp(x - max) / sum(exp(x - max)) along `axis` (1: the classes)."""

    name = "softmax"
    fusion = Fusion.OPAQUE
    attrs = {"axis": Attr("int", 1)}

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return attrs["axis"] == 1  # along the channels

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        if not 1 <= attrs["axis"] < inputs[0].rank:
            raise OpError(f"axis {attrs['axis']} is not a non-batch axis of {inputs[0]}", shape=False)
        return inputs[0]

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        x = inputs[0]
        e = np.exp(x - x.max(axis=attrs["axis"], keepdims=True))
        return e / e.sum(axis=attrs["axis"], keepdims=True)
