"""Single-precision GEMM callable from inside Numba kernels, through SciPy's BLAS.

Kernels parallelize with Numba's threads and call BLAS from each thread on a tile of their own, so BLAS must
not start threads of its own (two thread pools on two cores fight and run several times slower). `configure`
sets the BLAS library behind `scipy.linalg.cython_blas` to one thread; numpy's own BLAS is left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util

import llvmlite.binding
import numpy as np
from numba import njit, types
from numba.extending import get_cython_function_address

_SGEMM_ADDRESS = get_cython_function_address("scipy.linalg.cython_blas", "sgemm")
# Kernels call sgemm by a symbol name that every process binds to the address again, so their machine code can
# be cached on disk (a ctypes pointer baked into the code could not). Fortran BLAS: all arguments by reference.
llvmlite.binding.add_symbol("cnncomp_sgemm", _SGEMM_ADDRESS)
_sgemm = types.ExternalFunction("cnncomp_sgemm", types.void(*([types.voidptr] * 13)))
_VOID_P = ctypes.c_void_p

_NO_TRANSPOSE = ord("N")


@njit(nogil=True, cache=True)
def gemm_scratch() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-thread argument cells for `gemm` (BLAS takes scalars by reference)."""
    return np.empty(6, np.int32), np.empty(2, np.float32), np.full(1, _NO_TRANSPOSE, np.uint8)


@njit(nogil=True, cache=True)
def gemm(a: np.ndarray, b: np.ndarray, c: np.ndarray, accumulate: bool, ints: np.ndarray, floats: np.ndarray,
         no_trans: np.ndarray) -> None:
    """c = a @ b (+ c if accumulate) for row-major 2-D float32 views with unit stride along rows.

    Row-major c (M x N) is column-major c^T, so BLAS computes c^T = b^T a^T with the leading dimensions taken
    from the row strides: tiles of larger arrays need no copy.
    """
    m, k = a.shape
    n = b.shape[1]
    ints[0] = n
    ints[1] = m
    ints[2] = k
    # The row stride of a one-row view is arbitrary (numpy calls such an array contiguous whatever it is), and BLAS
    # refuses a leading dimension below the row length: never pass less.
    ints[3] = max(b.strides[0] // 4, n, 1)
    ints[4] = max(a.strides[0] // 4, k, 1)
    ints[5] = max(c.strides[0] // 4, n, 1)
    floats[0] = 1.0
    floats[1] = 1.0 if accumulate else 0.0
    _sgemm(no_trans.ctypes, no_trans.ctypes, ints[0:].ctypes, ints[1:].ctypes, ints[2:].ctypes, floats.ctypes,
           b.ctypes, ints[3:].ctypes, a.ctypes, ints[4:].ctypes, floats[1:].ctypes, c.ctypes, ints[5:].ctypes)


@njit(nogil=True, cache=True)
def gemm_tile(job: int, ptiles: int, channels_per_tile: int, pixels_per_tile: int, channels: int,
              pixels: int) -> tuple[int, int, int, int]:
    """(o0, o1, p0, p1): the output channels and pixels of tile `job` of a product tiled channel tile by channel
    tile, each split into `ptiles` pixel tiles."""
    o0 = (job // ptiles) * channels_per_tile
    p0 = (job % ptiles) * pixels_per_tile
    return o0, min(channels, o0 + channels_per_tile), p0, min(pixels, p0 + pixels_per_tile)


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", _VOID_P), ("dli_sname", ctypes.c_char_p),
                ("dli_saddr", _VOID_P)]


def blas_library() -> str | None:
    """The shared library that provides SciPy's sgemm (found from the function's address)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    info = _DlInfo()
    if not libc.dladdr(_VOID_P(_SGEMM_ADDRESS), ctypes.byref(info)) or not info.dli_fname:
        return None
    return info.dli_fname.decode()


def configure_single_threaded() -> bool:
    """Make SciPy's BLAS single-threaded; True if a known thread-control function was found."""
    path = blas_library()
    if path is None:
        return False
    library = ctypes.CDLL(path)
    for name in ("scipy_openblas_set_num_threads", "openblas_set_num_threads", "MKL_Set_Num_Threads",
                 "bli_thread_set_num_threads"):
        setter = getattr(library, name, None)
        if setter is not None:
            setter(1)
            return True
    return False
