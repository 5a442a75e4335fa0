"""Single-precision GEMM of our own, for products whose left operand is a weight known at compile time.

`pack` lays the weight out once, at compile time, in panels of MR rows stored depth-major (each step of the
product reads MR consecutive floats), as ONNX Runtime's MLAS and BLIS do. `packed_gemm` multiplies such a
panel range by a right operand (a tile of an image's channels x pixels, or of im2col columns) with a
register-blocked micro-kernel: MR x NR accumulators (16 vectors of 16 floats) that stay in registers over a pass of
KC steps. BLAS packs the weight again on every call, which costs most on the thin products of small layers.

Blocking: each KC x NR panel of the right operand is copied into a contiguous scratch panel (32 KB, zero-padded at
the right edge), which stays in L1 while the MR-row panels of an MC x KC block of the weight (256 KB) stream from
L2; that block stays in L2 across every column panel. Reading the operand's rows in place instead, at their own
stride, measured 10-15% slower. Columns left at the right edge take a one-vector micro-kernel where 16 or fewer
remain; stores at the edges are masked. Each micro-kernel prefetches the weights of the next panel as it goes: in a
model the weights of a layer come from memory, not cache (a 4 MB weight on a 7x7 map, 24 such weights taking turns:
1.14 -> 0.92 ms a product; ResNet-50's kernels 37.8 -> 34.0 ms). Each call runs on the calling thread: kernels
split the work between threads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import llvmlite.binding
import numpy as np
from numba import cfunc, njit, types

from backends.numba_cpu.simd import (
    add,
    broadcast,
    div,
    exp,
    fma,
    load,
    load_first,
    mul,
    prefetch,
    replace_above,
    replace_below,
    splat,
    store,
    store_first,
    zeros,
)

MR = 8
NR = 32
KC = 256
MC = 256

# The epilogue the last pass applies to the result as it leaves the registers, in the conv epilogue's order (bias,
# affine, residual, activation): bits of `flags`, with the activation's code above ACTIVATION_SHIFT. Other
# activations are applied by the kernel afterwards, with bias, affine and residual (`fused_epilogue`).
BIAS, AFFINE, RESIDUAL = 1, 2, 4
ACTIVATION_SHIFT = 8
RELU, RELU6, LEAKY_RELU, SILU, SIGMOID = 1, 2, 3, 4, 5
ACTIVATION_CODES = {None: 0, "relu": RELU, "relu6": RELU6, "leaky_relu": LEAKY_RELU, "silu": SILU, "sigmoid": SIGMOID}


def pack(weight: np.ndarray) -> np.ndarray:
    """(..., M, K) float32 -> (..., ceil(M / MR), K, MR): panels of MR rows, depth-major, zero rows at the end."""
    *lead, m, k = weight.shape
    panels = -(-m // MR)
    padded = np.zeros((*lead, panels * MR, k), np.float32)
    padded[..., :m, :] = weight
    return np.ascontiguousarray(padded.reshape(*lead, panels, MR, k).swapaxes(-1, -2))


@njit(nogil=True, cache=True)
def column_panel() -> np.ndarray:
    """Scratch for `packed_gemm`: one KC x NR panel, one per thread."""
    return np.empty(KC * NR, np.float32)


@njit(nogil=True, cache=True, inline="always")
def _load_part(array, start, cols):
    """The first `cols` (up to 16; more reads 16) floats of array.flat[start:], zeros after them."""
    return load(array, start) if cols >= 16 else load_first(array, start, cols)


@njit(nogil=True, cache=True, inline="always")
def _finish(c, start, v, cols, accumulate, flags, bias, scale, shift, channel, res, res_start, alpha):
    """The first `cols` (up to 16) floats of c.flat[start:] = v, plus their old values where `accumulate`, then
    the epilogue `flags` with output channel `channel`'s bias and affine and res.flat[res_start:]."""
    if accumulate:
        v = add(v, _load_part(c, start, cols))
    if flags & BIAS:
        v = add(v, broadcast(bias, channel))
    if flags & AFFINE:
        v = fma(v, broadcast(scale, channel), broadcast(shift, channel))
    if flags & RESIDUAL:
        v = add(v, _load_part(res, res_start, cols))
    activation = flags >> ACTIVATION_SHIFT
    if activation == RELU:
        v = replace_below(v, zeros(), zeros())
    elif activation == RELU6:
        six = splat(np.float32(6.0))
        v = replace_above(replace_below(v, zeros(), zeros()), six, six)
    elif activation == LEAKY_RELU:
        v = replace_below(v, zeros(), mul(v, splat(alpha)))
    elif activation == SILU:
        # as ACTIVATION_FORMULAS writes it: v / (1 + exp(-v)); in the registers, not in a pass over the output
        # afterwards, which took longer than the product (24 -> 144 channels on a 56x56 map: 0.10 -> 0.22 ms)
        v = div(v, add(splat(np.float32(1.0)), exp(mul(v, splat(np.float32(-1.0))))))
    elif activation == SIGMOID:
        v = div(splat(np.float32(1.0)), add(splat(np.float32(1.0)), exp(mul(v, splat(np.float32(-1.0))))))
    if cols >= 16:
        store(c, start, v)
    else:
        store_first(c, start, v, cols)


