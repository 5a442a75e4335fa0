"""Convolution kernels. Four algorithms, chosen per layer by `backends.numba_cpu.resolve`:

- `direct`: each output summed over its taps in a register; for few channels per group. With one (depthwise
  convs), 16 outputs of a row at a time in a vector, each tap's inputs one masked vector load (`depthwise`); with 2
  to 4, per pixel from zero-padded copies of the group's input planes.
- `im2col`: a band of output rows at a time, the receptive fields copied into a K x pixels matrix and multiplied
  by the weights (gemm.py), the epilogue applied while the band is in cache; or, for batches that leave threads
  idle, the image's whole matrix gathered by all threads and multiplied in tiles of output channels.
- `pointwise`: a 1x1 convolution with stride 1 and no padding is a matrix product W (O x C) @ X (C x pixels).
- `winograd`: 3x3, stride 1: Winograd's F(m x m, 3x3) computes each m x m output tile with (m+2)^2 instead of
  9 m^2 multiplications per channel pair (F(2x2): 16 for 36, F(4x4): 36 for 144), as (m+2)^2 matrix products over
  all tiles of a band. The transform code is generated from the matrices.

Every kernel parallelizes over jobs split statically over Numba's threads, each taking a run of consecutive jobs
(each thread owns its scratch and calls single-threaded BLAS), and applies conv2d's fused epilogue:
act(affine(conv + bias) + residual). Consecutive jobs, not every other one: neighbouring jobs write neighbouring
memory (the pixel tiles of each output row), and two threads writing side by side slowed each other (a 16 -> 96
channel 1x1 conv on a 112x112 map: 0.43 -> 0.30 ms).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from backends.numba_common import activation_constants, epilogue_constants
from backends.numba_cpu import gemm
from backends.numba_cpu.templates.common import (
    epilogue_code,
    epilogue_loop,
    render,
    window_rows,
)


def _window_constants(attrs: Mapping[str, Any]) -> dict[str, int]:
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    top, _, left, _ = attrs["padding"]
    return {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "DH": dh, "DW": dw, "PT": top, "PL": left}


DIRECT = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight, bias, scale, shift, res, out, planes):
    """Grouped convolution, one (image, group) per job: the group's input channels are copied into zero-padded
    planes (so no tap needs a bounds check), then each output value sums its KH x KW taps over the group's
    channels in a register (CG channels per group, a constant, so every tap loop unrolls). weight (O, C/groups,
    KH, KW)."""
    n, c, h, w = x.shape
    o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    groups = c // CG
    og = o // groups
    threads = planes.shape[0]
    jobs = n * groups
    for t in prange(threads):
        plane = planes[t]
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // groups
            g = job % groups
            for ci in range(CG):
                plane[ci] = 0.0
                plane[ci, PT: PT + h, PL: PL + w] = x[img, g * CG + ci]
            for oc_local in range(og):
                oc = g * og + oc_local
                taps = weight[oc]
                for r in range(oh):
                    row = out[img, oc, r]
                    for q in range(ow):
                        v = np.float32(0.0)
                        for ci in range(CG):
                            for i in range(KH):
                                for j in range(KW):
                                    v += taps[ci, i, j] * plane[ci, r * SH + i * DH, q * SW + j * DW]
                        row[q] = v
{epilogue}
'''


def direct(attrs: Mapping[str, Any], channels_per_group: int):
    # The epilogue runs along each finished row: in the tap loop it kept that loop from vectorizing.
    body = DIRECT.format(epilogue=epilogue_loop(attrs, "out[img, oc, r]", "res[img, oc, r]", "ow", "oc", 20))
    return render("conv2d_direct", body, **_window_constants(attrs), CG=channels_per_group,
                  **epilogue_constants(attrs))


DEPTHWISE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight, bias, scale, shift, res, out, acc_per_thread):
    """Depthwise convolution (weight (C*M, 1, KH, KW)), one (image, input channel) per job, a run of consecutive
    jobs per thread (the planes of a small map share cache lines with their neighbours): each of the channel's M
    output planes by window_rows (common.window_rows) into the thread's flat buffer, the epilogue that needs no
    residual along it in one vector loop (a scalar silu on the rows of a 7x7 map took longer than the
    convolution), then its rows copied out (with the residual, read at output positions, and the epilogue)."""
    n, c = x.shape[0], x.shape[1]
    o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    threads = acc_per_thread.shape[0]
    jobs = n * c
    for t in prange(threads):
        acc = acc_per_thread[t, :oh * ow]  # without the floats that keep threads apart
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // c
            g = job % c
            for oc in range(g * (o // c), (g + 1) * (o // c)):
                window_rows(x[img, g], weight[oc, 0], acc, ow, 0, oh, ow)
                for f in range(oh * ow):
                    v = acc[f]
{flat_epilogue}
                    acc[f] = v
                for r in range(oh):
                    acc_row = acc[r * ow: (r + 1) * ow]
                    row = out[img, oc, r]
{residual_row}
                    for p in range(ow):
                        v = acc_row[p]
{epilogue}
                        row[p] = v
'''


def depthwise(attrs: Mapping[str, Any]):
    """The depthwise kernel: DEPTHWISE with its window_rows. The epilogue runs along the flat buffer; with a
    residual, on the way out."""
    if attrs.get("residual"):
        flat, residual_row, rows = {}, " " * 20 + "res_row = res[img, oc, r]", attrs
    else:
        flat, residual_row, rows = attrs, "", {}
    body = DEPTHWISE.format(flat_epilogue=epilogue_code(flat, "v", "oc", "", 20), residual_row=residual_row,
                            epilogue=epilogue_code(rows, "v", "oc", "res_row[p]", 24))
    return render("conv2d_depthwise", body + "\n\n" + window_rows(attrs, "taps"), **_window_constants(attrs),
                  **epilogue_constants(attrs))


IM2COL_GATHER = '''
@njit(nogil=True, cache=True, error_model="numpy")
def im2col(x, img, c0, cg, cols, r0, r1, ow):
    """cols[k, p]: the input under tap k = (channel, i, j) for output pixel p of rows r0..r1 (zero padding), a
    row segment at a time by vector copies (strided for strided convs)."""
    h, w = x.shape[2], x.shape[3]
    zero = np.float32(0.0)
    for ci in range(cg):
        for i in range(KH):
            for j in range(KW):
                k = (ci * KH + i) * KW + j
                q_lo = min(ow, max(0, (PL - j * DW + SW - 1) // SW))
                q_hi = max(q_lo, min(ow, (w - 1 + PL - j * DW) // SW + 1))
                for r in range(r0, r1):
                    ih = r * SH - PT + i * DH
                    row = cols[k, (r - r0) * ow: (r - r0 + 1) * ow]
                    if ih < 0 or ih >= h:
                        fill(row, 0, ow, zero)
                        continue
                    fill(row, 0, q_lo, zero)
                    copy_strided(x[img, c0 + ci, ih], q_lo * SW + j * DW - PL, SW, row, q_lo, q_hi - q_lo)
                    fill(row, q_hi, ow - q_hi, zero)
'''

IM2COL_TILES = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight, bias, scale, shift, res, out, cols_per_thread, rows_per_tile, oh, ow):
    """weight: gemm.pack of (groups, O/groups, K) with K = C/groups * KH * KW; out and res viewed as
    (N, O, OH*OW)."""
    n = x.shape[0]
    groups, k = weight.shape[0], weight.shape[2]
    og = out.shape[1] // groups
    cg = k // (KH * KW)
    tiles = (oh + rows_per_tile - 1) // rows_per_tile
    threads = cols_per_thread.shape[0]
    jobs = n * groups * tiles
    for t in prange(threads):
        cols = cols_per_thread[t]
        panel = column_panel()
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // (groups * tiles)
            g = (job // tiles) % groups
            r0 = (job % tiles) * rows_per_tile
            r1 = min(oh, r0 + rows_per_tile)
            p0 = r0 * ow
            pixels = (r1 - r0) * ow
            im2col(x, img, g * cg, cg, cols, r0, r1, ow)
            tile = out[img, g * og: (g + 1) * og, p0: p0 + pixels]
{product:12}
'''

IM2COL_WHOLE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight, bias, scale, shift, res, out, cols, channels_per_tile, threads, oh, ow):
    """For batches that leave threads idle: per image and group, every thread gathers its share of the input
    channels into one K x pixels matrix, then multiplies it by tiles of output channels (each thread streams
    its share of the weights once). weight: gemm.pack of (groups, O/groups, K); out and res viewed as
    (N, O, OH*OW)."""
    n = x.shape[0]
    groups, k = weight.shape[0], weight.shape[2]
    og = out.shape[1] // groups
    cg = k // (KH * KW)
    pixels = oh * ow
    otiles = (og + channels_per_tile - 1) // channels_per_tile
    workers = min(otiles, threads)
    for img in range(n):
        for g in range(groups):
            for t in prange(threads):
                ci0 = t * cg // threads
                ci1 = (t + 1) * cg // threads
                im2col(x, img, g * cg + ci0, ci1 - ci0, cols[ci0 * KH * KW: ci1 * KH * KW], 0, oh, ow)
            for t in prange(workers):
                panel = column_panel()
                for job in range(t * otiles // workers, (t + 1) * otiles // workers):
                    o0 = g * og + job * channels_per_tile
                    o1 = min((g + 1) * og, o0 + channels_per_tile)
                    tile = out[img, o0:o1]
{product:20}
'''


def im2col(attrs: Mapping[str, Any], whole: bool = False):
    if whole:
        body = IM2COL_GATHER + "\n" + IM2COL_WHOLE.format(product=product(
            attrs, ("weight[g]", "o0 - g * og", "o1 - o0", "cols", "tile"), "o0", "res[img, o0:o1]",
            ["for oc in range(o0, o1):"], epilogue_loop(attrs, "out[img, oc]", "res[img, oc]", "pixels", "oc", 4)))
    else:
        body = IM2COL_GATHER + "\n" + IM2COL_TILES.format(product=product(
            attrs, ("weight[g]", "0", "og", "cols[:, :pixels]", "tile"), "g * og",
            "res[img, g * og: (g + 1) * og, p0: p0 + pixels]",
            ["for oc_local in range(og):", "    oc = g * og + oc_local"],
            epilogue_loop(attrs, "out[img, oc, p0: p0 + pixels]", "res[img, oc, p0: p0 + pixels]", "pixels", "oc", 4)))
    family = "conv2d_im2col_whole" if whole else "conv2d_im2col"
    return render(family, body, **_window_constants(attrs), **epilogue_constants(attrs))


POINTWISE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, weight, bias, scale, shift, res, out, pixels_per_tile, channels_per_tile, threads):
    """out[n] (O x P) = weight (O x C, packed by gemm.pack) @ x[n] (C x P), in tiles of output channels x
    pixels; x, out and res viewed as (N, channels, pixels)."""
    n, c, pixels = x.shape
    o = out.shape[1]
    ptiles = (pixels + pixels_per_tile - 1) // pixels_per_tile
    otiles = (o + channels_per_tile - 1) // channels_per_tile
    jobs = n * ptiles * otiles
    workers = min(jobs, threads)
    for t in prange(workers):
        panel = column_panel()
        for job in range(t * jobs // workers, (t + 1) * jobs // workers):
            img = job // (ptiles * otiles)
            o0, o1, p0, p1 = gemm_tile(job % (ptiles * otiles), ptiles, channels_per_tile, pixels_per_tile, o, pixels)
{product:12}
'''


def pointwise(attrs: Mapping[str, Any]):
    body = POINTWISE.format(product=_tiled_product(attrs, "weight", "x[img, :, p0:p1]"))
    return render("conv2d_pointwise", body, **epilogue_constants(attrs))


# Winograd's minimal filtering F(m x m, 3 x 3) (Lavin and Gray 2016): Y = A^T [(G g G^T) * (B^T d B)] A on tiles of
# (m + 2) x (m + 2) inputs overlapping by 2. F(2x2) interpolates at 0, 1, -1; F(4x4) also at 2, -2.
WINOGRAD_MATRICES = {
    2: {
        "BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        "G": [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
        "AT": [[1, 1, 1, 0], [0, 1, -1, -1]],
    },
    4: {
        "BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
               [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
        "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
              [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    },
}

# The transforms of one row of tiles, in functions of their own: the parallel kernels then stay small, and Numba
# compiles their parallel loops in seconds instead of most of a minute (ResNet-18's F(4x4) kernels took 12-14 s
# each); the epilogue runs after the output transform, along whole output rows, so these functions are the same for
# every Winograd kernel of a tile size.
WINOGRAD_ROWS = '''
@njit(nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def input_row(plane, ti, tw, vt, ci, base):
    """V = B^T d B for each tile of tile row ti of the zero-padded channel plane, into vt[:, ci, base + tj]."""
{row_loads:4}
    for tj in range(tw):
        q = {m} * tj
        k = base + tj
{input_transform:8}


@njit(nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def output_row(mt, oc, base, tw, rows):
    """Y = A^T M A for each tile of a tile row: the tiles' outputs that lie inside `rows`, the (at most {m}) output
    rows of channel oc that the tile row covers."""
    height, ow = rows.shape
    for tj in range(tw):
        k = base + tj
        q = {m} * tj
{output_transform:8}
'''

WINOGRAD_BANDS = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, u, bias, scale, shift, res, out, padded, v_per_thread, m_per_thread, tile_rows):
    """Winograd F({m}x{m}, 3x3) in bands of tile rows, for large maps. u: gemm.pack of ({points}, O, C) = G g G^T,
    the transformed weights. Per band each thread transforms the input tiles (V = B^T d B: {points} x C x tiles),
    multiplies M[xi] = u[xi] @ V[xi] for each of the {points} points, and transforms back (Y = A^T M A) into
    {m}x{m} outputs, adding the epilogue, while the band is in its cache."""
    n, c, h, w = x.shape
    o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    th = (oh + {m1}) // {m}
    tw = (ow + {m1}) // {m}
    bands = (th + tile_rows - 1) // tile_rows
    threads = v_per_thread.shape[0]
    for img in range(n):
        # A zero-padded copy of the image, large enough that every tile lies inside it.
        padded_image = padded[0]
        for ci in prange(c):
            padded_image[ci] = 0.0
            padded_image[ci, PT: PT + h, PL: PL + w] = x[img, ci]
        for t in prange(threads):
            vt = v_per_thread[t]
            mt = m_per_thread[t]
            panel = column_panel()
            for band in range(t * bands // threads, (t + 1) * bands // threads):
                ti0 = band * tile_rows
                ti1 = min(th, ti0 + tile_rows)
                tiles = (ti1 - ti0) * tw
                for ci in range(c):
                    for ti in range(ti0, ti1):
                        input_row(padded_image[ci], ti, tw, vt, ci, (ti - ti0) * tw)
                for xi in range({points}):
                    packed_gemm(u[xi], 0, o, vt[xi, :, :tiles], mt[xi, :, :tiles], panel)
                for oc in range(o):
                    for ti in range(ti0, ti1):
                        output_row(mt, oc, (ti - ti0) * tw, tw, out[img, oc, {m} * ti: {m} * ti + {m}])
                    for r in range({m} * ti0, min(oh, {m} * ti1)):
{epilogue}
'''

WINOGRAD_WHOLE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, u, bias, scale, shift, res, out, padded, vt, mt):
    """Winograd F({m}x{m}, 3x3) over every tile of every image at once, for small maps with many channels (where
    bands would make the matrix products thin): transform all tiles (parallel over image x channel), one product
    M[xi] = u[xi] @ V[xi] per point over all tiles (parallel over the {points} points), transform back with the
    epilogue (parallel over image x output channel)."""
    n, c, h, w = x.shape
    o, oh, ow = out.shape[1], out.shape[2], out.shape[3]
    th = (oh + {m1}) // {m}
    tw = (ow + {m1}) // {m}
    per_image = th * tw
    for job in prange(n * c):
        img = job // c
        ci = job % c
        plane = padded[img, ci]
        plane[:] = 0.0
        plane[PT: PT + h, PL: PL + w] = x[img, ci]
        for ti in range(th):
            input_row(plane, ti, tw, vt, ci, img * per_image + ti * tw)
    for xi in prange({points}):
        packed_gemm(u[xi], 0, o, vt[xi], mt[xi], column_panel())
    for job in prange(n * o):
        img = job // o
        oc = job % o
        for ti in range(th):
            output_row(mt, oc, img * per_image + ti * tw, tw, out[img, oc, {m} * ti: {m} * ti + {m}])
        for r in range(oh):
{epilogue}
'''


class _Indented:
    """Code whose format spec is the indentation, so templates place generated blocks with `{code:28}`."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines

    def __format__(self, spec: str) -> str:
        return "\n".join(" " * int(spec) + line for line in self.lines)


