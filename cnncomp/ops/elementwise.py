"""Binary elementwise ops: add (the residual connection) and mul (squeeze-and-excitation's channel gating)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import Fusion, Op, OpError, require_float


def broadcast_type(a: TensorType, b: TensorType) -> TensorType:
    """Equal shapes, or one operand N x C x 1 x 1 scaling/shifting each channel of the other."""
    if a == b:
        return a
    for full, per_channel in ((a, b), (b, a)):
        if full.rank == 4 and per_channel.shape == (full.batch, full.channels, 1, 1):
            return full
    raise OpError(f"operand shapes {a} and {b} differ; expected equal shapes or one of them "
                  f"N x C x 1 x 1 (per channel)")


class Binary(Op):
    fusion = Fusion.BROADCAST
    arity = (2, 2)

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return True

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        return broadcast_type(*inputs)


@register
class Add(Binary):
    """y = a + b."""

    name = "add"

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return inputs[0] + inputs[1]


@register
class Mul(Binary):
    """y = a * b."""

    name = "mul"

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return inputs[0] * inputs[1]
