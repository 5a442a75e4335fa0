"""The fully connected layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import Attr, Fusion, Op, OpError, ParamSpec, positive, require_float
from cnncomp.ops.epilogue import EPILOGUE_ATTRS, apply_epilogue, check_epilogue, epilogue_params


@register
class Dense(Op):
    """y = epilogue(x @ weight.T + bias) on N x features; weight is (out_features, in_features)."""

    name = "dense"
    fusion = Fusion.OUT_ELEMWISE_FUSABLE
    output_weight = "weight"
    arity = (1, 2)
    attrs = {"out_features": Attr("int"), "bias": Attr("bool", True), **EPILOGUE_ATTRS}

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        return True  # on N x F x H x W it is a 1x1 conv

    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        positive(attrs["out_features"], "out_features")
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        require_float(inputs)
        x = inputs[0]
        if x.rank != 2:
            raise OpError(f"input has shape {x}, expected N x features (flatten it first)")
        output = TensorType((x.batch, attrs["out_features"]))
        check_epilogue(attrs, inputs, output)
        return output

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        out = attrs["out_features"]
        specs = {"weight": ParamSpec((out, inputs[0].shape[1]))}
        if attrs["bias"]:
            specs["bias"] = ParamSpec((out,), init="zeros")
        return {**specs, **epilogue_params(attrs, out)}

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        return output.size * inputs[0].shape[1]

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return apply_epilogue(inputs[0] @ params["weight"].T, inputs, params, attrs)
