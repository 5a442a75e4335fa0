"""Math the generated kernels call, written so that LLVM vectorizes it (Numba's exp is a scalar libm call here:
llvmlite is built without Intel's SVML)."""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic


@intrinsic
def float_from_bits(typingctx, bits):
    """The float32 whose IEEE bits are the int32 `bits`."""
    signature = types.float32(types.int32)

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.FloatType())

    return signature, codegen


@njit(inline="always", cache=True, fastmath={"contract", "nsz", "arcp"})
def fast_exp(x: np.float32) -> np.float32:
    """exp(x) in float32 within 1e-7 relative: exp(x) = 2^n exp(r), r = x - n ln 2 in [-ln2/2, ln2/2] (ln 2 split in
    two parts so r is exact), exp(r) by Cephes' degree-7 polynomial, 2^n from its exponent bits. NaN stays NaN;
    +inf gives inf; -inf and x below -87.3 give exp(-87.3), about 1e-38, where libm gives 0 or a subnormal."""
    if x != x:
        return x
    x = min(max(x, np.float32(-87.33655)), np.float32(88.72284))
    n = np.floor(x * np.float32(1.44269504) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    p = p * r * r + r + np.float32(1.0)
    return p * float_from_bits((np.int32(n) + np.int32(127)) << np.int32(23))


@njit(inline="always", cache=True, fastmath={"contract", "nsz", "arcp"})
def fast_tanh(x: np.float32) -> np.float32:
    """tanh(x) in float32 within 3e-7 relative, vectorizable in the kernels (Numba's np.tanh is a scalar libm call,
    10 ns a value, which made most of LeNet-5's time): Cephes' tanhf, an odd degree-11 polynomial below |x| = 0.625
    and 1 - 2 / (exp(2x) + 1) above it, both computed and one selected so the loop has no branch. Its division
    vectorizes where the caller divides as IEEE does (error_model="numpy", as every kernel does). NaN stays NaN
    (fast_exp keeps it), +-inf give +-1."""
    s = x * x
    p = np.float32(-5.70498872745e-3) * s + np.float32(2.06390887954e-2)
    p = p * s - np.float32(5.37397155531e-2)
    p = p * s + np.float32(1.33314422036e-1)
    p = p * s - np.float32(3.33332819422e-1)
    small = p * s * x + x
    large = np.float32(1.0) - np.float32(2.0) / (fast_exp(x + x) + np.float32(1.0))
    return small if s < np.float32(0.390625) else large  # |x| < 0.625