def product(attrs: Mapping[str, Any], operands: tuple[str, str, str, str, str], channel0: str, res_tile: str,
            loop: list[str], epilogue: str) -> _Indented:
    """A tile's product with the conv's epilogue. `operands` are packed_gemm's (packed weight, first row, rows,
    right operand, result tile); the tile's rows are output channels from `channel0` on; `res_tile` is the
    residual beside the result tile. Where gemm.fused_epilogue(attrs), the GEMM applies the epilogue as the tile
    leaves its registers; else the kernel applies it afterwards: `loop` (lines) over the channels, with the
    `epilogue` (indented 4) in it."""
    weight, row0, rows, b, c = operands
    if gemm.fused_epilogue(attrs):
        res = res_tile if attrs.get("residual") else c
        alpha = float(attrs["alpha"]) if attrs.get("act") == "leaky_relu" else 0.0
        return _Indented([f"packed_gemm_epilogue({weight}, {row0}, {rows}, {b}, {c}, panel,",
                          f"                     {channel0}, bias, scale, shift, {res}, {bool(attrs.get('residual'))}, "
                          f"{gemm.ACTIVATION_CODES[attrs.get('act')]}, {alpha!r})"])
    return _Indented([f"packed_gemm({', '.join(operands)}, panel)", *loop, *epilogue.splitlines()])


