"""Single-precision GEMM of our own, for products whose left operand is a weight known at compile time.

`pack` lays the weight out once, at compile time, in panels of MR rows stored depth-major (each step of the
product reads MR consecutive floats), as ONNX Runtime's MLAS and BLIS do. `packed_gemm` multiplies such a
panel range by a right operand read in place (a tile of an image's channels x pixels, or of im2col columns) with a
register-blocked micro-kernel: MR x NR accumulators (16 vectors of 16 floats) that stay in registers over a pass of
KC steps. BLAS instead packs both operands on every call, which costs most on the thin products of small layers.

Blocking: a KC x NR panel of the right operand (32 KB) stays in L1 while the MR-row panels of an MC x KC block of
the weight (256 KB) stream from L2, and that block stays in L2 across every column panel. Columns left over at the
right edge are copied into a zero-padded panel, so the micro-kernel reads whole vectors (16 or fewer: one vector per
row); stores at the edges are masked. Each call runs on the calling thread: kernels split the work between threads.
"""

from __future__ import annotations

import llvmlite.binding
import numpy as np
from numba import cfunc, njit, types

from backends.numba_cpu.simd import add, broadcast, fma, load, load_first, store, store_first, zeros

MR = 8
NR = 32
KC = 256
MC = 256


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


@njit(nogil=True, cache=True)
def _tile(a, a0, b, b0, ldb, depth, c, c0, ldc, rows, cols, accumulate):
    """c[r, q] = (c[r, q] if accumulate else 0) + sum over k < depth of a[a0 + k*MR + r] * b[b0 + k*ldb + q],
    for r < rows and q < cols, on the flat views: the MR x NR micro-kernel."""
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
    for k in range(depth):
        b_row = b0 + k * ldb
        x0 = load(b, b_row)
        x1 = load(b, b_row + 16)
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
    _store_row(c, c0, c00, c01, cols, accumulate)
    if rows > 1:
        _store_row(c, c0 + ldc, c10, c11, cols, accumulate)
    if rows > 2:
        _store_row(c, c0 + 2 * ldc, c20, c21, cols, accumulate)
    if rows > 3:
        _store_row(c, c0 + 3 * ldc, c30, c31, cols, accumulate)
    if rows > 4:
        _store_row(c, c0 + 4 * ldc, c40, c41, cols, accumulate)
    if rows > 5:
        _store_row(c, c0 + 5 * ldc, c50, c51, cols, accumulate)
    if rows > 6:
        _store_row(c, c0 + 6 * ldc, c60, c61, cols, accumulate)
    if rows > 7:
        _store_row(c, c0 + 7 * ldc, c70, c71, cols, accumulate)


@njit(nogil=True, cache=True, inline="always")
def _store_part(c, start, vector, cols, accumulate):
    """The first `cols` (up to 16) floats of c.flat[start:] (+)= vector."""
    if cols >= 16:
        if accumulate:
            vector = add(vector, load(c, start))
        store(c, start, vector)
    else:
        if accumulate:
            vector = add(vector, load_first(c, start, cols))
        store_first(c, start, vector, cols)


@njit(nogil=True, cache=True, inline="always")
def _store_row(c, start, left, right, cols, accumulate):
    """One row of a tile: the first `cols` (up to NR) floats of c.flat[start:] (+)= left, right."""
    _store_part(c, start, left, cols, accumulate)
    _store_part(c, start + 16, right, max(cols - 16, 0), accumulate)


