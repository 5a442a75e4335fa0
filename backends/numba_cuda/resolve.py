"""Choosing a convolution algorithm per conv2d node (as numba-cpu's and hidet's resolve steps do); lowering then
launches the kernel of the algorithm chosen.

- One input channel per group (depthwise convs): the direct kernel, one thread per output pixel of a plane.
- 1x1, stride 1, no padding, no groups: a plain matrix product of the weights and the input's pixels.
- Everything else: implicit GEMM, gathering each window as the GEMM reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnncomp.ir import TensorType
from cnncomp.ops.conv import is_depthwise, is_pointwise


def conv2d_algorithm(attrs: Mapping[str, Any], x: TensorType) -> str:
    """"depthwise", "pointwise" or "gemm" for a conv2d of these attributes on input `x`."""
    if is_depthwise(attrs, x.channels):
        return "depthwise"
    if is_pointwise(attrs):
        return "pointwise"
    return "gemm"
