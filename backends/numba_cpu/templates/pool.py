"""Pooling kernels: max (with its indices) and average over windows, unpooling, global and adaptive average.
Each (image, channel) plane is one parallel job; max and average pooling reduce each window in a register along
the flat index of the plane's phase planes (templates.common.PHASE_PLANES), vectorized however narrow the map."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.numba_cpu.templates.common import PHASE_TAP, plane_jobs, render


def _constants(attrs: Mapping[str, Any]) -> dict[str, int]:
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    top, _, left, _ = attrs["padding"]
    return {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "DH": dh, "DW": dw, "PT": top, "PL": left}


INDICES = '''
@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def kernel(x, out):
    """out = flat index h * W + w of each window's first maximum (the first NaN if there is one)."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for job in prange(n * c):
        img = job // c
        ch = job % c
        for r in range(oh):
            for q in range(ow):
                best = -np.inf
                where = -1
                for i in range(KH):
                    ih = r * SH - PT + i * DH
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(KW):
                        iw = q * SW - PL + j * DW
                        if iw < 0 or iw >= w:
                            continue
                        v = x[img, ch, ih, iw]
                        if where < 0 or v > best or (v != v and best == best):
                            best = v
                            where = ih * w + iw
                out[img, ch, r, q] = where
'''

# A pooling window's reduction along the flat index of PLANE_JOBS, then the plane's rows copied out.
POOL_PER_PLANE = '''
            for f in range(flat):
                s = {start}
                for i in range(KH):
                    for j in range(KW):
                        v = {tap}
                        {combine}
                acc[f] = s
            for r in range(oh):
                row = out[img, g, r]
                acc_row = acc[r * pw: r * pw + ow]
{divisor_row}
                for q in range(ow):
                    row[q] = {value}'''


def max_pool(attrs: Mapping[str, Any]):
    """out = max over each window; NaN wins, as in numpy's max (the phase planes padded with -inf, which covers
    the ceil_mode overhang too)."""
    per_plane = POOL_PER_PLANE.format(start="np.float32(-np.inf)", tap=PHASE_TAP,
                                      combine="s = v if (v > s or v != v) else s", divisor_row="", value="acc_row[q]")
    doc = "Max pooling: each window's maximum in a register along the flat index; NaN wins."
    return render("max_pool2d", plane_jobs(doc, "", "np.float32(-np.inf)", per_plane), **_constants(attrs))


def max_pool_indices(attrs: Mapping[str, Any]):
    return render("max_pool2d_indices", INDICES, **_constants(attrs))


def avg_pool(attrs: Mapping[str, Any]):
    """out = window sum / the window's divisor (`divisors`, OH x OW: the op's count of its taps), the phase planes
    padded with zeros."""
    per_plane = POOL_PER_PLANE.format(start="np.float32(0.0)", tap=PHASE_TAP, combine="s += v",
                                      divisor_row=" " * 16 + "divisor_row = divisors[r]",
                                      value="acc_row[q] / divisor_row[q]")
    doc = "Average pooling: each window's sum in a register along the flat index, divided on the way out."
    return render("avg_pool2d", plane_jobs(doc, "divisors, ", "np.float32(0.0)", per_plane), **_constants(attrs))


UNPOOL = '''
@njit(nogil=True, cache=True, error_model="numpy")
def check(indices, plane):
    for value in indices.ravel():
        if value < 0 or value >= plane:
            raise ValueError("an unpooling index lies outside the output plane")


@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def kernel(x, indices, out):
    """out (viewed (N, C, OH*OW)) = 0, then out[n, c, indices[n, c, p]] = x[n, c, p]."""
    n, c, pixels = x.shape
    check(indices, out.shape[2])
    for job in prange(n * c):
        img = job // c
        ch = job % c
        out[img, ch, :] = 0.0
        for p in range(pixels):
            out[img, ch, indices[img, ch, p]] = x[img, ch, p]
'''


def unpool():
    return render("max_unpool2d", UNPOOL)


GLOBAL_AVG = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out):
    """out[n, c] = mean of x[n, c] over its pixels; x viewed (N, C, pixels), out (N, C, 1)."""
    n, c, pixels = x.shape
    for job in prange(n * c):
        img = job // c
        ch = job % c
        total = np.float32(0.0)
        for p in range(pixels):
            total += x[img, ch, p]
        out[img, ch, 0] = total / pixels
'''


def global_avg_pool():
    return render("global_avg_pool", GLOBAL_AVG)


ADAPTIVE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out, row_start, row_end, col_start, col_end):
    """out[.., i, j] = mean of x over rows [row_start[i], row_end[i]) and columns [col_start[j], col_end[j])."""
    n, c = x.shape[0], x.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    for job in prange(n * c):
        img = job // c
        ch = job % c
        for i in range(oh):
            for j in range(ow):
                total = 0.0
                for r in range(row_start[i], row_end[i]):
                    for q in range(col_start[j], col_end[j]):
                        total += x[img, ch, r, q]
                out[img, ch, i, j] = total / ((row_end[i] - row_start[i]) * (col_end[j] - col_start[j]))
'''


def adaptive_avg_pool():
    return render("adaptive_avg_pool2d", ADAPTIVE)
