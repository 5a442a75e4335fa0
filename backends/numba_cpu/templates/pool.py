"""Pooling kernels: max (with its indices) and average over windows, unpooling, global and adaptive average.
Each (image, channel) plane is one parallel job; max and average pooling reduce 16 windows of a row at a time in a
vector register, straight from the input (templates.common.window_rows)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.numba_cpu.templates.common import render, window_rows


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

# A run of consecutive (image, channel) planes per thread (the planes of a small map share cache lines with their
# neighbours), each reduced by window_rows straight into the output plane; average pooling then divides each row.
POOL = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, {operands}out, threads):
    """{doc}"""
    n, c = x.shape[0], x.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    jobs = n * c
    for t in prange(threads):
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // c
            g = job % c
            plane = out[img, g]
            window_rows(x[img, g], plane, plane.strides[0] // 4, 0, oh, ow)
{per_plane}
'''


def max_pool(attrs: Mapping[str, Any]):
    """out = max over each window; NaN wins, as in numpy's max (padding and the ceil_mode overhang read as -inf)."""
    body = POOL.format(operands="", per_plane="", doc="Max pooling: window_rows' max of each window; NaN wins.")
    return render("max_pool2d", body + "\n\n" + window_rows(attrs, "max"), **_constants(attrs))


def max_pool_indices(attrs: Mapping[str, Any]):
    return render("max_pool2d_indices", INDICES, **_constants(attrs))


def avg_pool(attrs: Mapping[str, Any]):
    """out = window sum / the window's divisor (`divisors`, OH x OW: the op's count of its taps), padding read as
    zeros."""
    per_plane = "\n".join(" " * 12 + line for line in [
        "for r in range(oh):",
        "    row = out[img, g, r]",
        "    divisor_row = divisors[r]",
        "    for q in range(ow):",
        "        row[q] = row[q] / divisor_row[q]"])
    body = POOL.format(operands="divisors, ", per_plane=per_plane,
                       doc="Average pooling: window_rows' sum of each window, divided along each row.")
    return render("avg_pool2d", body + "\n\n" + window_rows(attrs, "sum"), **_constants(attrs))


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
