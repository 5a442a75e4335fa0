"""What every kernel template shares: the module header, the fused epilogue as code, calls and buffers."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.numba_common import Dialect, Literal, activation_code
from backends.numba_cpu.kernels import KernelSource

# fastmath without 'nnan'/'ninf'/'afn': sums may be reassociated (so loops vectorize), but NaN and inf still
# propagate as IEEE says and exp/tanh keep full precision.
FASTMATH = '{"reassoc", "contract", "nsz", "arcp"}'

HEADER = '''\
"""cnncomp numba-cpu kernel: {family}
{specialization}
Generated code: edit the template in backends/numba_cpu/templates/, not this file."""

import math

import numpy as np
from numba import njit, prange

from backends.numba_cpu.blas import gemm, gemm_scratch
from backends.numba_cpu.mathlib import fast_exp, fast_tanh
'''


def render(family: str, body: str, **constants: Any) -> KernelSource:
    """A kernel module: the header, the specialization constants as module globals (Numba freezes globals
    into the machine code), then the template body."""
    lines = [f"{name} = {value!r}" for name, value in constants.items()]
    specialization = ", ".join(f"{k}={v!r}" for k, v in constants.items()) or "(no constants)"
    source = HEADER.format(family=family, specialization=specialization) + "\n" + "\n".join(lines) + "\n\n\n"
    source += textwrap.dedent(body).strip() + "\n"
    return KernelSource(family, source.replace("FASTMATH", FASTMATH), tuple(constants.items()))


# The activation formulas (backends.numba_common) as numba-cpu kernels write them: numpy's float32, comparisons
# with a bare float, and mathlib's exp.
DIALECT = Dialect(f32=Literal("np.float32({})"), cmp=Literal("{}"), tanh="fast_tanh", exp="fast_exp")


def epilogue_code(attrs: Mapping[str, Any], value: str, channel: str, residual: str, indent: int,
                  bias: str = "bias", alpha: str = "ALPHA") -> str:
    """Statements that apply `act(affine(v + bias) + residual)` to the scalar `value` of output channel
    `channel`; `residual` is the expression that reads the residual operand at the same position; `bias` and
    `alpha` name the bias array and the leaky-relu slope constant."""
    lines = []
    if attrs.get("bias"):
        lines.append(f"{value} += {bias}[{channel}]")
    if attrs.get("affine"):
        lines.append(f"{value} = {value} * scale[{channel}] + shift[{channel}]")
    if attrs.get("residual"):
        lines.append(f"{value} += {residual}")
    if attrs.get("act"):
        lines.append(activation_code(DIALECT, attrs["act"], value, alpha))
    return textwrap.indent("\n".join(lines) or "pass", " " * indent)


def epilogue_loop(attrs: Mapping[str, Any], out_row: str, res_row: str, length: str, channel: str,
                  indent: int) -> str:
    """A loop applying the epilogue along one output row of output channel `channel`, through 1-D slices of
    the (N, C, pixels) arrays (`out_row`, `res_row`): LLVM vectorizes a loop over a contiguous slice, but not one
    indexing a 2-D tile or a 3-D array (sigmoid and silu ran 6x slower)."""
    if not any(attrs.get(key) for key in ("bias", "affine", "residual", "act")):
        return " " * indent + "pass"
    lines = [f"row = {out_row}"]
    if attrs.get("residual"):
        lines.append(f"res_row = {res_row}")
    lines += [f"for p in range({length}):", "    v = row[p]",
              epilogue_code(attrs, "v", channel, "res_row[p]", 4), "    row[p] = v"]
    return textwrap.indent("\n".join(lines), " " * indent)


@dataclass(frozen=True)
class Scratch:
    """A temporary buffer a kernel needs; every step's scratch lives in one shared region (steps run one
    after another), laid out when the whole graph has been lowered."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class KernelCall:
    """One step of the executable: a kernel and its arguments (arrays, Scratch placeholders, scalars)."""

    kernel: KernelSource
    args: tuple[Any, ...]
    node: str


EMPTY = np.zeros(0, np.float32)


def epilogue_args(params: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """bias, scale, shift: the arrays an epilogue reads (empty where unused, so one signature fits all)."""
    return (
        params.get("bias", EMPTY) if attrs.get("bias") else EMPTY,
        params.get("scale", EMPTY) if attrs.get("affine") else EMPTY,
        params.get("shift", EMPTY) if attrs.get("affine") else EMPTY,
    )
