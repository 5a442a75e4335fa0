"""Elementwise, broadcast and data-movement kernels: activations, per-channel affine (batch norm), add and mul,
strided copies (identity, dropout, flatten, concat operands and channel slices the memory plan could not place in
place, crop, strided slice) and pad.
Each thread takes every (grid size)-th element of a grid-stride loop, so one launch shape fits any size."""

from __future__ import annotations

from typing import Any

from backends.numba_common import activation_code, activation_constants
from backends.numba_cuda.templates.common import DIALECT, render

UNARY = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, scale, shift, out, out_at, out_batch, n, c, pixels):
    """out = {what} on (N, C, pixels) tensors."""
    sample = c * pixels
    for e in range(cuda.grid(1), n * sample, cuda.gridsize(1)):
        img = e // sample
        within = e % sample
        v = x[x_at + img * x_batch + within]
{statements}
        out[out_at + img * out_batch + within] = v
'''


def unary(kind: str, attrs: dict[str, Any]):
    """`kind`: an activation name, or "affine" (v * scale[c] + shift[c], batch norm in inference form)."""
    if kind == "affine":
        statements, what = "ch = within // pixels\nv = v * scale[ch] + shift[ch]", "x * scale + shift (per channel)"
    else:
        statements, what = activation_code(DIALECT, kind, "v"), f"{kind}(x)"
    constants = activation_constants(kind, attrs)
    body = UNARY.format(what=what, statements="\n".join(" " * 8 + line for line in statements.splitlines()))
    return render(f"unary_{kind}", body, **constants)


BINARY = '''
@cuda.jit(cache=True)
def kernel(a, a_at, a_batch, b, b_at, b_batch, out, out_at, out_batch, n, c, pixels):
    """out = a {symbol} b on (N, C, pixels) tensors; an operand of one pixel per channel is broadcast over it."""
    sample = c * pixels
    for e in range(cuda.grid(1), n * sample, cuda.gridsize(1)):
        img = e // sample
        within = e % sample
        out[out_at + img * out_batch + within] = (a[a_at + img * a_batch + {index_a}]
                                                  {symbol} b[b_at + img * b_batch + {index_b}])
'''


def binary(op: str, broadcast_a: bool, broadcast_b: bool):
    symbol = {"add": "+", "mul": "*"}[op]
    body = BINARY.format(symbol=symbol, index_a="within // pixels" if broadcast_a else "within",
                         index_b="within // pixels" if broadcast_b else "within")
    return render(f"binary_{op}", body, BROADCAST_A=broadcast_a, BROADCAST_B=broadcast_b)


STRIDED_COPY = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_s0, x_s1, x_s2, x_s3, out, out_at, out_s0, out_s1, out_s2, out_s3, d0, d1, d2, d3):
    """out[out_at + a*out_s0 + b*out_s1 + r*out_s2 + q*out_s3] = x[x_at + a*x_s0 + b*x_s1 + r*x_s2 + q*x_s3] over
    the d0 x d1 x d2 x d3 box: any window, stride or slot of one tensor copied into another."""
    for e in range(cuda.grid(1), d0 * d1 * d2 * d3, cuda.gridsize(1)):
        q = e % d3
        rest = e // d3
        r = rest % d2
        rest //= d2
        b = rest % d1
        a = rest // d1
        out[out_at + a * out_s0 + b * out_s1 + r * out_s2 + q * out_s3] = x[x_at + a * x_s0 + b * x_s1 + r * x_s2
                                                                            + q * x_s3]
'''


def strided_copy():
    return render("strided_copy", STRIDED_COPY)


PAD = '''
@cuda.jit(cache=True)
def kernel(x, x_at, x_batch, out, out_at, out_batch, n, c, h, w, oh, ow):
    """Spatial padding: out[.., r, q] = x at the {mode} source of (r - PT, q - PL)."""
    for e in range(cuda.grid(1), n * c * oh * ow, cuda.gridsize(1)):
        q = e % ow
        r = (e // ow) % oh
        plane = e // (oh * ow)
        img = plane // c
        ch = plane % c
        sr = r - PT
        sq = q - PL
{source}
        out[out_at + img * out_batch + (ch * oh + r) * ow + q] = v
'''

PAD_SOURCE = {
    "zeros": """\
v = float32(0.0)
if sr >= 0 and sr < h and sq >= 0 and sq < w:
    v = x[x_at + img * x_batch + (ch * h + sr) * w + sq]""",
    "reflect": """\
sr = -sr if sr < 0 else (2 * (h - 1) - sr if sr >= h else sr)
sq = -sq if sq < 0 else (2 * (w - 1) - sq if sq >= w else sq)
v = x[x_at + img * x_batch + (ch * h + sr) * w + sq]""",
    "replicate": """\
sr = min(max(sr, 0), h - 1)
sq = min(max(sq, 0), w - 1)
v = x[x_at + img * x_batch + (ch * h + sr) * w + sq]""",
}


def pad(attrs: dict[str, Any]):
    top, _, left, _ = attrs["pads"]
    source = "\n".join(" " * 8 + line for line in PAD_SOURCE[attrs["mode"]].splitlines())
    return render(f"pad_{attrs['mode']}", PAD.format(mode=attrs["mode"], source=source), PT=top, PL=left)
