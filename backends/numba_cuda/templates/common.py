"""What every CUDA kernel template shares: the module header, the fused epilogue as code, launch shapes, and the
descriptions of kernel launches and their arguments that lowering produces.

Every activation lives in one device arena of float32 (seen as int64 for max-pool indices), addressed by element
offsets: value `t` of an (N, C, pixels) tensor is at `t_at + n * t_batch + c * pixels + p`. `t_batch` is the
per-sample size, or the concat's for a value the memory plan placed inside a concat. Kernels take the arena once
per tensor they touch (`x, x_at, x_batch`), so their sources read like the math, and every size is an argument:
a template is specialized on window, stride, padding, dilation, epilogue and tile shape only.
"""

from __future__ import annotations

import enum
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.numba_common import Dialect, Literal, activation_code
from backends.numba_cuda.kernels import KernelSource

HEADER = '''\
"""cnncomp numba-cuda kernel: {family}
{specialization}
Generated code: edit the template in backends/numba_cuda/templates/, not this file."""

import math

from numba import cuda, float32
'''

# Elementwise kernels: threads per block, the most blocks a grid-stride loop is launched with, and the fewest
# elements each thread takes (a few loads in flight per thread hide memory latency as well as more threads do).
BLOCK = 256
MAX_BLOCKS = 8192
ELEMENTS_PER_THREAD = 4
WARP = 32


def render(family: str, body: str, **constants: Any) -> KernelSource:
    """A kernel module: the header, the specialization constants as module globals (Numba freezes globals into
    the compiled kernel, so they size shared arrays and fold into index arithmetic), then the template body."""
    lines = [f"{name} = {value!r}" for name, value in constants.items()]
    specialization = ", ".join(f"{k}={v!r}" for k, v in constants.items()) or "(no constants)"
    source = HEADER.format(family=family, specialization=specialization) + "\n" + "\n".join(lines) + "\n\n\n"
    source += textwrap.dedent(body).strip() + "\n"
    return KernelSource(family, source, tuple(constants.items()))


# The activation formulas (backends.numba_common) as device kernels write them: float32 throughout, comparisons
# included. A bare Python float literal is a float64 in Numba, and one would turn the arithmetic around it into
# double precision (32x slower on most GPUs). The PTX tests check that no kernel does f64 arithmetic.
F32 = Literal("float32({})")
DIALECT = Dialect(f32=F32, cmp=F32, tanh="math.tanh", exp="math.exp")


def epilogue_code(attrs: Mapping[str, Any], value: str, channel: str, residual: str, indent: int) -> str:
    """Statements that apply `act(affine(v + bias) + residual)` to the float32 `value` of output channel
    `channel`; `residual` is the expression that reads the residual operand at the same position."""
    lines = []
    if attrs.get("bias"):
        lines.append(f"{value} += bias[{channel}]")
    if attrs.get("affine"):
        lines.append(f"{value} = {value} * scale[{channel}] + shift[{channel}]")
    if attrs.get("residual"):
        lines.append(f"{value} += {residual}")
    if attrs.get("act"):
        lines.append(activation_code(DIALECT, attrs["act"], value))
    return textwrap.indent("\n".join(lines) or "pass", " " * indent)


class Arena(enum.Enum):
    """The activation arena, as the kernel argument sees it: float32 values or int64 indices (same memory)."""

    FLOAT = "float32"
    INT = "int64"


class Status(enum.Enum):
    """A small int32 device array in which kernels report bad data (an unpooling index out of range), one slot
    per reporting node; the executable reads it after each run."""

    ARRAY = "status"


@dataclass(frozen=True)
class Launch:
    """One kernel launch of the executable: the kernel, its grid and block, and its arguments in order (Arena and
    Status placeholders, host arrays that are copied to the device once at compile time, and ints)."""

    kernel: KernelSource
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple[Any, ...]
    node: str


# Stands for an epilogue array the node does not use, so that one kernel signature fits every node.
UNUSED = np.zeros(1, np.float32)


def epilogue_args(params: Mapping[str, np.ndarray], attrs: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
    """bias, scale, shift: the arrays an epilogue reads (UNUSED where the node has none)."""
    return (
        params["bias"] if attrs.get("bias") else UNUSED,
        params["scale"] if attrs.get("affine") else UNUSED,
        params["shift"] if attrs.get("affine") else UNUSED,
    )


def next_power_of_two(value: int) -> int:
    return 1 << max(0, int(value) - 1).bit_length()


def elementwise_launch(total: int) -> tuple[tuple[int], tuple[int]]:
    """Grid and block of a grid-stride loop over `total` elements: at least ELEMENTS_PER_THREAD elements per
    thread, BLOCK threads per block (fewer, a whole number of warps, for tiny tensors), at most MAX_BLOCKS
    blocks."""
    threads = -(-max(total, 1) // ELEMENTS_PER_THREAD)
    block = min(BLOCK, -(-threads // WARP) * WARP)
    grid = min(MAX_BLOCKS, -(-threads // block))
    return (grid,), (block,)


