"""ONNX's Resize (and the older Upsample) against our `upsample` op.

ONNX describes an interpolation by a coordinate transformation (half_pixel, asymmetric, align_corners,
pytorch_half_pixel, tf_half_pixel_for_nn, half_pixel_symmetric), a rounding for nearest neighbours
(round_prefer_floor, round_prefer_ceil, floor, ceil), the cubic coefficient A and whether taps outside the
image are excluded. Our `upsample` computes PyTorch's interpolate: nearest is asymmetric with floor; bilinear
and bicubic are half_pixel (or align_corners), bicubic with A = -0.75 and the border pixels repeated.

Many ONNX settings compute the same thing on a given size (half_pixel nearest at an integer scale picks the same
pixels as asymmetric floor; pytorch_half_pixel is half_pixel unless an output axis has size 1), so the importer
does not match attribute names: it builds, per axis, the interpolation matrix ONNX's definition gives (output
pixel x input pixel weights) and the one our op computes, and maps the node only when they are equal. Anything
else is reported, never approximated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncomp.ops.resize import interpolation_taps
from frontends.onnx.graph import Unsupported

OUR_MODES = {"nearest": "nearest", "linear": "bilinear", "cubic": "bicubic"}
ROUNDINGS = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
COORDINATES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
               "tf_half_pixel_for_nn")


@dataclass(frozen=True)
class ResizeSpec:
    """One ONNX Resize over H and W: the interpolation, and either the scales given or the sizes given."""

    mode: str
    coordinate: str = "half_pixel"
    nearest_mode: str = "round_prefer_floor"
    cubic_a: float = -0.75
    exclude_outside: bool = False
    scales: tuple[float, float] | None = None
    sizes: tuple[int, int] | None = None

    def output_size(self, in_hw: tuple[int, int]) -> tuple[int, int]:
        if self.sizes is not None:
            return self.sizes
        return tuple(math.floor(n * s) for n, s in zip(in_hw, self.scales, strict=True))

    def describe(self) -> str:
        parts = [f"mode={self.mode}", f"coordinate_transformation_mode={self.coordinate}"]
        if self.mode == "nearest":
            parts.append(f"nearest_mode={self.nearest_mode}")
        if self.mode == "cubic":
            parts.append(f"cubic_coeff_a={self.cubic_a:g}")
        if self.mode != "nearest" and self.exclude_outside:
            parts.append("exclude_outside=1")
        return ", ".join(parts)


def _source_coordinates(spec: ResizeSpec, in_size: int, out_size: int, scale: float) -> np.ndarray:
    """ONNX's x_original for every output pixel x (scale: the given one, or out/in when sizes were given)."""
    x = np.arange(out_size, dtype=np.float64)
    mode = spec.coordinate
    if mode == "half_pixel":
        return (x + 0.5) / scale - 0.5
    if mode == "half_pixel_symmetric":
        adjustment = out_size / (in_size * scale)
        offset = in_size / 2 * (1 - adjustment)
        return offset + (x + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (x + 0.5) / scale - 0.5 if out_size > 1 else np.zeros(out_size)
    if mode == "align_corners":
        # length_resized is in_size * scale, a fraction when the scale gives no whole length: ONNX's reference
        # evaluator divides by that (onnx/onnx#2462), ONNX Runtime and PyTorch by the whole output length.
        resized = in_size * scale
        return x * (in_size - 1) / (resized - 1) if out_size > 1 else np.zeros(out_size)
    if mode == "asymmetric":
        return x / scale
    if mode == "tf_half_pixel_for_nn":
        return (x + 0.5) / scale
    raise Unsupported(f"Resize with coordinate_transformation_mode={mode}")


def _round(values: np.ndarray, rounding: str) -> np.ndarray:
    if rounding == "floor":
        return np.floor(values)
    if rounding == "ceil":
        return np.ceil(values)
    halves = values - np.floor(values) == 0.5
    nearest = np.floor(values + 0.5)
    return np.where(halves, np.floor(values), nearest) if rounding == "round_prefer_floor" else nearest


def _cubic(distance: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(distance)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def onnx_matrix(spec: ResizeSpec, in_size: int, out_size: int, scale: float) -> np.ndarray:
    """(out_size, in_size): the weight of each input pixel in each output pixel, as ONNX defines the Resize."""
    source = _source_coordinates(spec, in_size, out_size, scale)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if spec.mode == "nearest":
        index = np.clip(_round(source, spec.nearest_mode), 0, in_size - 1).astype(np.int64)
        matrix[rows, index] = 1.0
        return matrix
    base = np.floor(source)
    offsets = np.array([0, 1]) if spec.mode == "linear" else np.array([-1, 0, 1, 2])
    taps = base[:, None] + offsets[None, :]
    distance = source[:, None] - taps
    weights = 1.0 - np.abs(distance) if spec.mode == "linear" else _cubic(distance, spec.cubic_a)
    inside = (taps >= 0) & (taps <= in_size - 1)
    if spec.exclude_outside:
        weights = np.where(inside, weights, 0.0)
        weights = weights / weights.sum(axis=1, keepdims=True)
    indices = np.clip(taps, 0, in_size - 1).astype(np.int64)  # the border pixel stands for what lies outside
    for tap in range(offsets.size):
        np.add.at(matrix, (rows, indices[:, tap]), weights[:, tap])
    return matrix


def our_matrix(in_size: int, out_size: int, mode: str, scale: float | None, align_corners: bool) -> np.ndarray:
    """(out_size, in_size) for our upsample op, from the taps every backend computes."""
    indices, weights = interpolation_taps(in_size, out_size, mode, scale, align_corners)
    matrix = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    for tap in range(indices.shape[1]):
        np.add.at(matrix, (rows, indices[:, tap]), weights[:, tap])
    return matrix


def upsample_attrs(spec: ResizeSpec, in_hw: tuple[int, int]) -> dict[str, Any]:
    """Our upsample's attributes computing exactly what `spec` computes on an input of `in_hw`, or Unsupported."""
    if spec.mode not in OUR_MODES:
        raise Unsupported(f"Resize with mode={spec.mode}")
    if spec.coordinate not in COORDINATES:
        raise Unsupported(f"Resize with coordinate_transformation_mode={spec.coordinate} (a crop and resize)")
    if spec.mode == "nearest" and spec.nearest_mode not in ROUNDINGS:
        raise Unsupported(f"Resize with nearest_mode={spec.nearest_mode}")
    out_hw = spec.output_size(in_hw)
    if min(out_hw) <= 0:
        raise Unsupported(f"a Resize of {in_hw[0]}x{in_hw[1]} to an empty {out_hw[0]}x{out_hw[1]}")
    mode = OUR_MODES[spec.mode]
    align_corners = mode != "nearest" and spec.coordinate == "align_corners"
    attrs: dict[str, Any] = {"mode": mode, "align_corners": align_corners}
    if spec.scales is not None:
        attrs["scale"] = spec.scales
    else:
        attrs["size"] = out_hw
    for axis, (n, out) in enumerate(zip(in_hw, out_hw, strict=True)):
        onnx_scale = spec.scales[axis] if spec.scales is not None else out / n
        ours = our_matrix(n, out, mode, spec.scales[axis] if spec.scales is not None else None, align_corners)
        if not np.allclose(onnx_matrix(spec, n, out, onnx_scale), ours, rtol=0, atol=1e-6):
            axis_name = ("height", "width")[axis]
            if spec.coordinate == "align_corners" and spec.scales is not None and n * onnx_scale != out:
                raise Unsupported(
                    f"Resize ({spec.describe()}) by the scale {onnx_scale:g} of {n} pixels along the {axis_name}: "
                    f"ONNX's definition divides by length_resized - 1 with length_resized = {n * onnx_scale:g} "
                    f"(as its reference evaluator), ONNX Runtime and cnncomp's upsample by the whole output length "
                    f"{out} - 1 (onnx/onnx#2462), so the answer would depend on the runtime; give `sizes` instead")
            raise Unsupported(
                f"Resize ({spec.describe()}) of {in_hw[0]}x{in_hw[1]} to {out_hw[0]}x{out_hw[1]} weighs other input "
                f"pixels along the {axis_name} than cnncomp's upsample (PyTorch's interpolate: nearest is "
                "asymmetric with floor; linear and cubic are half_pixel or align_corners, cubic with A = -0.75 "
                "and no exclusion)")
    return attrs
