"""Activation functions: one table used by the standalone ops and by the epilogue fused into conv and dense."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import Attr, Fusion, Op, require_float


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-x))) never overflows, for large |x| of either sign.
    return np.exp(-np.logaddexp(np.float32(0), -x)).astype(x.dtype, copy=False)


ACTIVATIONS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "relu": lambda x, alpha: np.maximum(x, np.float32(0)),
    "relu6": lambda x, alpha: np.clip(x, np.float32(0), np.float32(6)),
    "leaky_relu": lambda x, alpha: np.where(x >= 0, x, x * np.float32(alpha)),
    "tanh": lambda x, alpha: np.tanh(x),
    "sigmoid": lambda x, alpha: _sigmoid(x),
    "silu": lambda x, alpha: x * _sigmoid(x),
    "hardswish": lambda x, alpha: x * np.clip(x + np.float32(3), np.float32(0), np.float32(6)) / np.float32(6),
}
RELU_FAMILY = ("relu", "relu6", "leaky_relu")
DEFAULT_LEAKY_ALPHA = 0.01


def apply_activation(x: np.ndarray, name: str, alpha: float = DEFAULT_LEAKY_ALPHA) -> np.ndarray:
    return ACTIVATIONS[name](x, alpha)


class Activation(Op):
    """y = f(x), elementwise; f named by the op."""

    fusion = Fusion.ELEMWISE

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        return inputs[0]

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return apply_activation(inputs[0], self.name, attrs.get("alpha", DEFAULT_LEAKY_ALPHA))


@register
class Relu(Activation):
    name = "relu"


@register
class Relu6(Activation):
    name = "relu6"


@register
class LeakyRelu(Activation):
    name = "leaky_relu"
    attrs = {"alpha": Attr("float", DEFAULT_LEAKY_ALPHA)}


@register
class Tanh(Activation):
    name = "tanh"


@register
class Sigmoid(Activation):
    name = "sigmoid"


@register
class Silu(Activation):
    name = "silu"
    aliases = ("swish",)


@register
class Hardswish(Activation):
    name = "hardswish"
