"""Choosing a convolution algorithm per layer (as hidet's resolve step does), from measurements on the project
machine (2-core AMD EPYC with AVX-512, batch 1; GFLOP/s counted from direct-convolution MACs, so Winograd can
pass the machine's matmul rate; PyTorch 2.13 eager on the same layer in brackets):

    3x3 conv, C -> C, map side   F(4x4)   F(2x2)   im2col   [torch]
    64 @ 224                       187      107      121     [201]
    128 @ 112                      296      174      152     [222]
    256 @ 56                       323      195      156     [226]
    512 @ 28                       423      293      133     [221]
    64 @ 56                        295      103      117     [208]
    128 @ 28                       498      286      126     [217]
    512 @ 14                       202      293      114     [221]
    256 @ 14                       235      322      129     [220]
    512 @ 7                         81      155      110     [199]

- 3x3, stride 1, dilation 1, no groups: Winograd. F(4x4, 3x3) from 21x21 maps up, F(2x2, 3x3) below (its
  tiles fit small maps better and its matrix products are less thin). With fewer than 16 input channels the
  transforms outweigh the saving; below 8x8 maps, im2col. (With numba-cpu's own GEMM, `cnncomp tune resnet50` on
  the 2-core Intel Xeon of 2026-12: 512 @ 7 im2col 1.56 / 1.72 ms against F(2x2) 1.76 / 1.87 ms in two runs;
  256 @ 14 stays F(2x2), 0.66 against im2col 1.16.)
- 1x1, stride 1, no padding: a plain matrix product; nothing to gather.
- Few channels per group (depthwise convs): the direct kernel (for one channel per group, the vectorized
  depthwise kernel), since per group a K x pixels matrix of a handful of rows times a handful of filters makes
  BLAS slow. A first layer on 1-3 channels still has 64 or so filters
  over K = C*KH*KW = 9..147 rows: im2col (ResNet's 7x7 stem: direct 98 ms, im2col 4 ms).
- Everything else: im2col + GEMM.

These are the defaults, measured on one machine. Other machines differ (cores, caches, vector width): at -O3,
a layer that `cnncomp tune` measured on this machine runs the algorithm its tuning record names (`tuning`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cnncomp.ir import TensorType
from cnncomp.ops.conv import is_pointwise

WINOGRAD_TILE = {"winograd2": 2, "winograd4": 4}
DIRECT_MAX_CHANNELS_PER_GROUP = 4
WINOGRAD_MIN_CHANNELS = 16
WINOGRAD_MIN_OUTPUT_SIDE = 8
WINOGRAD_4X4_MIN_OUTPUT_SIDE = 21


def supported_algorithms(attrs: Mapping[str, Any], x: TensorType) -> list[str]:
    """Every algorithm that can compute this conv2d (direct and im2col compute them all)."""
    algorithms = ["direct", "im2col"]
    if attrs["groups"] == 1 and attrs["dilation"] == (1, 1):
        if is_pointwise(attrs):
            algorithms.append("pointwise")
        if attrs["kernel"] == (3, 3) and attrs["stride"] == (1, 1):
            algorithms += list(WINOGRAD_TILE)
    return algorithms


def conv2d_algorithm(attrs: Mapping[str, Any], x: TensorType, out: TensorType) -> str:
    """The algorithm the measurements above pick for this conv2d."""
    groups = attrs["groups"]
    channels_per_group = x.channels // groups
    if groups > 1 and channels_per_group <= DIRECT_MAX_CHANNELS_PER_GROUP:
        return "direct"
    supported = supported_algorithms(attrs, x)
    if "pointwise" in supported:
        return "pointwise"
    side = min(out.shape[2:])
    if "winograd4" in supported and x.channels >= WINOGRAD_MIN_CHANNELS and side >= WINOGRAD_MIN_OUTPUT_SIDE:
        return "winograd4" if side >= WINOGRAD_4X4_MIN_OUTPUT_SIDE else "winograd2"
    return "im2col"
