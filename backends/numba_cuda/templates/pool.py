"""Pooling kernels: max (with its indices) and average over windows, unpooling, global and adaptive average.

Window pools give each thread one output of a grid-stride loop and read its window straight from global memory:
a pool reads each input a few times at most (KH x KW / (SH x SW), 2.25 for a 3x3/2 pool), which the L1 cache
serves. Global average pooling gives each (image, channel) plane a block that sums it in a shared-memory tree,
or, for planes of at most 256 pixels, a thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.numba_cuda.templates.common import render


def window_constants(attrs: Mapping[str, Any]) -> dict[str, int]:
    (kh, kw), (sh, sw) = attrs["kernel"], attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    top, bottom, left, right = attrs["padding"]
    return {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "DH": dh, "DW": dw, "PT": top, "PB": bottom, "PL": left,
            "PR": right}


OUTPUT_LOOP = '''
    for e in range(cuda.grid(1), n * c * oh * ow, cuda.gridsize(1)):
        q = e % ow
        r = (e // ow) % oh
        plane = e // (oh * ow)
        img = plane // c
        ch = plane % c
        source = x_at + img * x_batch + ch * h * w
        target = out_at + img * out_batch + (ch * oh + r) * ow + q'''

MAX = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, h, w, oh, ow):
    """out = max over each KH x KW window (dilated by DH, DW); the padding never wins; NaN wins, as in numpy."""
{loop}
        best = float32(-math.inf)
        for i in range(KH):
            ih = r * SH - PT + i * DH
            if ih >= 0 and ih < h:
                for j in range(KW):
                    iw = q * SW - PL + j * DW
                    if iw >= 0 and iw < w:
                        v = x[source + ih * w + iw]
                        if v > best or v != v:
                            best = v
        out[target] = best
'''

INDICES = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, h, w, oh, ow):
    """out (int64) = flat index ih * W + iw of each window's first maximum (its first NaN if there is one)."""
{loop}
        best = float32(-math.inf)
        where = -1
        for i in range(KH):
            ih = r * SH - PT + i * DH
            if ih >= 0 and ih < h:
                for j in range(KW):
                    iw = q * SW - PL + j * DW
                    if iw >= 0 and iw < w:
                        v = x[source + ih * w + iw]
                        if where < 0 or v > best or (v != v and best == best):
                            best = v
                            where = ih * w + iw
        out[target] = where
'''

AVG = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, h, w, oh, ow):
    """out = window sum / divisor: the taps inside the padded input if COUNT_PAD, else those inside the input
    (the ceil_mode overhang past the padding never counts)."""
{loop}
        top = r * SH - PT
        left = q * SW - PL
        if COUNT_PAD:
            count = (min(h + PB, top + KH) - top) * (min(w + PR, left + KW) - left)
        else:
            count = (min(h, top + KH) - max(0, top)) * (min(w, left + KW) - max(0, left))
        total = float32(0.0)
        for i in range(max(0, top), min(h, top + KH)):
            for j in range(max(0, left), min(w, left + KW)):
                total += x[source + i * w + j]
        out[target] = total / float32(count)
'''


def max_pool(attrs: Mapping[str, Any]):
    return render("max_pool2d", MAX.format(loop=OUTPUT_LOOP), **window_constants(attrs))


def max_pool_indices(attrs: Mapping[str, Any]):
    return render("max_pool2d_indices", INDICES.format(loop=OUTPUT_LOOP), **window_constants(attrs))


def avg_pool(attrs: Mapping[str, Any]):
    return render("avg_pool2d", AVG.format(loop=OUTPUT_LOOP), **window_constants(attrs),
                  COUNT_PAD=attrs["count_include_pad"])


