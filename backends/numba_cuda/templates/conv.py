"""Convolution kernels.

- `gemm`: every convolution with more than one input channel per group is a matrix product
  out[g] (O/groups x columns) = weight[g] (O/groups x K) @ B[g] (K x columns), columns = N * OH * OW, computed in
  TO x TP output tiles. A block stages TK-deep slices of the weight and of B in shared memory, each thread keeps
  MO x MP accumulators in registers and applies the fused epilogue `act(affine(acc + bias) + residual)` before
  its (coalesced) store. B is never written out; each variant builds its elements while staging them:
  `conv` gathers the receptive field (implicit im2col, zero padding by bounds checks), `pointwise` reads the
  input as it is (a 1x1 conv), `gated` scales it by squeeze-and-excitation's per-sample channel gate first, and
  `separable` computes the depthwise step (with its bias and activation) for each element, so the depthwise
  output never exists in memory.
- `depthwise`: one input channel per group. A block computes a TH x TW tile of one output plane from the input
  window under it (halo included), staged in shared memory once instead of being read KH x KW times; each thread
  computes QW neighbouring outputs of a row, reading each weight once for them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from backends.numba_common import activation_code, activation_constants, epilogue_constants
from backends.numba_cuda.templates.common import (
    DIALECT,
    epilogue_code,
    next_power_of_two,
    render,
)


def window_constants(attrs: Mapping[str, Any]) -> dict[str, int]:
    (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
    top, _, left, _ = attrs["padding"]
    return {"KH": kh, "KW": kw, "SH": sh, "SW": sw, "DH": dh, "DW": dw, "PT": top, "PL": left}


# A GPU wants a few blocks per multiprocessor (132 on an H100) to hide latency: tiles shrink until a layer has
# this many, or reach their smallest size.
TARGET_BLOCKS = 264
LANES = 16  # at most this many threads along each side of a block


@dataclass(frozen=True)
class GemmTile:
    """TO output channels x TP columns per block, reduced TK at a time; each thread owns MO x MP outputs (at least
    2 x 2, so that each value read from shared memory feeds two products), the block's threads laid out
    LANES_O x LANES_P (threadIdx.y, threadIdx.x): 64 threads for 16 x 16 tiles, 256 for 32 x 32 and larger."""

    to: int
    tp: int
    tk: int

    @property
    def lanes_o(self) -> int:
        return min(self.to // 2, LANES)

    @property
    def lanes_p(self) -> int:
        return min(self.tp // 2, LANES)

    @property
    def mo(self) -> int:
        return self.to // self.lanes_o

    @property
    def mp(self) -> int:
        return self.tp // self.lanes_p

    @property
    def threads(self) -> int:
        return self.lanes_o * self.lanes_p

    def grid(self, columns: int, out_per_group: int, groups: int) -> tuple[int, int, int]:
        return (-(-columns // self.tp), -(-out_per_group // self.to), groups)

    def constants(self) -> dict[str, int]:
        return {"TO": self.to, "TP": self.tp, "TK": self.tk, "MO": self.mo, "MP": self.mp,
                "LANES_O": self.lanes_o, "LANES_P": self.lanes_p, "THREADS": self.threads}


def gemm_tile(out_per_group: int, columns: int, groups: int, target_blocks: int | None = None) -> GemmTile:
    """The largest tile (up to 64 x 64) that fits the layer without leaving the GPU idle: start from the layer's
    size rounded up to a power of two (at least 16 x 16), halve the larger side while there are fewer than
    `target_blocks` (TARGET_BLOCKS) blocks. TK keeps the shared slices at most 8 KiB (16 deep for tiles with a
    side of 64, else 32: fewer barriers per reduction). Every tile keeps THREADS a multiple of TP, so that each
    thread stages the same B column at every step of the reduction."""
    target_blocks = TARGET_BLOCKS if target_blocks is None else target_blocks
    to = min(64, max(16, next_power_of_two(out_per_group)))
    tp = min(64, max(16, next_power_of_two(columns)))
    while groups * -(-out_per_group // to) * -(-columns // tp) < target_blocks and (to > 16 or tp > 16):
        if tp >= to and tp > 16 or to == 16:
            tp //= 2
        else:
            to //= 2
    return GemmTile(to, tp, 16 if max(to, tp) == 64 else 32)


GEMM = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, {extra_params}weight, bias, scale, shift, res, res_at, res_batch, out, out_at, out_batch,
           n, c, h, w, o, oh, ow, groups, depth):
    """out[img, g * og + oc, pixel] = act(affine(sum over k < depth of weight[g * og + oc, k] * B[k, (img, pixel)]
    + bias) + residual), where B[k, column] is
    {what}.
    A block of (TP/MP, TO/MO) threads computes a TO x TP tile of group blockIdx.z; weight is (O, depth); x, res
    and out live in the arena."""
    a_tile = cuda.shared.array((TK, TO), float32)
    b_tile = cuda.shared.array((TK, TP), float32)
    acc = cuda.local.array((MO, MP), float32)
    a_regs = cuda.local.array(MO, float32)
    b_regs = cuda.local.array(MP, float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    tid = ty * LANES_P + tx
    g = cuda.blockIdx.z
    og = o // groups
    cg = c // groups
    o0 = cuda.blockIdx.y * TO
    p0 = cuda.blockIdx.x * TP
    plane = oh * ow
    columns = n * plane
    # The B column this thread stages, the same at every step (THREADS is a multiple of TP).
    load_column = p0 + tid % TP
    column_ok = load_column < columns
    load_img = load_column // plane
    load_pixel = load_column % plane
    ih0 = (load_pixel // ow) * SH - PT
    iw0 = (load_pixel % ow) * SW - PL
    x_base = x_at + load_img * x_batch + g * cg * h * w
    for i in range(MO):
        for j in range(MP):
            acc[i, j] = float32(0.0)
    for k0 in range(0, depth, TK):
        # Stage weight[g * og + o0 .. + TO, k0 .. + TK], read along k (coalesced), zero past the edges.
        for e in range(tid, TO * TK, THREADS):
            row = e // TK
            k = k0 + e % TK
            if o0 + row < og and k < depth:
                a_tile[e % TK, row] = weight[g * og + o0 + row, k]
            else:
                a_tile[e % TK, row] = float32(0.0)
        # Stage B[k0 .. + TK, p0 .. + TP]: consecutive threads take consecutive columns (coalesced reads).
        for kk in range(tid // TP, TK, THREADS // TP):
            k = k0 + kk
            v = float32(0.0)
            if column_ok and k < depth:
{load_b}
            b_tile[kk, tid % TP] = v
        cuda.syncthreads()
        for kk in range(TK):
            for i in range(MO):
                a_regs[i] = a_tile[kk, ty + i * LANES_O]
            for j in range(MP):
                b_regs[j] = b_tile[kk, tx + j * LANES_P]
            for i in range(MO):
                for j in range(MP):
                    acc[i, j] += a_regs[i] * b_regs[j]
        cuda.syncthreads()
    for j in range(MP):
        column = p0 + tx + j * LANES_P
        if column < columns:
            img = column // plane
            pixel = column % plane
            for i in range(MO):
                if o0 + ty + i * LANES_O < og:
                    oc = g * og + o0 + ty + i * LANES_O
                    v = acc[i, j]
{epilogue}
                    out[out_at + img * out_batch + oc * plane + pixel] = v
'''

LOAD_B = {
    "conv": (
        "the input under tap k = (channel, i, j) of the output pixel, zero in the padding",
        "",
        """\