def _tiled_product(attrs: Mapping[str, Any], weight: str, b: str) -> _Indented:
    """`product` on the tiles of `blas.gemm_tile`: output channels o0 .. o1 - 1, pixels p0 .. p1 - 1."""
    return product(attrs, (weight, "o0", "o1 - o0", b, "out[img, o0:o1, p0:p1]"), "o0", "res[img, o0:o1, p0:p1]",
                   ["for oc in range(o0, o1):"],
                   epilogue_loop(attrs, "out[img, oc, p0:p1]", "res[img, oc, p0:p1]", "p1 - p0", "oc", 4))

def _combination(coefficients: list[float], terms: list[str]) -> str:
    """sum(c * term) as code, skipping zero coefficients and writing +-1 without a multiplication."""
    parts = []
    for coefficient, term in zip(coefficients, terms, strict=True):
        if coefficient == 0:
            continue
        magnitude = abs(coefficient)
        factor = term if magnitude == 1 else f"np.float32({magnitude!r}) * {term}"
        parts.append(("- " if coefficient < 0 else "+ ") + factor)
    text = " ".join(parts)
    return text[2:] if text.startswith("+ ") else "-" + text[2:]


def _winograd_input_transform(m: int) -> tuple[_Indented, _Indented]:
    """Code loading the rows x0..x{alpha-1} of a row of tiles from `plane`, and code transforming one tile d of
    them into V = B^T d B, stored in vt[:, ci, k]."""
    bt = WINOGRAD_MATRICES[m]["BT"]
    alpha = m + 2
    rows = [f"x{a} = plane[{m} * ti + {a}]" for a in range(alpha)]
    lines = []
    for a in range(alpha):  # t = B^T d, one row a at a time, for each column b
        for b in range(alpha):
            lines.append(f"t{a}_{b} = " + _combination(bt[a], [f"x{k}[q + {b}]" for k in range(alpha)]))
    for a in range(alpha):  # V = t B: row a of t combined by row b of B^T
        for b in range(alpha):
            lines.append(f"vt[{a * alpha + b}, ci, k] = " + _combination(bt[b], [f"t{a}_{k}" for k in range(alpha)]))
    return _Indented(rows), _Indented(lines)


