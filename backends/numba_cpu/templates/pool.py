"""Pooling kernels: max (with its indices) and average over windows, unpooling, global and adaptive average.
Each (image, channel) plane is one parallel job; rows are accumulated tap by tap, vectorized along the row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.numba_cpu.templates.common import PHASE_PLANES, render


def _constants(attrs: Mapping[str, Any]) -> dict[str, int]:
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    top, _, left, _ = attrs["padding"]
    return {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "DH": dh, "DW": dw, "PT": top, "PL": left}


MAX = PHASE_PLANES + '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out, phases_per_thread, acc_per_thread, pw, flat):
    """out = max over each window; NaN wins, as in numpy's max. Each (image, channel) plane's phase planes,
    padded with -inf (covering the ceil_mode overhang too), then every output's maximum kept in a register along
    one flat vector loop (PHASE_PLANES), copied out row by row."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    rows = (oh - 1) * SH + (KH - 1) * DH + 1
    threads = phases_per_thread.shape[0]
    jobs = n * c
    for t in prange(threads):
        phases = phases_per_thread[t]
        acc = acc_per_thread[t, :flat]
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // c
            ch = job % c
            load_phases(x[img, ch], phases, pw, 0, rows, np.float32(-np.inf))
            for f in range(flat):
                m = np.float32(-np.inf)
                for i in range(KH):
                    for j in range(KW):
                        v = phases[((i * DH) % SH) * SW + (j * DW) % SW,
                                   np.uint64(f + ((i * DH) // SH) * pw + (j * DW) // SW)]
                        m = v if (v > m or v != v) else m
                acc[f] = m
            for r in range(oh):
                row = out[img, ch, r]
                acc_row = acc[r * pw: r * pw + ow]
                for q in range(ow):
                    row[q] = acc_row[q]
'''

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

AVG = PHASE_PLANES + '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out, divisors, phases_per_thread, acc_per_thread, pw, flat):
    """out = window sum / the window's divisor (`divisors`, OH x OW: the op's count of its taps). Each (image,
    channel) plane's zero-padded phase planes, then every window's sum in a register along one flat vector loop
    (PHASE_PLANES), divided on the way out."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    rows = (oh - 1) * SH + (KH - 1) * DH + 1
    threads = phases_per_thread.shape[0]
    jobs = n * c
    for t in prange(threads):
        phases = phases_per_thread[t]
        acc = acc_per_thread[t, :flat]
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // c
            ch = job % c
            load_phases(x[img, ch], phases, pw, 0, rows, np.float32(0.0))
            for f in range(flat):
                s = np.float32(0.0)
                for i in range(KH):
                    for j in range(KW):
                        s += phases[((i * DH) % SH) * SW + (j * DW) % SW,
                                    np.uint64(f + ((i * DH) // SH) * pw + (j * DW) // SW)]
                acc[f] = s
            for r in range(oh):
                row = out[img, ch, r]
                acc_row = acc[r * pw: r * pw + ow]
                divisor_row = divisors[r]
                for q in range(ow):
                    row[q] = acc_row[q] / divisor_row[q]
'''


def max_pool(attrs: Mapping[str, Any]):
    return render("max_pool2d", MAX, **_constants(attrs))


def max_pool_indices(attrs: Mapping[str, Any]):
    return render("max_pool2d_indices", INDICES, **_constants(attrs))


def avg_pool(attrs: Mapping[str, Any]):
    return render("avg_pool2d", AVG, **_constants(attrs))


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