ci = k // (KH * KW)
tap = k % (KH * KW)
ih = ih0 + (tap // KW) * DH
iw = iw0 + (tap % KW) * DW
if ih >= 0 and ih < h and iw >= 0 and iw < w:
    v = x[x_base + (ci * h + ih) * w + iw]""",
    ),
    "pointwise": (
        "x[img, k, pixel] (a 1x1 convolution)",
        "",
        "v = x[x_base + k * plane + load_pixel]",
    ),
    "gated": (
        "x[img, k, pixel] * gate[img, k] (the squeeze-and-excitation gate applied to the input)",
        "gate, gate_at, gate_batch, ",
        "v = x[x_base + k * plane + load_pixel] * gate[gate_at + load_img * gate_batch + k]",
    ),
    "separable": (
        "the depthwise step at (img, mid channel k, pixel), computed on the fly",
        "dw_weight, mid_bias, ",
        """\
ci = k // M
for i in range(KH):
    ih = ih0 + i * DH
    if ih >= 0 and ih < h:
        for j in range(KW):
            iw = iw0 + j * DW
            if iw >= 0 and iw < w:
                v += x[x_base + (ci * h + ih) * w + iw] * dw_weight[k, i * KW + j]""",
    ),
}


def gemm(variant: str, attrs: Mapping[str, Any], tile: GemmTile, mid: Mapping[str, Any] | None = None):
    """The tiled matrix-product kernel for one `variant` of LOAD_B. `attrs` gives the window (for `conv` and
    `separable`) and the epilogue; `mid` the separable conv's mid_bias and mid_act."""
    what, extra_params, load_b = LOAD_B[variant]
    constants = dict(tile.constants())
    if variant in ("conv", "separable"):
        constants.update(window_constants(attrs))
    else:
        constants.update({"SH": 1, "SW": 1, "PT": 0, "PL": 0})
    if variant == "separable":
        constants["M"] = attrs["multiplier"]
        mid_lines = ["v += mid_bias[k]"] if mid["mid_bias"] else []
        if mid["mid_act"]:
            mid_lines.append(activation_code(DIALECT, mid["mid_act"], "v", "MID_ALPHA"))
            constants.update(activation_constants(mid["mid_act"], mid, "mid_"))
        load_b = load_b + ("\n" + "\n".join(mid_lines) if mid_lines else "")
        step = "depthwise(x)[img, k, pixel]" + (" + mid_bias[k]" if mid["mid_bias"] else "")
        what = f"{mid['mid_act']}({step})" if mid["mid_act"] else step
        what += ", the depthwise step computed on the fly"
    body = GEMM.format(what=what, extra_params=extra_params, load_b=_indent(load_b, 16),
                       epilogue=epilogue_code(attrs, "v", "oc", "res[res_at + img * res_batch + oc * plane + pixel]",
                                              20))
    return render(f"conv2d_{variant}", body, **constants, **epilogue_constants(attrs))


def _indent(code: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in code.splitlines())


# Depthwise output tiles: at most 256 threads, each computing QW neighbouring outputs of a row.
DEPTHWISE_MAX_THREADS = 256
MAX_GRID_Z = 65535


@dataclass(frozen=True)
class PlaneTile:
    """TH x TW outputs of one plane per block, QW neighbouring outputs of a row per thread (each weight read once
    for all of them), so TH x TW / QW threads; the input window under the tile is IN_H x IN_W."""

    th: int
    tw: int
    qw: int

    def constants(self, attrs: Mapping[str, Any]) -> dict[str, int]:
        (kh, kw), (sh, sw), (dh, dw) = attrs["kernel"], attrs["stride"], attrs["dilation"]
        return {"TH": self.th, "TW": self.tw, "QW": self.qw, "LANES_W": self.tw // self.qw,
                "IN_H": (self.th - 1) * sh + (kh - 1) * dh + 1, "IN_W": (self.tw - 1) * sw + (kw - 1) * dw + 1}

    def launch(self, oh: int, ow: int, planes: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
        return (-(-ow // self.tw), -(-oh // self.th), min(planes, MAX_GRID_Z)), (self.tw // self.qw, self.th)


def plane_tile(oh: int, ow: int) -> PlaneTile:
    """Up to 32 threads across (QW outputs each: 4 on wide maps, 2 from 8 columns, else 1) by 256 / that rows;
    a plane smaller than that gets a tile of its own size (rounded up to QW), so that few threads idle."""
    qw = 4 if ow >= 32 else 2 if ow >= 8 else 1
    lanes = min(32, -(-ow // qw))
    th = min(DEPTHWISE_MAX_THREADS // lanes, oh)
    return PlaneTile(th, lanes * qw, qw)


DEPTHWISE = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, weight, bias, scale, shift, res, res_at, res_batch, out, out_at, out_batch,
           n, c, h, w, oh, ow):
    """out[img, oc] = the KH x KW window of input channel oc // M under each output pixel, weighted by weight[oc]
    (C*M, KH*KW); then act(affine(. + bias) + residual). blockIdx.z walks the (image, output channel) planes; the
    window under the block's TH x TW tile is staged in shared memory, and each thread computes QW outputs of a
    row."""
    window = cuda.shared.array((IN_H, IN_W), float32)
    acc = cuda.local.array(QW, float32)
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    r0 = cuda.blockIdx.y * TH
    q0 = cuda.blockIdx.x * TW
    top = r0 * SH - PT
    left = q0 * SW - PL
    r = r0 + ty
    channels = c * M
    for plane_index in range(cuda.blockIdx.z, n * channels, cuda.gridDim.z):
        img = plane_index // channels
        oc = plane_index % channels
        source = x_at + img * x_batch + (oc // M) * h * w
        for e in range(ty * LANES_W + tx, IN_H * IN_W, TH * LANES_W):
            ih = top + e // IN_W
            iw = left + e % IN_W
            if ih >= 0 and ih < h and iw >= 0 and iw < w:
                window[e // IN_W, e % IN_W] = x[source + ih * w + iw]
            else:
                window[e // IN_W, e % IN_W] = float32(0.0)
        cuda.syncthreads()
        if r < oh:
            for u in range(QW):
                acc[u] = float32(0.0)
            for i in range(KH):
                for j in range(KW):
                    tap = weight[oc, i * KW + j]
                    for u in range(QW):
                        acc[u] += window[ty * SH + i * DH, (tx * QW + u) * SW + j * DW] * tap
            for u in range(QW):
                q = q0 + tx * QW + u
                if q < ow:
                    v = acc[u]
{epilogue}
                    out[out_at + img * out_batch + (oc * oh + r) * ow + q] = v
        cuda.syncthreads()
'''


def depthwise(attrs: Mapping[str, Any], tile: PlaneTile):
    """attrs: depthwise_conv2d's (multiplier M), or conv2d's with groups = C (M = out_channels / C)."""
    epilogue = epilogue_code(attrs, "v", "oc", "res[res_at + img * res_batch + (oc * oh + r) * ow + q]", 20)
    body = DEPTHWISE.format(epilogue=epilogue)
    multiplier = attrs.get("multiplier") or attrs["out_channels"] // attrs["groups"]
    return render("depthwise_conv2d", body, **window_constants(attrs), M=multiplier, **tile.constants(attrs),
                  **epilogue_constants(attrs))
