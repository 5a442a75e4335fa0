"""Activation functions: each one registry entry holding everything about it, its numpy formula and how PyTorch and
ONNX spell it, so the epilogue of conv and dense, the fusion passes, ONNX import and export and the torch peer all
take the list of activations (`ACTIVATIONS`) and their definitions from here.

A new elementwise activation is one more `Activation` subclass in this module (and a kernel in each backend).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import get_op, register
from cnncomp.ops.base import Attr, Fusion, Op, require_float

DEFAULT_LEAKY_ALPHA = 0.01


@dataclass(frozen=True)
class Spelling:
    """How another framework writes an activation: the function (a dotted name) or op type, the arguments its
    definition fixes (gelu's approximate="tanh"), and those taken from our attributes ({its name: ours}). Where an
    argument is not given, its default there equals ours."""

    name: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    attrs: Mapping[str, str] = field(default_factory=dict)

    def arguments(self, attrs: Mapping[str, Any]) -> dict[str, Any]:
        """The keyword arguments for a node with these attributes of ours."""
        return {**self.fixed, **{theirs: attrs[ours] for theirs, ours in self.attrs.items()}}


@dataclass(frozen=True)
class OnnxSpelling(Spelling):
    """An ONNX operator computing the activation exactly: `since` is the first opset defining it so; `inputs` are
    constant operands after x, (ONNX input name, value)."""

    since: int = 1
    inputs: tuple[tuple[str, float], ...] = ()


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp(-log(1 + exp(-x))) never overflows, for large |x| of either sign.
    return np.exp(-np.logaddexp(np.float32(0), -x)).astype(x.dtype, copy=False)


class Activation(Op):
    """y = f(x), elementwise; f named by the op. The only attribute an activation may have is `alpha` (the one an
    epilogue carries with its `act`)."""

    fusion = Fusion.ELEMWISE
    torch: ClassVar[Spelling]
    onnx: ClassVar[OnnxSpelling]
    # ONNX spells x * gate(x) when its own operator is newer than the opset written (silu = x * sigmoid(x)).
    self_gated_by: ClassVar[str | None] = None
    # ReLU's family: He initialization suits the layers before it (the builder's default weights).
    relu_like: ClassVar[bool] = False

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        raise NotImplementedError

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        return inputs[0]

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return True

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return self.formula(inputs[0], attrs.get("alpha", DEFAULT_LEAKY_ALPHA))


@register
class Relu(Activation):
    name = "relu"
    torch = Spelling("torch.nn.functional.relu")
    onnx = OnnxSpelling("Relu")
    relu_like = True

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return np.maximum(x, np.float32(0))


@register
class Relu6(Activation):
    name = "relu6"
    torch = Spelling("torch.nn.functional.relu6")
    onnx = OnnxSpelling("Clip", since=11, inputs=(("min", 0.0), ("max", 6.0)))
    relu_like = True

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return np.clip(x, np.float32(0), np.float32(6))


@register
class LeakyRelu(Activation):
    name = "leaky_relu"
    attrs = {"alpha": Attr("float", DEFAULT_LEAKY_ALPHA)}
    torch = Spelling("torch.nn.functional.leaky_relu", attrs={"negative_slope": "alpha"})
    onnx = OnnxSpelling("LeakyRelu", attrs={"alpha": "alpha"})
    relu_like = True

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return np.where(x >= 0, x, x * np.float32(alpha))


@register
class Tanh(Activation):
    name = "tanh"
    torch = Spelling("torch.tanh")
    onnx = OnnxSpelling("Tanh")

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return np.tanh(x)


@register
class Sigmoid(Activation):
    name = "sigmoid"
    torch = Spelling("torch.sigmoid")
    onnx = OnnxSpelling("Sigmoid")

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return _sigmoid(x)


@register
class Silu(Activation):
    name = "silu"
    aliases = ("swish",)
    torch = Spelling("torch.nn.functional.silu")
    onnx = OnnxSpelling("Swish", since=24, fixed={"alpha": 1.0})
    self_gated_by = "sigmoid"

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return x * _sigmoid(x)


@register
class Hardswish(Activation):
    name = "hardswish"
    torch = Spelling("torch.nn.functional.hardswish")
    onnx = OnnxSpelling("HardSwish", since=14)

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        return x * np.clip(x + np.float32(3), np.float32(0), np.float32(6)) / np.float32(6)


@register
class Gelu(Activation):
    """GELU with the tanh approximation, as ONNX (Gelu, approximate="tanh") and PyTorch (gelu(approximate="tanh"))
    define it: x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))."""

    name = "gelu"
    torch = Spelling("torch.nn.functional.gelu", fixed={"approximate": "tanh"})
    onnx = OnnxSpelling("Gelu", since=20, fixed={"approximate": "tanh"})

    def formula(self, x: np.ndarray, alpha: float) -> np.ndarray:
        inner = np.float32(0.7978845608028654) * (x + np.float32(0.044715) * x * x * x)  # sqrt(2/pi)
        return np.float32(0.5) * x * (np.float32(1) + np.tanh(inner))


# Every activation of the registry, in the order of this module: the choices of an epilogue's `act`.
ACTIVATIONS: dict[str, Activation] = {cls.name: get_op(cls.name) for cls in Activation.__subclasses__()}
RELU_FAMILY = tuple(name for name, op in ACTIVATIONS.items() if op.relu_like)


def apply_activation(x: np.ndarray, name: str, alpha: float = DEFAULT_LEAKY_ALPHA) -> np.ndarray:
    return ACTIVATIONS[name].formula(x, alpha)
