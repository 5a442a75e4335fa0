"""What every kernel template shares: the module header, the fused epilogue as code, calls and buffers."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.numba_common import Dialect, Literal, activation_code
from backends.numba_cpu.kernels import KernelSource

# fastmath without 'nnan'/'ninf'/'afn': sums may be reassociated (so loops vectorize), but NaN and inf still
# propagate as IEEE says and exp/tanh keep full precision.
FASTMATH = '{"reassoc", "contract", "nsz", "arcp"}'

HEADER = '''\
"""cnncomp numba-cpu kernel: {family}
{specialization}
Generated code: edit the template in backends/numba_cpu/templates/, not this file."""

import math

import numpy as np
from numba import njit, prange

from backends.numba_cpu.blas import gemm, gemm_scratch, gemm_tile
from backends.numba_cpu.gemm import column_panel, packed_gemm, packed_gemm_epilogue
from backends.numba_cpu.mathlib import fast_exp, fast_tanh
from backends.numba_cpu.simd import (
    add,
    broadcast,
    copy_strided,
    even_lanes,
    fill,
    fma,
    keep_max,
    lane_range,
    load_masked,
    load_window,
    splat,
    store_first,
)
'''


def render(family: str, body: str, **constants: Any) -> KernelSource:
    """A kernel module: the header, the specialization constants as module globals (Numba freezes globals
    into the machine code), then the template body."""
    lines = [f"{name} = {value!r}" for name, value in constants.items()]
    specialization = ", ".join(f"{k}={v!r}" for k, v in constants.items()) or "(no constants)"
    source = HEADER.format(family=family, specialization=specialization) + "\n" + "\n".join(lines) + "\n\n\n"
    source += textwrap.dedent(body).strip() + "\n"
    return KernelSource(family, source.replace("FASTMATH", FASTMATH), tuple(constants.items()))


# The activation formulas (backends.numba_common) as numba-cpu kernels write them: numpy's float32, comparisons
# with a bare float, and mathlib's exp.
DIALECT = Dialect(f32=Literal("np.float32({})"), cmp=Literal("{}"), tanh="fast_tanh", exp="fast_exp")


def epilogue_code(attrs: Mapping[str, Any], value: str, channel: str, residual: str, indent: int,
                  bias: str = "bias", alpha: str = "ALPHA") -> str:
    """Statements that apply `act(affine(v + bias) + residual)` to the scalar `value` of output channel
    `channel`; `residual` is the expression that reads the residual operand at the same position; `bias` and
    `alpha` name the bias array and the leaky-relu slope constant."""
    lines = []
    if attrs.get("bias"):
        lines.append(f"{value} += {bias}[{channel}]")
    if attrs.get("affine"):
        lines.append(f"{value} = {value} * scale[{channel}] + shift[{channel}]")
    if attrs.get("residual"):
        lines.append(f"{value} += {residual}")
    if attrs.get("act"):
        lines.append(activation_code(DIALECT, attrs["act"], value, alpha))
    return textwrap.indent("\n".join(lines) or "pass", " " * indent)


def epilogue_loop(attrs: Mapping[str, Any], out_row: str, res_row: str, length: str, channel: str,
                  indent: int) -> str:
    """A loop applying the epilogue along one output row of output channel `channel`, through 1-D slices of
    the (N, C, pixels) arrays (`out_row`, `res_row`): LLVM vectorizes a loop over a contiguous slice, but not one
    indexing a 2-D tile or a 3-D array (sigmoid and silu ran 6x slower)."""
    if not any(attrs.get(key) for key in ("bias", "affine", "residual", "act")):
        return " " * indent + "pass"
    lines = [f"row = {out_row}"]
    if attrs.get("residual"):
        lines.append(f"res_row = {res_row}")
    lines += [f"for p in range({length}):", "    v = row[p]",
              epilogue_code(attrs, "v", channel, "res_row[p]", 4), "    row[p] = v"]
    return textwrap.indent("\n".join(lines), " " * indent)


@dataclass(frozen=True)
class Scratch:
    """A temporary buffer a kernel needs; every step's scratch lives in one shared region (steps run one
    after another), laid out when the whole graph has been lowered."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class KernelCall:
    """One step of the executable: a kernel and its arguments (arrays, Scratch placeholders, scalars)."""

    kernel: KernelSource
    args: tuple[Any, ...]
    node: str


EMPTY = np.zeros(0, np.float32)