@njit(nogil=True, cache=True, inline="always")
def _finish_row(c, c0, ldc, r, left, right, cols, accumulate, post, channel, res_start, ldr):
    """Row r of a tile (left and right: its two vectors) into c, with the epilogue `post`."""
    flags, bias, scale, shift, res, alpha = post
    _finish(c, c0 + r * ldc, left, cols, accumulate, flags, bias, scale, shift, channel + r, res,
            res_start + r * ldr, alpha)
    if cols > 16:
        _finish(c, c0 + r * ldc + 16, right, cols - 16, accumulate, flags, bias, scale, shift, channel + r, res,
                res_start + r * ldr + 16, alpha)


@njit(nogil=True, cache=True)
def _tile(a, a0, a_next, b, b0, ldb, depth, c, c0, ldc, rows, cols, accumulate, post, channel, res_start, ldr):
    """c[r, q] = (c[r, q] if accumulate else 0) + sum over k < depth of a[a0 + k*MR + r] * b[b0 + k*ldb + q],
    then the epilogue `post` (flags, bias, scale, shift, res, alpha) of output channel channel + r, for r < rows
    and q < cols, on the flat views: the MR x NR micro-kernel (a single vector per row where cols <= 16). Each step
    also prefetches a[a_next + k*MR]: the next tile's weights, which on a model's first pass come from memory."""
    c00 = zeros()
    c01 = zeros()
    c10 = zeros()
    c11 = zeros()
    c20 = zeros()
    c21 = zeros()
    c30 = zeros()
    c31 = zeros()
    c40 = zeros()
    c41 = zeros()
    c50 = zeros()
    c51 = zeros()
    c60 = zeros()
    c61 = zeros()
    c70 = zeros()
    c71 = zeros()
    if cols > 16:
        for k in range(depth):
            b_row = b0 + k * ldb
            x0 = load(b, b_row)
            x1 = load(b, b_row + 16)
            prefetch(a, a_next + k * MR)
            a_row = a0 + k * MR
            w = broadcast(a, a_row)
            c00 = fma(w, x0, c00)
            c01 = fma(w, x1, c01)
            w = broadcast(a, a_row + 1)
            c10 = fma(w, x0, c10)
            c11 = fma(w, x1, c11)
            w = broadcast(a, a_row + 2)
            c20 = fma(w, x0, c20)
            c21 = fma(w, x1, c21)
            w = broadcast(a, a_row + 3)
            c30 = fma(w, x0, c30)
            c31 = fma(w, x1, c31)
            w = broadcast(a, a_row + 4)
            c40 = fma(w, x0, c40)
            c41 = fma(w, x1, c41)
            w = broadcast(a, a_row + 5)
            c50 = fma(w, x0, c50)
            c51 = fma(w, x1, c51)
            w = broadcast(a, a_row + 6)
            c60 = fma(w, x0, c60)
            c61 = fma(w, x1, c61)
            w = broadcast(a, a_row + 7)
            c70 = fma(w, x0, c70)
            c71 = fma(w, x1, c71)
    else:
        for k in range(depth):
            x0 = load(b, b0 + k * ldb)
            prefetch(a, a_next + k * MR)
            a_row = a0 + k * MR
            c00 = fma(broadcast(a, a_row), x0, c00)
            c10 = fma(broadcast(a, a_row + 1), x0, c10)
            c20 = fma(broadcast(a, a_row + 2), x0, c20)
            c30 = fma(broadcast(a, a_row + 3), x0, c30)
            c40 = fma(broadcast(a, a_row + 4), x0, c40)
            c50 = fma(broadcast(a, a_row + 5), x0, c50)
            c60 = fma(broadcast(a, a_row + 6), x0, c60)
            c70 = fma(broadcast(a, a_row + 7), x0, c70)
    _finish_row(c, c0, ldc, 0, c00, c01, cols, accumulate, post, channel, res_start, ldr)
    if rows > 1:
        _finish_row(c, c0, ldc, 1, c10, c11, cols, accumulate, post, channel, res_start, ldr)
    if rows > 2:
        _finish_row(c, c0, ldc, 2, c20, c21, cols, accumulate, post, channel, res_start, ldr)
    if rows > 3:
        _finish_row(c, c0, ldc, 3, c30, c31, cols, accumulate, post, channel, res_start, ldr)
    if rows > 4:
        _finish_row(c, c0, ldc, 4, c40, c41, cols, accumulate, post, channel, res_start, ldr)
    if rows > 5:
        _finish_row(c, c0, ldc, 5, c50, c51, cols, accumulate, post, channel, res_start, ldr)
    if rows > 6:
        _finish_row(c, c0, ldc, 6, c60, c61, cols, accumulate, post, channel, res_start, ldr)
    if rows > 7:
        _finish_row(c, c0, ldc, 7, c70, c71, cols, accumulate, post, channel, res_start, ldr)


