"""Choosing a convolution algorithm per layer (as hidet's resolve step does), from measurements on the project
machine (2-core AMD EPYC with AVX-512; GFLOP/s at batch 1, see benchmarks/README.md):

- 3x3, stride 1, dilation 1, no groups: Winograd F(2x2, 3x3) reached 195-233 GFLOP/s (counted as direct
  MACs) on ResNet/VGG layers with 64-512 channels on 14x14 to 56x56 maps, where im2col + GEMM reached 85-145.
  With fewer than 16 input channels the transforms outweigh the saving, and on 7x7 maps (16 tiles) the matrix
  products are too thin: im2col there.
- 1x1, stride 1, no padding: a plain matrix product; nothing to gather.
- Few channels per group (depthwise convs, the 3-channel first layer): the direct kernel, since a K x pixels
  matrix of 1-27 rows makes BLAS slow.
- Everything else: im2col + GEMM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnncomp.ir import TensorType

WINOGRAD_TILE = {"winograd2": 2, "winograd4": 4}
DIRECT_MAX_CHANNELS_PER_GROUP = 4
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_OUTPUT_SIDE = 8


def supported_algorithms(attrs: Mapping[str, Any], x: TensorType) -> list[str]:
    """Every algorithm that can compute this conv2d (direct and im2col compute them all)."""
    algorithms = ["direct", "im2col"]
    if attrs["groups"] == 1 and attrs["dilation"] == (1, 1):
        if attrs["kernel"] == (1, 1) and attrs["stride"] == (1, 1) and attrs["padding"] == (0, 0, 0, 0):
            algorithms.append("pointwise")
        if attrs["kernel"] == (3, 3) and attrs["stride"] == (1, 1):
            algorithms += list(WINOGRAD_TILE)
    return algorithms


def conv2d_algorithm(attrs: Mapping[str, Any], x: TensorType, out: TensorType) -> str:
    """The algorithm the measurements above pick for this conv2d."""
    groups = attrs["groups"]
    channels_per_group = x.channels // groups
    if channels_per_group <= DIRECT_MAX_CHANNELS_PER_GROUP:
        return "direct"
    supported = supported_algorithms(attrs, x)
    if "pointwise" in supported:
        return "pointwise"
    large_enough = x.channels >= WINOGRAD_MIN_CHANNELS and min(out.shape[2:]) >= WINOGRAD_MIN_OUTPUT_SIDE
    if "winograd4" in supported and large_enough:
        return "winograd4"
    return "im2col"
