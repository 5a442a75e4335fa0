"""Kernels for the remaining layers: dense (a warp per output feature), transposed convolution (each output gathers
its contributions), LRN, softmax (a block per row of classes, or a thread per column of a map) and interpolating
upsample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.numba_common import epilogue_constants
from backends.numba_cuda.templates.common import WARP, epilogue_code, render

DENSE = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, weight, bias, scale, shift, res, res_at, res_batch, out, out_at, out_batch, n, k, o):
    """out[img, oc] = sum over j < k of x[img, j] * weight[oc, j], then act(affine(. + bias) + residual).

    A layer of one or a few images is a matrix-vector product, bound by reading the weight: each warp owns one
    output feature at a time and its lanes stride along the weight row (coalesced), keeping a partial sum for each
    of NB images, so the row is read once per NB images. The lanes' partial sums are added in shared memory."""
    partial = cuda.shared.array((NB, THREADS), float32)
    sums = cuda.local.array(NB, float32)
    tid = cuda.threadIdx.x
    lane = tid % WARP
    warp = tid // WARP
    for first in range(cuda.blockIdx.x * WARPS, o, cuda.gridDim.x * WARPS):
        oc = first + warp
        for img0 in range(0, n, NB):
            for b in range(NB):
                sums[b] = float32(0.0)
            if oc < o:
                for j in range(lane, k, WARP):
                    wv = weight[oc, j]
                    for b in range(NB):
                        if img0 + b < n:
                            sums[b] += wv * x[x_at + (img0 + b) * x_batch + j]
            for b in range(NB):
                partial[b, tid] = sums[b]
            cuda.syncthreads()
            half = WARP // 2
            while half > 0:
                if lane < half:
                    for b in range(NB):
                        partial[b, tid] += partial[b, tid + half]
                cuda.syncthreads()
                half //= 2
            # Lane b finishes image img0 + b of this warp's feature.
            if lane < NB and oc < o and img0 + lane < n:
                img = img0 + lane
                v = partial[lane, warp * WARP]
{epilogue}
                out[out_at + img * out_batch + oc] = v
            cuda.syncthreads()
'''

DENSE_THREADS = 128
DENSE_MAX_IMAGES = 16  # NB: partial sums per lane


def dense(attrs: Mapping[str, Any], batch: int):
    body = DENSE.format(epilogue=epilogue_code(attrs, "v", "oc", "res[res_at + img * res_batch + oc]", 16))
    return render("dense", body, THREADS=DENSE_THREADS, WARP=WARP, WARPS=DENSE_THREADS // WARP,
                  NB=min(batch, DENSE_MAX_IMAGES), **epilogue_constants(attrs))


CONV_TRANSPOSE = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, weight, bias, out, out_at, out_batch, n, c, h, w, o, oh, ow, groups):
    """out[img, oc, r, q] = bias[oc] + the sum of x[img, ci, ih, iw] * weight[ci, oc % og, i, j] over the input
    channels ci of oc's group and the taps (i, j) with ih * SH + i * DH - PT = r and iw * SW + j * DW - PL = q.
    Each output gathers what the input pixels scatter to it, so no two threads write one output; weight is
    (C, og * KH * KW)."""
    og = o // groups
    cg = c // groups
    for e in range(cuda.grid(1), n * o * oh * ow, cuda.gridsize(1)):
        q = e % ow
        r = (e // ow) % oh
        plane = e // (oh * ow)
        img = plane // o
        oc = plane % o
        g = oc // og
        taps = (oc - g * og) * KH * KW
        source = x_at + img * x_batch
        v = float32(0.0)
        for i in range(KH):
            rr = r + PT - i * DH
            if rr >= 0 and rr % SH == 0 and rr // SH < h:
                ih = rr // SH
                for j in range(KW):
                    qq = q + PL - j * DW
                    if qq >= 0 and qq % SW == 0 and qq // SW < w:
                        iw = qq // SW
                        for ci in range(g * cg, (g + 1) * cg):
                            v += x[source + (ci * h + ih) * w + iw] * weight[ci, taps + i * KW + j]
        if HAS_BIAS:
            v += bias[oc]
        out[out_at + img * out_batch + (oc * oh + r) * ow + q] = v
'''


def conv_transpose(attrs: Mapping[str, Any]):
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    top, _, left, _ = attrs["padding"]
    return render("conv_transpose2d", CONV_TRANSPOSE, KH=kh, KW=kw, SH=sh, SW=sw, DH=dh, DW=dw, PT=top, PL=left,
                  HAS_BIAS=attrs["bias"])


