"""Elementwise, broadcast and data-movement kernels: activations, per-channel affine (batch norm), add and mul,
copies (identity, dropout, flatten, concat operands and channel slices the memory plan could not place in
place), pad and crop. All work on (N, C, pixels) views."""

from __future__ import annotations

import textwrap
from typing import Any

from backends.numba_common import activation_code, activation_constants
from backends.numba_cpu.templates.common import DIALECT, render

UNARY = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(x, scale, shift, out):
    """out = {what}, per (image, channel) row of pixels."""
    n, c, pixels = x.shape
    for job in prange(n * c):
        img = job // c
        ch = job % c
        src = x[img, ch]
        dst = out[img, ch]
        for p in range(pixels):
            v = src[p]
{statements}
            dst[p] = v
'''


def unary(kind: str, attrs: dict[str, Any]):
    """`kind`: an activation name, "affine" (v * scale[c] + shift[c]) or "copy"."""
    if kind == "affine":
        statements, what = "v = v * scale[ch] + shift[ch]", "x * scale + shift (per channel)"
    elif kind == "copy":
        statements, what = "pass", "x"
    else:
        statements, what = activation_code(DIALECT, kind, "v"), f"{kind}(x)"
    constants = activation_constants(kind, attrs)
    body = UNARY.format(what=what, statements=textwrap.indent(statements, " " * 12))
    return render(f"unary_{kind}", body, **constants)


BINARY = '''
@njit(parallel=True, nogil=True, fastmath=FASTMATH, cache=True, error_model="numpy")
def kernel(a, b, out):
    """out = a {symbol} b on (N, C, pixels) views; an operand with one pixel is broadcast over the channel."""
    n, c, pixels = out.shape
    for job in prange(n * c):
        img = job // c
        ch = job % c
        ra = a[img, ch]
        rb = b[img, ch]
        dst = out[img, ch]
        for p in range(pixels):
            dst[p] = ra[{index_a}] {symbol} rb[{index_b}]
'''


def binary(op: str, broadcast_a: bool, broadcast_b: bool):
    symbol = {"add": "+", "mul": "*"}[op]
    body = BINARY.format(symbol=symbol, index_a="0" if broadcast_a else "p", index_b="0" if broadcast_b else "p")
    return render(f"binary_{op}", body, BROADCAST_A=broadcast_a, BROADCAST_B=broadcast_b)


PAD = '''
@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def kernel(x, out):
    """Spatial padding: out[.., r, q] = x at the {mode} source of (r - PT, q - PL)."""
    n, c, h, w = x.shape
    oh, ow = out.shape[2], out.shape[3]
    for job in prange(n * c):
        img = job // c
        ch = job % c
        for r in range(oh):
            sr = r - PT
            for q in range(ow):
                sq = q - PL
{source}
'''

PAD_SOURCE = {
    "zeros": """                if sr < 0 or sr >= h or sq < 0 or sq >= w:
                    out[img, ch, r, q] = 0.0
                else:
                    out[img, ch, r, q] = x[img, ch, sr, sq]""",
    "reflect": """                sr = -sr if sr < 0 else (2 * (h - 1) - sr if sr >= h else sr)
                sq = -sq if sq < 0 else (2 * (w - 1) - sq if sq >= w else sq)
                out[img, ch, r, q] = x[img, ch, sr, sq]""",
    "replicate": """                sr = min(max(sr, 0), h - 1)
                sq = min(max(sq, 0), w - 1)
                out[img, ch, r, q] = x[img, ch, sr, sq]""",
}


def pad(attrs: dict[str, Any]):
    top, _, left, _ = attrs["pads"]
    body = PAD.format(mode=attrs["mode"], source=PAD_SOURCE[attrs["mode"]])
    return render(f"pad_{attrs['mode']}", body, PT=top, PL=left)


WINDOW_COPY = '''
@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def kernel(x, out, top, left):
    """out = x[:, :, top: top + OH, left: left + OW] (U-Net's crop), per (image, channel)."""
    n, c = out.shape[0], out.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    for job in prange(n * c):
        img = job // c
        ch = job % c
        for r in range(oh):
            out[img, ch, r, :] = x[img, ch, top + r, left: left + ow]
'''


def window_copy():
    return render("crop", WINDOW_COPY)


STRIDED_SLICE = '''
@njit(parallel=True, nogil=True, cache=True, error_model="numpy")
def kernel(x, out):
    """out = x[:, :, ::SH, ::SW]."""
    n, c = out.shape[0], out.shape[1]
    oh, ow = out.shape[2], out.shape[3]
    for job in prange(n * c):
        img = job // c
        ch = job % c
        for r in range(oh):
            src = x[img, ch, r * SH]
            for q in range(ow):
                out[img, ch, r, q] = src[q * SW]
'''


def strided_slice(attrs: dict[str, Any]):
    sh, sw = attrs["stride"]
    return render("strided_slice", STRIDED_SLICE, SH=sh, SW=sw)