def _winograd_output_transform(m: int) -> _Indented:
    """Code reading M for one tile, forming Y = A^T M A, and storing each output that lies inside `rows`."""
    at = WINOGRAD_MATRICES[m]["AT"]
    alpha = m + 2
    lines = [f"s{a}_{b} = " + _combination(at[a], [f"mt[{k * alpha + b}, oc, k]" for k in range(alpha)])
             for a in range(m) for b in range(alpha)]
    for a in range(m):
        for b in range(m):
            guards = [g for g, needed in ((f"{a} < height", a), (f"q + {b} < ow", b)) if needed]
            value = _combination(at[b], [f"s{a}_{k}" for k in range(alpha)])
            store = f"rows[{a}, q + {b}] = {value}"
            lines.append(f"if {' and '.join(guards)}:\n    {store}" if guards else store)
    return _Indented("\n".join(lines).split("\n"))


def winograd(attrs: Mapping[str, Any], m: int, whole: bool):
    """The Winograd kernel: in bands of tile rows (large maps) or over all tiles at once (`whole`)."""
    rows, input_transform = _winograd_input_transform(m)
    helpers = WINOGRAD_ROWS.format(m=m, row_loads=rows, input_transform=input_transform,
                                   output_transform=_winograd_output_transform(m))
    template = WINOGRAD_WHOLE if whole else WINOGRAD_BANDS
    epilogue = epilogue_loop(attrs, "out[img, oc, r]", "res[img, oc, r]", "ow", "oc", 12 if whole else 24)
    body = helpers + "\n" + template.format(m=m, m1=m - 1, points=(m + 2) ** 2, epilogue=epilogue)
    top, _, left, _ = attrs["padding"]
    family = f"conv2d_winograd_f{m}x{m}_3x3_{'whole' if whole else 'bands'}"
    return render(family, body, PT=top, PL=left, **epilogue_constants(attrs))