def epilogue_args(params: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """bias, scale, shift: the arrays an epilogue reads (empty where unused, so one signature fits all)."""
    return (
        params.get("bias", EMPTY) if attrs.get("bias") else EMPTY,
        params.get("scale", EMPTY) if attrs.get("affine") else EMPTY,
        params.get("shift", EMPTY) if attrs.get("affine") else EMPTY,
    )


# Window ops (depthwise convs, max and average pooling) compute 16 outputs of a row at a time in a vector register,
# each tap's inputs one vector load (for stride 2 or 4, the span loaded and every other lane kept) with the padding
# masked off. `window_rows` is generated per window shape, the taps of a window row written out (all of them made
# a 7x7 window's kernel take minutes to compile): the loads' masks are made once per 16 columns (a mask made per
# load cost more than the load), and WINDOW_ROWS_AT_ONCE rows are reduced at once, each in two chains (one chain of
# dependent FMAs ran at a quarter of the core's rate: 2.3 cycles an output on a 3x3 stride-2 conv). Before,
# zero-padded phase planes of each input plane and one flat vector loop over them; filling and copying the planes
# took most of the time (EfficientNet-B0's depthwise convs 2.88 -> 2.54 ms, MobileNetV2's
# separable convs 2.71 -> 2.29 ms).
WINDOW_ROWS_AT_ONCE = 4
# What each reduction starts from and fills padding with, how it takes in a tap's inputs, how its chains combine.
_REDUCTIONS = {
    "taps": ("np.float32(0.0)", "fma({window}, broadcast(taps, {tap}), {acc})", "add"),
    "sum": ("np.float32(0.0)", "add({acc}, {window})", "add"),
    "max": ("np.float32(-np.inf)", "keep_max({acc}, {window})", "keep_max"),
}


def window_rows(attrs: Mapping[str, Any], reduction: str) -> str:
    """The source of window_rows(plane, [taps,] out, pitch, r0, rows, ow): out.flat[(r - r0) * pitch + q] = the
    reduction over the window (i, j) of plane[r * SH - PT + i * DH, q * SW - PL + j * DW] for output rows r0 ..
    r0 + rows - 1 and columns q < ow. `reduction`: "taps" (sum of taps[i, j] times the input, zero padding),
    "sum" (zero padding) or "max" (-inf padding; NaN wins, as in numpy's max)."""
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    top, _, left, _ = attrs["padding"]
    outside, take, combine = _REDUCTIONS[reduction]
    parts = sw if sw in (1, 2, 4) else 0  # raw 16-float parts a window's load takes; 0: lane by lane
    taps = "taps, " if reduction == "taps" else ""
    lines = ["@njit(nogil=True, fastmath=FASTMATH, cache=True, error_model=\"numpy\")",
             f"def window_rows(plane, {taps}out, pitch, r0, rows, ow):",
             '    """Generated: see templates/common.py, window_rows."""',
             "    h, w = plane.shape",
             "    row_pitch = plane.strides[0] // 4",
             "    r_end = r0 + rows",
             f"    outside = {outside}",
             "    for q0 in range(0, ow, 16):",
             "        lanes = min(16, ow - q0)",
             f"        span = {sw} * (lanes - 1) + 1"]
    for j in range(kw):
        lines.append(f"        start{j} = q0 * {sw} - {left} + {j * dw}")
        for p in range(parts):
            first = f"start{j} + {16 * p}"
            lines.append(f"        mask{j}_{p} = lane_range(max(0, -({first})), max(0, min(16, w - ({first}), "
                         f"span - {16 * p})))")
    lines.append(f"        for r in range(r0, r_end, {WINDOW_ROWS_AT_ONCE}):")
    for k in range(WINDOW_ROWS_AT_ONCE):
        lines += [f"            acc{k}_0 = splat(outside)", f"            acc{k}_1 = splat(outside)"]
    lines.append(f"            for i in range({kh}):")
    for k in range(WINDOW_ROWS_AT_ONCE):
        lines.append(f"                ih = r * {sh} + i * {dh} + {k * sh - top}")
        lines.append(f"                if ih >= 0 and ih < h{f' and r + {k} < r_end' if k else ''}:")
        lines.append("                    at = ih * row_pitch")
        for j in range(kw):
            loads = [f"load_masked(plane, at + start{j} + {16 * p}, mask{j}_{p}, outside)" for p in range(parts)]
            if parts == 1:
                window = loads[0]
            elif parts == 2:
                window = f"even_lanes({loads[0]}, {loads[1]})"
            elif parts == 4:
                window = (f"even_lanes(even_lanes({loads[0]}, {loads[1]}), "
                          f"even_lanes({loads[2]}, {loads[3]}))")
            else:
                window = f"load_window(plane, at, start{j}, {sw}, lanes, w, outside)"
            acc = f"acc{k}_{j % 2}"
            lines.append(f"                    {acc} = " + take.format(window=window, tap=f"i * {kw} + {j}", acc=acc))
    lines.append("            base = (r - r0) * pitch + q0")
    for k in range(WINDOW_ROWS_AT_ONCE):
        store = f"store_first(out, base + {k} * pitch, {combine}(acc{k}_0, acc{k}_1), lanes)"
        if k:
            lines.append(f"            if r + {k} < r_end:")
        lines.append(" " * (16 if k else 12) + store)
    return "\n".join(lines) + "\n"


# Floats between one thread's scratch and the next one's: two threads rewriting small buffers that lie closer
# than about 1 KB (each channel of a 7x7 map rewrites its flat outputs) ran no faster than one
# (a benchmark's update loop on two 4 KB buffers: side by side 0.22 -> 0.29 ms from one thread to two, 1 KB apart
# 0.23 -> 0.12 ms), the hardware prefetchers of each core pulling in lines that the other one writes.
THREAD_GAP = 256
