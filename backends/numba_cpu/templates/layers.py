"""Kernels for the remaining layers: dense (GEMM), transposed convolution (GEMM + scatter), LRN, softmax and
interpolating upsample."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backends.numba_common import epilogue_constants
from backends.numba_cpu.templates.common import epilogue_code, render

DENSE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight_t, bias, scale, shift, res, out, columns_per_job, threads):
    """out (N x O) = x (N x K) @ weight_t (K x O), in blocks of output columns, then the epilogue."""
    n = x.shape[0]
    o = weight_t.shape[1]
    jobs = (o + columns_per_job - 1) // columns_per_job
    for t in prange(min(jobs, threads)):
        ints, floats, no_trans = gemm_scratch()
        for job in range(t * jobs // min(jobs, threads), (t + 1) * jobs // min(jobs, threads)):
            o0 = job * columns_per_job
            o1 = min(o, o0 + columns_per_job)
            block = out[:, o0:o1]
            gemm(x, weight_t[:, o0:o1], block, False, ints, floats, no_trans)
            for img in range(n):
                for oc in range(o0, o1):
                    v = out[img, oc]
{epilogue}
                    out[img, oc] = v
'''


def dense(attrs: Mapping[str, Any]):
    body = DENSE.format(epilogue=epilogue_code(attrs, "v", "oc", "res[img, oc]", 20))
    return render("dense", body, **epilogue_constants(attrs))


DENSE_ROWS = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight, bias, scale, shift, res, out, rows_per_job, threads):
    """out[n, o] = dot(weight[o], x[n]) for a few images: the weight (O x K) streams through once, row by row,
    each row read for every image while it is in cache (a matrix-vector product is bound by memory, and BLAS's
    packing would read the weight twice)."""
    n, k = x.shape
    o = weight.shape[0]
    jobs = (o + rows_per_job - 1) // rows_per_job
    workers = min(jobs, threads)
    for t in prange(workers):
        for job in range(t * jobs // workers, (t + 1) * jobs // workers):
            for oc in range(job * rows_per_job, min(o, (job + 1) * rows_per_job)):
                row = weight[oc]
                for img in range(n):
                    src = x[img]
                    v = np.float32(0.0)
                    for i in range(k):
                        v += row[i] * src[i]
{epilogue}
                    out[img, oc] = v
'''


def dense_rows(attrs: Mapping[str, Any]):
    body = DENSE_ROWS.format(epilogue=epilogue_code(attrs, "v", "oc", "res[img, oc]", 20))
    return render("dense_rows", body, **epilogue_constants(attrs))


CONV_TRANSPOSE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, taps, bias, out, contributions, h, w, threads):
    """Transposed convolution of x viewed (N, C, h*w). taps (groups, O/groups * KH * KW, C/groups): for each image
    and group one matrix product gives every (output channel, tap) contribution of every input pixel; each output
    channel then adds its contributions at their strided positions (one job per channel: no write races)."""
    n, c, pixels = x.shape
    o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    groups, rows, cg = taps.shape
    og = rows // (KH * KW)
    for img in range(n):
        for g in range(groups):
            block = (rows + threads - 1) // threads
            for t in prange(threads):
                ints, floats, no_trans = gemm_scratch()
                r0 = t * block
                r1 = min(rows, r0 + block)
                if r0 < r1:
                    gemm(taps[g, r0:r1], x[img, g * cg: (g + 1) * cg], contributions[r0:r1], False, ints, floats,
                         no_trans)
            for oc_local in prange(og):
                oc = g * og + oc_local
                plane = out[img, oc]
                plane[:, :] = bias[oc] if HAS_BIAS else 0.0
                for i in range(KH):
                    for j in range(KW):
                        row = (oc_local * KH + i) * KW + j
                        for ih in range(h):
                            r = ih * SH + i * DH - PT
                            if r < 0 or r >= oh:
                                continue
                            for iw in range(w):
                                q = iw * SW + j * DW - PL
                                if q >= 0 and q < ow:
                                    plane[r, q] += contributions[row, ih * w + iw]
'''


def conv_transpose(attrs: Mapping[str, Any]):
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    top, _, left, _ = attrs["padding"]
    return render("conv_transpose2d", CONV_TRANSPOSE, KH=kh, KW=kw, SH=sh, SW=sw, DH=dh, DW=dw, PT=top, PL=left,
                  HAS_BIAS=attrs["bias"])


LRN = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out, sums_per_thread):
    """out_c = x_c / (K + ALPHA / SIZE * sum of x_j^2 over channels j in [c - SIZE//2, c + (SIZE-1)//2])^BETA;
    x and out viewed (N, C, pixels). The window sums accumulate channel by channel, vectorized along the pixels."""
    n, c, pixels = x.shape
    threads = sums_per_thread.shape[0]
    jobs = n * c
    for t in prange(threads):
        sums = sums_per_thread[t]
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // c
            ch = job % c
            sums[:pixels] = 0.0
            for j in range(max(0, ch - SIZE // 2), min(c, ch + (SIZE - 1) // 2 + 1)):
                src = x[img, j]
                for p in range(pixels):
                    sums[p] += src[p] * src[p]
            src = x[img, ch]
            dst = out[img, ch]
            for p in range(pixels):
                base = np.float32(K) + np.float32(ALPHA / SIZE) * sums[p]
                dst[p] = src[p] * {inverse_power}
'''

# base^-BETA: square roots where BETA allows (AlexNet, GoogLeNet and VGG use 0.75), which vectorize; else pow.
INVERSE_POWERS = {
    0.5: "(np.float32(1.0) / np.sqrt(base))",
    0.75: "(np.float32(1.0) / (np.sqrt(base) * np.sqrt(np.sqrt(base))))",
    1.0: "(np.float32(1.0) / base)",
}


def lrn(attrs: Mapping[str, Any]):
    inverse = INVERSE_POWERS.get(attrs["beta"], "base ** np.float32(-BETA)")
    return render("lrn", LRN.format(inverse_power=inverse), SIZE=attrs["size"], ALPHA=attrs["alpha"],
                  BETA=attrs["beta"], K=attrs["k"])


SOFTMAX = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out):
    """Softmax along the middle axis of (outer, axis, inner) views: exp(x - max) / sum(exp(x - max))."""
    outer, size, inner = x.shape
    for job in prange(outer * inner):
        a = job // inner
        b = job % inner
        top = -np.inf
        for k in range(size):
            if x[a, k, b] > top or x[a, k, b] != x[a, k, b]:
                top = x[a, k, b]
        total = np.float32(0.0)
        for k in range(size):
            e = fast_exp(x[a, k, b] - top)
            out[a, k, b] = e
            total += e
        for k in range(size):
            out[a, k, b] /= total
'''


def softmax():
    return render("softmax", SOFTMAX)


UPSAMPLE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, out, row_index, row_weight, col_index, col_weight):
    """out[.., r, q] = sum over taps a, b of row_weight[r, a] * col_weight[q, b] * x[row_index[r, a],
    col_index[q, b]]: nearest (1 tap), bilinear (2) or bicubic (4), with the reference's coordinates."""
    n, c = x.shape[0], x.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    row_taps = row_index.shape[1]
    col_taps = col_index.shape[1]
    for job in prange(n * c):
        img = job // c
        ch = job % c
        for r in range(oh):
            for q in range(ow):
                total = 0.0
                for a in range(row_taps):
                    src = x[img, ch, row_index[r, a]]
                    part = 0.0
                    for b in range(col_taps):
                        part += col_weight[q, b] * src[col_index[q, b]]
                    total += row_weight[r, a] * part
                out[img, ch, r, q] = total
'''


def upsample():
    return render("upsample", UPSAMPLE)