LRN = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, pixels):
    """out_c = x_c / (K + ALPHA / SIZE * sum of x_j^2 over channels j in [c - SIZE//2, c + (SIZE-1)//2])^BETA."""
    for e in range(cuda.grid(1), n * c * pixels, cuda.gridsize(1)):
        img = e // (c * pixels)
        ch = (e // pixels) % c
        p = e % pixels
        source = x_at + img * x_batch + p
        total = float32(0.0)
        for j in range(max(0, ch - SIZE // 2), min(c, ch + (SIZE - 1) // 2 + 1)):
            v = x[source + j * pixels]
            total += v * v
        denominator = math.pow(float32(K) + float32(ALPHA / SIZE) * total, float32(BETA))
        out[out_at + img * out_batch + ch * pixels + p] = x[source + ch * pixels] / denominator
'''


def lrn(attrs: Mapping[str, Any]):
    return render("lrn", LRN, SIZE=attrs["size"], ALPHA=attrs["alpha"], BETA=attrs["beta"], K=attrs["k"])


SOFTMAX_ROWS = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, outer, size):
    """Softmax over the last axis of each sample viewed (outer, size) (the classes of a classifier): block b takes
    row b, first its max, then the sum of exp(x - max), each reduced over the block's threads in shared memory,
    then out = exp(x - max) / sum. NaN wins the max, as in numpy."""
    partial = cuda.shared.array(THREADS, float32)
    tid = cuda.threadIdx.x
    for row in range(cuda.blockIdx.x, n * outer, cuda.gridDim.x):
        source = x_at + (row // outer) * x_batch + (row % outer) * size
        target = out_at + (row // outer) * out_batch + (row % outer) * size
        top = float32(-math.inf)
        for k in range(tid, size, THREADS):
            v = x[source + k]
            if v > top or v != v:
                top = v
        partial[tid] = top
        cuda.syncthreads()
        half = THREADS // 2
        while half > 0:
            if tid < half:
                other = partial[tid + half]
                if other > partial[tid] or other != other:
                    partial[tid] = other
            cuda.syncthreads()
            half //= 2
        top = partial[0]
        cuda.syncthreads()
        total = float32(0.0)
        for k in range(tid, size, THREADS):
            total += math.exp(x[source + k] - top)
        partial[tid] = total
        cuda.syncthreads()
        half = THREADS // 2
        while half > 0:
            if tid < half:
                partial[tid] += partial[tid + half]
            cuda.syncthreads()
            half //= 2
        total = partial[0]
        for k in range(tid, size, THREADS):
            out[target + k] = math.exp(x[source + k] - top) / total
        cuda.syncthreads()
'''

SOFTMAX_COLUMNS = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, outer, size, inner):
    """Softmax along a middle axis of each sample viewed (outer, size, inner) (the classes of each pixel of a
    segmentation map): one thread per (outer, inner) column, so neighbouring threads read neighbouring elements;
    max, sum of exp(x - max), then out = exp(x - max) / sum along the column. NaN wins the max, as in numpy."""
    for e in range(cuda.grid(1), n * outer * inner, cuda.gridsize(1)):
        img = e // (outer * inner)
        a = (e // inner) % outer
        b = e % inner
        source = x_at + img * x_batch + a * size * inner + b
        target = out_at + img * out_batch + a * size * inner + b
        top = float32(-math.inf)
        for k in range(size):
            v = x[source + k * inner]
            if v > top or v != v:
                top = v
        total = float32(0.0)
        for k in range(size):
            total += math.exp(x[source + k * inner] - top)
        for k in range(size):
            out[target + k * inner] = math.exp(x[source + k * inner] - top) / total
'''


def softmax_rows(threads: int):
    """`threads`: a power of two, the block size."""
    return render("softmax_rows", SOFTMAX_ROWS, THREADS=threads)


def softmax_columns():
    return render("softmax_columns", SOFTMAX_COLUMNS)


UPSAMPLE = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, h, w, oh, ow, row_index, row_weight, col_index,
           col_weight):
    """out[.., r, q] = sum over taps a, b of row_weight[r, a] * col_weight[q, b] * x[.., row_index[r, a],
    col_index[q, b]]: {mode} ({taps} taps per axis), the reference's coordinates and weights."""
    for e in range(cuda.grid(1), n * c * oh * ow, cuda.gridsize(1)):
        q = e % ow
        r = (e // ow) % oh
        plane = e // (oh * ow)
        img = plane // c
        ch = plane % c
        source = x_at + img * x_batch + ch * h * w
        total = float32(0.0)
        for a in range(TAPS):
            row = source + row_index[r, a] * w
            part = float32(0.0)
            for b in range(TAPS):
                part += col_weight[q, b] * x[row + col_index[q, b]]
            total += row_weight[r, a] * part
        out[out_at + img * out_batch + (ch * oh + r) * ow + q] = total
'''


def upsample(mode: str, taps: int):
    return render(f"upsample_{mode}", UPSAMPLE.format(mode=mode, taps=taps), TAPS=taps)
