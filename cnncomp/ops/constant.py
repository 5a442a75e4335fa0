"""Constants: tensors known at compile time (an imported model's initializers, what fold_constants computes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnncomp.ir import TensorType
from cnncomp.ops import register
from cnncomp.ops.base import Attr, Fusion, Op, ParamSpec, positive


@register
class Constant(Op):
    """y = value: a tensor of the given shape held as the node's parameter `value`. Its shape is fixed (the batch
    axis too, so a per-channel constant is 1 x C x 1 x 1 at batch 1); it is data, not a learned parameter."""

    name = "constant"
    fusion = Fusion.OPAQUE
    arity = (0, 0)
    attrs = {"shape": Attr("shape")}

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        for size in attrs["shape"]:
            positive(size, "every constant dimension")
        return TensorType(attrs["shape"])

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        return {"value": ParamSpec(attrs["shape"], learnable=False, init="zeros")}

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        return params["value"].copy()