@njit(nogil=True, cache=True)
def _narrow_tile(a, a0, b, b0, ldb, depth, c, c0, ldc, rows, cols, accumulate):
    """`_tile` for cols <= 16: MR x 16, one vector per row (a full-width tile would waste half its work)."""
    c0v = zeros()
    c1v = zeros()
    c2v = zeros()
    c3v = zeros()
    c4v = zeros()
    c5v = zeros()
    c6v = zeros()
    c7v = zeros()
    for k in range(depth):
        x = load(b, b0 + k * ldb)
        a_row = a0 + k * MR
        c0v = fma(broadcast(a, a_row), x, c0v)
        c1v = fma(broadcast(a, a_row + 1), x, c1v)
        c2v = fma(broadcast(a, a_row + 2), x, c2v)
        c3v = fma(broadcast(a, a_row + 3), x, c3v)
        c4v = fma(broadcast(a, a_row + 4), x, c4v)
        c5v = fma(broadcast(a, a_row + 5), x, c5v)
        c6v = fma(broadcast(a, a_row + 6), x, c6v)
        c7v = fma(broadcast(a, a_row + 7), x, c7v)
    _store_part(c, c0, c0v, cols, accumulate)
    if rows > 1:
        _store_part(c, c0 + ldc, c1v, cols, accumulate)
    if rows > 2:
        _store_part(c, c0 + 2 * ldc, c2v, cols, accumulate)
    if rows > 3:
        _store_part(c, c0 + 3 * ldc, c3v, cols, accumulate)
    if rows > 4:
        _store_part(c, c0 + 4 * ldc, c4v, cols, accumulate)
    if rows > 5:
        _store_part(c, c0 + 5 * ldc, c5v, cols, accumulate)
    if rows > 6:
        _store_part(c, c0 + 6 * ldc, c6v, cols, accumulate)
    if rows > 7:
        _store_part(c, c0 + 7 * ldc, c7v, cols, accumulate)


_POINTER = types.CPointer(types.float32)


@cfunc(types.void(_POINTER, types.intp, types.intp, types.intp, _POINTER, types.intp, types.intp, _POINTER,
                  types.intp, _POINTER), nogil=True, cache=True)
def _packed_gemm(packed, first_panel, depth, rows, b, ldb, n, c, ldc, panel):
    """`packed_gemm` on pointers: compiled once, here, and called by address from every kernel."""
    for k0 in range(0, depth, KC):
        kc = min(KC, depth - k0)
        accumulate = k0 > 0
        for i0 in range(0, rows, MC):
            i1 = min(rows, i0 + MC)
            for j0 in range(0, n, NR):
                cols = min(NR, n - j0)
                if cols == NR:
                    for i in range(i0, i1, MR):
                        _tile(packed, ((first_panel + i // MR) * depth + k0) * MR, b, k0 * ldb + j0, ldb, kc,
                              c, i * ldc + j0, ldc, min(MR, rows - i), NR, accumulate)
                    continue
                for k in range(kc):
                    row = (k0 + k) * ldb + j0
                    store(panel, k * NR, load_first(b, row, min(cols, 16)))
                    if cols > 16:
                        store(panel, k * NR + 16, load_first(b, row + 16, cols - 16))
                for i in range(i0, i1, MR):
                    a0 = ((first_panel + i // MR) * depth + k0) * MR
                    if cols > 16:
                        _tile(packed, a0, panel, 0, NR, kc, c, i * ldc + j0, ldc, min(MR, rows - i), cols, accumulate)
                    else:
                        _narrow_tile(packed, a0, panel, 0, NR, kc, c, i * ldc + j0, ldc, min(MR, rows - i), cols,
                                     accumulate)


# Kernels call the compiled function by a symbol name that every process binds to its address again (as blas.py
# does for sgemm): each kernel module then holds a call, not another copy of the GEMM to optimize and compile.
llvmlite.binding.add_symbol("cnncomp_packed_gemm", _packed_gemm.address)
_packed_gemm_symbol = types.ExternalFunction("cnncomp_packed_gemm", types.void(
    types.voidptr, types.intp, types.intp, types.intp, types.voidptr, types.intp, types.intp, types.voidptr,
    types.intp, types.voidptr))


@njit(nogil=True, cache=True)
def packed_gemm(packed: np.ndarray, row0: int, rows: int, b: np.ndarray, c: np.ndarray, panel: np.ndarray) -> None:
    """c = A[row0: row0 + rows] @ b, where packed = pack(A) (3-D) and row0 is a multiple of MR; b (K x N) and
    c (rows x N) are float32 views with unit stride along their rows (any row stride). `panel` is
    `column_panel()`."""
    depth, n = b.shape
    _packed_gemm_symbol(packed.ctypes, row0 // MR, depth, rows, b.ctypes, b.strides[0] // 4, n, c.ctypes,
                        c.strides[0] // 4, panel.ctypes)
