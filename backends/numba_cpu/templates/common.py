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
    lane_range,
    load_masked,
    load_window,
    store_first,
    zeros,
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


# A window op (depthwise conv, pooling) on narrow maps runs as one long vector loop per plane: the padded input is
# split into SH*SW phase planes (phase (a, b) holds padded rows a, a + SH, ... and columns b, b + SW, ...) at a
# pitch of PW columns, so that tap (i, j) of output (r, q) sits at flat position r*PW + q plus an offset of its own
# in one phase, for every stride and dilation; each output then combines its taps in a register along that flat
# index, columns q >= OW computed and dropped. Indices are unsigned so that Numba emits no negative-index
# wraparound, which turned the loads into gathers. Needs the window constants KH, KW, SH, SW, DH, DW, PT, PL.
PHASE_PLANES = '''
@njit(nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def load_phases(plane, phases, pw, top, rows, outside):
    """The phase planes of padded rows top .. top + rows - 1 of the input `plane` (`outside` outside it):
    phases[a * SW + b, u * pw + v] holds padded row top + SH * u + a, column SW * v + b."""
    h, w = plane.shape
    phases[:, :] = outside
    for local in range(rows):
        ih = top + local - PT
        if ih < 0 or ih >= h:
            continue
        a = local % SH
        base = (local // SH) * pw
        src = plane[ih]
        for b in range(SW):
            # padded column SW * v + b is input column SW * v + b - PL
            v0 = max(0, -(-(PL - b) // SW))
            v1 = min(pw, (w - 1 + PL - b) // SW + 1)
            if v1 > v0:
                copy_strided(src, SW * v0 + b - PL, SW, phases[a * SW + b], base + v0, v1 - v0)


'''

# The input under tap (i, j) of flat output f, in the phase planes.
PHASE_TAP = "phases[((i * DH) % SH) * SW + (j * DW) % SW, np.uint64(f + ((i * DH) // SH) * pw + (j * DW) // SW)]"

# The parallel kernel of a window op by phase planes: one (image, input channel) plane per job, a run of
# consecutive planes per thread (the planes of a small map share cache lines with their neighbours), the plane's
# phase planes filled with `fill` outside the input, then `per_plane` (at 12 spaces; it reads `phases`, the flat
# buffer `acc`, `img` and the input channel `g`). `operands` come between x and out in the signature.
PLANE_JOBS = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, {operands}out, phases_per_thread, acc_per_thread, pw, flat):
    """{doc}"""
    n, c, h, w = x.shape
    o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    rows = (oh - 1) * SH + (KH - 1) * DH + 1
    threads = phases_per_thread.shape[0]
    jobs = n * c
    for t in prange(threads):
        phases = phases_per_thread[t, :SH * SW]  # without the rows that keep threads apart
        acc = acc_per_thread[t, :flat]
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // c
            g = job % c
            load_phases(x[img, g], phases, pw, 0, rows, {fill})
{per_plane}
'''


def plane_jobs(doc: str, operands: str, fill: str, per_plane: str) -> str:
    """PHASE_PLANES and a PLANE_JOBS kernel."""
    return PHASE_PLANES + PLANE_JOBS.format(doc=doc, operands=operands, fill=fill, per_plane=per_plane)


# Floats between one thread's scratch and the next one's: two threads rewriting small buffers that lie closer
# than about 1 KB (each channel of a 7x7 map rewrites its phase planes and flat outputs) ran no faster than one
# (a benchmark's update loop on two 4 KB buffers: side by side 0.22 -> 0.29 ms from one thread to two, 1 KB apart
# 0.23 -> 0.12 ms), the hardware prefetchers of each core pulling in lines that the other one writes.
THREAD_GAP = 256


def phase_scratch(attrs: Mapping[str, Any], w: int, oh: int, ow: int) -> tuple[int, int, tuple[int, int], int]:
    """(PW, flat outputs, one thread's phase planes' shape, one thread's flat buffer) for PHASE_PLANES over output
    rows 0 .. oh - 1 of a window op (`attrs`: kernel, stride, padding, dilation if any; `w`: input width): PW
    columns hold every padded column a phase needs; the flat loop runs a multiple of 16 outputs (one AVX-512
    vector; multiples of 64, LLVM's unrolled vector step, computed more dropped outputs than they saved: 1152
    channels of 5x5 taps on a 7x7 map 0.174 -> 0.124 ms, EfficientNet-B0 3% faster); the planes hold all
    loaded rows and every tap the flat loop reads; each buffer ends THREAD_GAP floats of padding (whole cache
    lines) before the next thread's: unused rows after the planes, which kernels slice off
    (`phases_per_thread[t, :SH * SW]`, still C-contiguous), so the per-plane fill never writes the gap."""
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    left = attrs["padding"][2]
    pw = -(-max(w + left, (ow - 1) * sw + (kw - 1) * dw + 1) // sw)
    rows = (oh - 1) * sh + (kh - 1) * dh + 1
    flat = -(-oh * pw // 16) * 16
    size = max(-(-rows // sh) * pw, flat + ((kh - 1) * dh // sh) * pw + (kw - 1) * dw // sw)
    plane = -(-size // 16) * 16
    return pw, flat, (sh * sw + -(-THREAD_GAP // plane), plane), flat + THREAD_GAP