UNPOOL_CLEAR = '''
@cuda.jit(cache=True)
def kernel(out, out_at, out_batch, n, plane_size, status, slot):
    """Unpooling, first launch: out (N, plane_size per sample) = 0, and status[slot] = 0 (no bad index yet)."""
    start = cuda.grid(1)
    if start == 0:
        status[slot] = 0
    for e in range(start, n * plane_size, cuda.gridsize(1)):
        out[out_at + (e // plane_size) * out_batch + e % plane_size] = float32(0.0)
'''

UNPOOL_SCATTER = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, indices, indices_at, indices_batch, out, out_at, out_batch, n, c, pixels, out_pixels,
           status, slot):
    """Unpooling, second launch: out[img, ch, indices[img, ch, p]] = x[img, ch, p]. An index outside the output
    plane is skipped and reported in status[slot] (the executable raises it as an error)."""
    for e in range(cuda.grid(1), n * c * pixels, cuda.gridsize(1)):
        img = e // (c * pixels)
        within = e % (c * pixels)
        ch = within // pixels
        where = indices[indices_at + img * indices_batch + within]
        if where < 0 or where >= out_pixels:
            status[slot] = 1
        else:
            out[out_at + img * out_batch + ch * out_pixels + where] = x[x_at + img * x_batch + within]
'''


def unpool_clear():
    return render("max_unpool2d_clear", UNPOOL_CLEAR)


def unpool_scatter():
    return render("max_unpool2d_scatter", UNPOOL_SCATTER)


GLOBAL_AVG = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, pixels):
    """out[img, ch] = mean of x[img, ch] over its pixels: block b sums plane b (its THREADS threads stride over
    the pixels, then add their partial sums pairwise in shared memory)."""
    partial = cuda.shared.array(THREADS, float32)
    tid = cuda.threadIdx.x
    for plane in range(cuda.blockIdx.x, n * c, cuda.gridDim.x):
        img = plane // c
        ch = plane % c
        source = x_at + img * x_batch + ch * pixels
        total = float32(0.0)
        for p in range(tid, pixels, THREADS):
            total += x[source + p]
        partial[tid] = total
        cuda.syncthreads()
        half = THREADS // 2
        while half > 0:
            if tid < half:
                partial[tid] += partial[tid + half]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            out[out_at + img * out_batch + ch] = partial[0] / float32(pixels)
        cuda.syncthreads()
'''


def global_avg_pool(threads: int):
    """`threads`: a power of two, the block size."""
    return render("global_avg_pool", GLOBAL_AVG, THREADS=threads)


GLOBAL_AVG_SMALL = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, pixels):
    """out[img, ch] = mean of x[img, ch] over its pixels, one thread per plane: for small maps, where a block per
    plane would spend more time on its barriers than on the sum."""
    for plane in range(cuda.grid(1), n * c, cuda.gridsize(1)):
        img = plane // c
        ch = plane % c
        source = x_at + img * x_batch + ch * pixels
        total = float32(0.0)
        for p in range(pixels):
            total += x[source + p]
        out[out_at + img * out_batch + ch] = total / float32(pixels)
'''


def global_avg_pool_small():
    return render("global_avg_pool_small", GLOBAL_AVG_SMALL)


ADAPTIVE = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, h, w, oh, ow, row_start, row_end, col_start, col_end):
    """out[.., i, j] = mean of x over rows [row_start[i], row_end[i]) and columns [col_start[j], col_end[j])."""
    for e in range(cuda.grid(1), n * c * oh * ow, cuda.gridsize(1)):
        j = e % ow
        i = (e // ow) % oh
        plane = e // (oh * ow)
        img = plane // c
        ch = plane % c
        source = x_at + img * x_batch + ch * h * w
        total = float32(0.0)
        for r in range(row_start[i], row_end[i]):
            for q in range(col_start[j], col_end[j]):
                total += x[source + r * w + q]
        count = (row_end[i] - row_start[i]) * (col_end[j] - col_start[j])
        out[out_at + img * out_batch + (ch * oh + i) * ow + j] = total / float32(count)
'''


def adaptive_avg_pool():
    return render("adaptive_avg_pool2d", ADAPTIVE)
