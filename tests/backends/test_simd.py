"""numba-cpu's vector row copies (backends/numba_cpu/simd.py): every stride the gathers use (vector paths for 1, 2
and 4, a scalar one for others) at every count around a vector's width, and nothing written outside the copy."""

import numpy as np
import pytest
from numba import njit

from backends.numba_cpu.simd import copy_strided, fill


@njit(cache=True)
def _copy(src, start, stride, dst, dst_start, count):
    copy_strided(src, start, stride, dst, dst_start, count)


@njit(cache=True)
def _fill(dst, start, count, value):
    fill(dst, start, count, value)


@pytest.mark.parametrize("stride", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("count", [0, 1, 7, 15, 16, 17, 31, 32, 33, 50])
def test_copy_strided_reads_every_stride_th_value(stride, count):
    rng = np.random.default_rng(stride * 100 + count)
    start, dst_start = 3, 5
    # The source ends at the last value the copy reads: a read past it would show as a wrong value or a fault.
    whole = rng.standard_normal(start + stride * max(count - 1, 0) + 1 + 40).astype(np.float32)
    src = whole[:start + stride * max(count - 1, 0) + 1]
    dst = np.full(dst_start + count + 20, np.nan, np.float32)
    _copy(src[1:], start - 1, stride, dst[1:], dst_start - 1, count)
    np.testing.assert_array_equal(dst[dst_start: dst_start + count], src[start::stride][:count])
    assert np.isnan(dst[:dst_start]).all() and np.isnan(dst[dst_start + count:]).all(), "wrote outside the copy"


@pytest.mark.parametrize("count", [0, 1, 15, 16, 17, 40])
def test_fill_writes_only_its_range(count):
    dst = np.full(count + 30, np.nan, np.float32)
    _fill(dst[2:], 4, count, np.float32(-np.inf))
    assert (dst[6: 6 + count] == -np.inf).all()
    assert np.isnan(dst[:6]).all() and np.isnan(dst[6 + count:]).all()