_POINTER = types.CPointer(types.float32)


@cfunc(types.void(_POINTER, types.intp, types.intp, types.intp, _POINTER, types.intp, types.intp, _POINTER,
                  types.intp, _POINTER, types.intp, _POINTER, _POINTER, _POINTER, types.intp, _POINTER, types.intp,
                  types.float32), nogil=True, cache=True)
def _packed_gemm(packed, first_panel, depth, rows, b, ldb, n, c, ldc, panel, flags, bias, scale, shift, channel0,
                 res, ldr, alpha):
    """`packed_gemm_epilogue` on pointers: compiled once, here, and called by address from every kernel."""
    for k0 in range(0, depth, KC):
        kc = min(KC, depth - k0)
        accumulate = k0 > 0
        post = (flags if k0 + kc == depth else 0, bias, scale, shift, res, alpha)
        for i0 in range(0, rows, MC):
            i1 = min(rows, i0 + MC)
            for j0 in range(0, n, NR):
                cols = min(NR, n - j0)
                for k in range(kc):
                    row = (k0 + k) * ldb + j0
                    store(panel, k * NR, load_first(b, row, min(cols, 16)))
                    if cols > 16:
                        store(panel, k * NR + 16, load_first(b, row + 16, cols - 16))
                for i in range(i0, i1, MR):
                    a0 = ((first_panel + i // MR) * depth + k0) * MR
                    # the next panel in memory, the one the next tile reads but at the block's end (x86 prefetches
                    # never fault, even past the weights' end)
                    _tile(packed, a0, a0 + depth * MR, panel, 0, NR, kc, c, i * ldc + j0, ldc, min(MR, rows - i), cols,
                          accumulate, post, channel0 + i, i * ldr + j0, ldr)


# Kernels call the compiled function by a symbol name that every process binds to its address again (as blas.py
# does for sgemm): each kernel module then holds a call, not another copy of the GEMM to optimize and compile.
llvmlite.binding.add_symbol("cnncomp_packed_gemm", _packed_gemm.address)
_packed_gemm_symbol = types.ExternalFunction("cnncomp_packed_gemm", types.void(
    types.voidptr, types.intp, types.intp, types.intp, types.voidptr, types.intp, types.intp, types.voidptr,
    types.intp, types.voidptr, types.intp, types.voidptr, types.voidptr, types.voidptr, types.intp, types.voidptr,
    types.intp, types.float32))


def fused_epilogue(attrs: Mapping[str, Any]) -> bool:
    """Whether `packed_gemm_epilogue` applies a conv's whole epilogue (its activation is one it knows)."""
    return attrs.get("act") in ACTIVATION_CODES


@njit(nogil=True, cache=True)
def packed_gemm_epilogue(packed: np.ndarray, row0: int, rows: int, b: np.ndarray, c: np.ndarray, panel: np.ndarray,
                         channel0: int, bias: np.ndarray, scale: np.ndarray, shift: np.ndarray, res: np.ndarray,
                         residual: bool, activation: int, alpha: float) -> None:
    """c = epilogue(A[row0: row0 + rows] @ b), where packed = pack(A) (3-D) and row0 is a multiple of MR; b (K x N),
    c and res (rows x N) are float32 views with unit stride along their rows (any row stride); `panel` is
    `column_panel()`. Row r is output channel channel0 + r: it adds bias[channel0 + r] (where bias is not empty),
    then multiplies by scale and adds shift (where those are not empty), adds res where `residual`, and applies
    the activation ACTIVATION_CODES names (leaky relu's slope `alpha`)."""
    depth, n = b.shape
    flags = activation << ACTIVATION_SHIFT
    if bias.size:
        flags |= BIAS
    if scale.size:
        flags |= AFFINE
    if residual:
        flags |= RESIDUAL
    _packed_gemm_symbol(packed.ctypes, row0 // MR, depth, rows, b.ctypes, b.strides[0] // 4, n, c.ctypes,
                        c.strides[0] // 4, panel.ctypes, flags, bias.ctypes, scale.ctypes, shift.ctypes, channel0,
                        res.ctypes, res.strides[0] // 4, np.float32(alpha))


@njit(nogil=True, cache=True)
def packed_gemm(packed: np.ndarray, row0: int, rows: int, b: np.ndarray, c: np.ndarray, panel: np.ndarray) -> None:
    """c = A[row0: row0 + rows] @ b: `packed_gemm_epilogue` without an epilogue."""
    nothing = panel[:0]
    packed_gemm_epilogue(packed, row0, rows, b, c, panel, 0, nothing, nothing, nothing, c, False, 0, 0.0)
