"""numba-cpu's own GEMM (backends/numba_cpu/gemm.py) against float64 numpy: packing, every tile edge (rows short of
a panel, columns short of a vector or of a micro-kernel, depth short of a pass), row ranges of a packed weight,
strided views, and nothing written outside the result."""

import numpy as np
import pytest

from backends.numba_cpu import gemm
from cnncomp.ops.activation import apply_activation


def _product(m, k, n, row0, rng):
    weight = rng.standard_normal((row0 + m + 3, k)).astype(np.float32)
    # Operand and result are views inside larger arrays: row strides other than their widths.
    b_whole = rng.standard_normal((k, n + 7)).astype(np.float32)
    b = b_whole[:, 5: 5 + n]
    c_whole = np.full((m + 2, n + 9), np.nan, np.float32)
    c = c_whole[1: 1 + m, 4: 4 + n]
    gemm.packed_gemm(gemm.pack(weight), row0, m, b, c, gemm.column_panel())
    expected = weight[row0: row0 + m].astype(np.float64) @ b.astype(np.float64)
    return c_whole, c, expected


def _check(m, k, n, row0, rng):
    c_whole, c, expected = _product(m, k, n, row0, rng)
    np.testing.assert_allclose(c, expected, rtol=1e-5, atol=1e-5 * np.sqrt(k))
    outside = np.ones(c_whole.shape, bool)
    outside[1: 1 + m, 4: 4 + n] = False
    assert np.isnan(c_whole[outside]).all(), "wrote outside the result"


@pytest.mark.parametrize("m, k, n", [
    (1, 1, 1), (8, 3, 16), (8, 5, 32), (7, 2, 15), (9, 300, 17), (16, 256, 33), (24, 257, 48), (3, 513, 64),
    (40, 100, 196), (300, 64, 49), (8, 1, 100),
])
@pytest.mark.parametrize("row0", [0, 8, 16])
def test_packed_gemm_at_every_edge(m, k, n, row0):
    _check(m, k, n, row0, np.random.default_rng(m * 1000 + k + n))


@pytest.mark.parametrize("seed", range(40))
def test_packed_gemm_over_drawn_shapes(seed):
    rng = np.random.default_rng(seed)
    m, k, n = (int(v) for v in rng.integers(1, [300, 700, 400]))
    _check(m, k, n, 8 * int(rng.integers(0, 4)), rng)


def test_pack_lays_panels_depth_major_with_zero_rows():
    weight = np.arange(2 * 11 * 3, dtype=np.float32).reshape(2, 11, 3)
    packed = gemm.pack(weight)
    assert packed.shape == (2, 2, 3, gemm.MR) and packed.flags.c_contiguous
    np.testing.assert_array_equal(packed[1, 0, 2], weight[1, :8, 2])
    np.testing.assert_array_equal(packed[0, 1, 1, :3], weight[0, 8:, 1])
    assert not packed[:, 1, :, 3:].any()


def test_non_finite_values_propagate():
    weight = np.ones((8, 4), np.float32)
    b = np.ones((4, 40), np.float32)
    b[2, 3], b[1, 35] = np.nan, np.inf
    c = np.zeros((8, 40), np.float32)
    gemm.packed_gemm(gemm.pack(weight), 0, 8, b, c, gemm.column_panel())
    assert np.isnan(c[:, 3]).all() and np.isinf(c[:, 35]).all()
    assert np.isfinite(np.delete(c, [3, 35], axis=1)).all()


@pytest.mark.parametrize("activation", list(gemm.ACTIVATION_CODES))
@pytest.mark.parametrize("bias, affine, residual", [(True, False, False), (False, True, True), (True, True, True),
                                                    (False, False, False)])
@pytest.mark.parametrize("m, k, n", [(13, 300, 45), (8, 7, 16), (20, 600, 3)])
def test_epilogue_in_the_registers(activation, bias, affine, residual, m, k, n):
    """packed_gemm_epilogue against its formula in float64: bias, affine, residual and activation of each output
    channel (rows from channel0 = 16 on), NaN and inf passing through as the reference's activations pass them."""
    rng = np.random.default_rng(k)
    weight = rng.standard_normal((16 + m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    b[0, 0], b[-1, -1] = np.nan, -np.inf
    per_channel = [rng.standard_normal(16 + m).astype(np.float32) if used else np.zeros(0, np.float32)
                   for used in (bias, affine, affine)]
    res = rng.standard_normal((m, n)).astype(np.float32)
    c = np.full((m, n), np.nan, np.float32)
    alpha = 0.2
    gemm.packed_gemm_epilogue(gemm.pack(weight), 16, m, b, c, gemm.column_panel(), 16, *per_channel,
                              res if residual else c, residual, gemm.ACTIVATION_CODES[activation], alpha)
    expected = weight[16:].astype(np.float64) @ b.astype(np.float64)
    rows = slice(16, 16 + m)
    if bias:
        expected += per_channel[0][rows, None]
    if affine:
        expected = expected * per_channel[1][rows, None] + per_channel[2][rows, None]
    if residual:
        expected += res
    if activation is not None:
        with np.errstate(all="ignore"):
            expected = apply_activation(expected.astype(np.float32), activation, alpha)
    np.testing.assert_allclose(c, expected, rtol=1e-4, atol=1e-4 * np.sqrt(k))
