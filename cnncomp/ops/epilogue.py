"""The epilogue conv2d and dense can carry: y = act(affine(op(x) + bias) + residual).

`affine` is a per-channel scale and shift (a batch norm folded to inference form), `residual` a second operand
of the output's shape (ResNet's skip), `act` one of the activations. Applied in that order, as in
`relu(bn(conv(x)) + skip)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops.activation import ACTIVATIONS, DEFAULT_LEAKY_ALPHA, apply_activation
from cnncomp.ops.base import Attr, Op, OpError, ParamSpec

EPILOGUE_ATTRS = {
    "affine": Attr("bool", False),
    "residual": Attr("bool", False),
    "act": Attr("choice", None, choices=tuple(ACTIVATIONS)),
    "alpha": Attr("float", DEFAULT_LEAKY_ALPHA),
}


def carries_epilogue(op: Op) -> bool:
    """Whether the op carries the epilogue: its registry entry declares the epilogue's attributes. The residual
    is then its last operand."""
    return EPILOGUE_ATTRS.keys() <= op.attrs.keys()


def operand_count(attrs: Mapping[str, Any]) -> int:
    """Operands of an op with an epilogue: the data input, then the residual if there is one."""
    return 2 if attrs["residual"] else 1


def check_epilogue(attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> None:
    if len(inputs) != operand_count(attrs):
        expected = "a data operand and a residual operand" if attrs["residual"] else "one data operand"
        raise OpError(f"expects {expected} (residual={attrs['residual']}), got {len(inputs)} operand(s)",
                      shape=False)
    if attrs["residual"] and inputs[1] != output:
        raise OpError(f"residual operand has shape {inputs[1]}, expected the output shape {output}")


def epilogue_params(attrs: Mapping[str, Any], channels: int) -> dict[str, ParamSpec]:
    if not attrs["affine"]:
        return {}
    return {"scale": ParamSpec((channels,), init="ones"), "shift": ParamSpec((channels,), init="zeros")}


def per_channel(values: np.ndarray, rank: int) -> np.ndarray:
    """A (C,) vector shaped to broadcast over the channel axis of an N x C (x H x W) tensor."""
    return values.reshape((1, -1) + (1,) * (rank - 2))


def apply_epilogue(y: np.ndarray, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                   attrs: Mapping[str, Any]) -> np.ndarray:
    if "bias" in params:
        y = y + per_channel(params["bias"], y.ndim)
    if attrs["affine"]:
        y = y * per_channel(params["scale"], y.ndim) + per_channel(params["shift"], y.ndim)
    if attrs["residual"]:
        y = y + inputs[1]
    if attrs["act"] is not None:
        y = apply_activation(y, attrs["act"], attrs["alpha"])
    return y