def winograd_weights(weight: np.ndarray, m: int) -> np.ndarray:
    """U = G g G^T for every (output, input) channel pair, laid out ((m+2)^2, O, C) for the matrix products."""
    g = np.array(WINOGRAD_MATRICES[m]["G"], np.float64)
    u = g @ weight.astype(np.float64) @ g.T  # (O, C, m+2, m+2); matrix products, 4x faster than einsum for F(4x4)
    return np.ascontiguousarray(u.transpose(2, 3, 0, 1).reshape((m + 2) ** 2, weight.shape[0], weight.shape[1]),
                                dtype=np.float32)


GATED_POINTWISE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, gate, weight, bias, scale, shift, res, out, gated_weight, pixels_per_tile, channels_per_tile,
           threads):
    """out[n] = weight @ (gate[n] * x[n]): squeeze-and-excitation's channel gate applied as a prologue, by
    scaling the weight's columns once per image (O x C work instead of C x pixels); then the tiles of
    `conv2d_pointwise`. weight and gated_weight: gemm.pack of (O, C)."""
    n, c, pixels = x.shape
    o = out.shape[1]
    ptiles = (pixels + pixels_per_tile - 1) // pixels_per_tile
    otiles = (o + channels_per_tile - 1) // channels_per_tile
    jobs = ptiles * otiles
    workers = min(jobs, threads)
    for img in range(n):
        for p in prange(weight.shape[0]):
            for ci in range(c):
                g = gate[img, ci, 0]
                for r in range(weight.shape[2]):  # element by element: a slice per (p, ci) cost more than the product
                    gated_weight[p, ci, r] = weight[p, ci, r] * g
        for t in prange(workers):
            panel = column_panel()
            for job in range(t * jobs // workers, (t + 1) * jobs // workers):
                o0, o1, p0, p1 = gemm_tile(job, ptiles, channels_per_tile, pixels_per_tile, o, pixels)
{product:16}
'''


def gated_pointwise(attrs: Mapping[str, Any]):
    body = GATED_POINTWISE.format(product=_tiled_product(attrs, "gated_weight", "x[img, :, p0:p1]"))
    return render("pointwise_conv2d_gated", body, **epilogue_constants(attrs))


DEPTHWISE_BAND = '''
@njit(nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def depthwise_band(x, img, channel, r0, rows, taps, mid_bias, m, row, ow):
    """Mid channel m's depthwise step over output rows r0 .. r0 + rows - 1 into `row` (rows x ow pixels, flat) by
    window_rows, with mid_bias and mid_act applied along it in one vector loop."""
    window_rows(x[img, channel], taps, row, ow, r0, rows, ow)
    for f in range(rows * ow):
        v = row[f]
{mid_epilogue}
        row[f] = v
'''


SEPARABLE = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, depthwise_weight, mid_bias, pointwise_weight, bias, scale, shift, res, out, mid_per_thread,
           rows_per_tile, oh, ow):
    """Depthwise then pointwise, one band of output rows at a time: each thread computes the band's depthwise
    output for every channel into its own (C*M x pixels) tile (depthwise_band, with mid_bias and mid_act), and
    multiplies the tile by pointwise_weight (O x C*M, gemm.pack) straight into the output; the whole intermediate
    tensor never exists."""
    n, c, h, w = x.shape
    o = out.shape[1]
    mid_channels = depthwise_weight.shape[0]
    multiplier = mid_channels // c
    tiles = (oh + rows_per_tile - 1) // rows_per_tile
    threads = mid_per_thread.shape[0]
    jobs = n * tiles
    for t in prange(threads):
        mid = mid_per_thread[t]
        panel = column_panel()
        for job in range(t * jobs // threads, (t + 1) * jobs // threads):
            img = job // tiles
            r0 = (job % tiles) * rows_per_tile
            r1 = min(oh, r0 + rows_per_tile)
            pixels = (r1 - r0) * ow
            for m in range(mid_channels):
                depthwise_band(x, img, m // multiplier, r0, r1 - r0, depthwise_weight[m, 0], mid_bias, m, mid[m], ow)
{product:12}
'''


SEPARABLE_SHARED = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, depthwise_weight, mid_bias, pointwise_weight, bias, scale, shift, res, out, mid, threads,
           pixels_per_tile, channels_per_tile, oh, ow):
    """Depthwise then pointwise on maps too small for a band per thread (MobileNet's and EfficientNet's last
    stages), one image at a time: the threads first share the depthwise step of the whole map out by channel into
    one (C*M x pixels) matrix, then the pointwise product in tiles of output channels x pixels, as the pointwise
    kernel splits it. (Bands of rows here made thinner products and twice the parallel regions.)"""
    n, c, h, w = x.shape
    o = out.shape[1]
    mid_channels = depthwise_weight.shape[0]
    multiplier = mid_channels // c
    pixels = oh * ow
    ptiles = (pixels + pixels_per_tile - 1) // pixels_per_tile
    otiles = (o + channels_per_tile - 1) // channels_per_tile
    jobs = ptiles * otiles
    workers = min(jobs, threads)
    for img in range(n):
        for t in prange(threads):
            # consecutive channels per thread: rows of a small map share cache lines with their neighbours
            for m in range(t * mid_channels // threads, (t + 1) * mid_channels // threads):
                depthwise_band(x, img, m // multiplier, 0, oh, depthwise_weight[m, 0], mid_bias, m, mid[m], ow)
        for t in prange(workers):
            panel = column_panel()
            for job in range(t * jobs // workers, (t + 1) * jobs // workers):
                o0, o1, p0, p1 = gemm_tile(job, ptiles, channels_per_tile, pixels_per_tile, o, pixels)
{product:16}
'''


def separable(attrs: Mapping[str, Any], shared: bool = False):
    """Depthwise then pointwise with the bands dealt to the threads (SEPARABLE), or, `shared`, for maps with fewer
    bands than threads, each band's depthwise step shared by them (SEPARABLE_SHARED)."""
    mid = {"bias": attrs["mid_bias"], "act": attrs["mid_act"]}
    band = window_rows(attrs, "taps") + "\n\n" + DEPTHWISE_BAND.format(
        mid_epilogue=epilogue_code(mid, "v", "m", "", 8, bias="mid_bias", alpha="MID_ALPHA"))
    if shared:
        body = band + SEPARABLE_SHARED.format(product=_tiled_product(attrs, "pointwise_weight", "mid[:, p0:p1]"))
    else:
        body = band + SEPARABLE.format(product=product(
            attrs, ("pointwise_weight", "0", "o", "mid[:, :pixels]", "out[img, :, r0 * ow: r1 * ow]"), "0",
            "res[img, :, r0 * ow: r1 * ow]", ["for oc in range(o):"],
            epilogue_loop(attrs, "out[img, oc, r0 * ow: r1 * ow]", "res[img, oc, r0 * ow: r1 * ow]", "pixels", "oc",
                          4)))
    constants = {**_window_constants(attrs), **epilogue_constants(attrs),
                 **activation_constants(attrs["mid_act"], attrs, "mid_")}
    return render("separable_conv2d_shared" if shared else "separable_conv2d", body, **constants)
