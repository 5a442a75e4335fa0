"""Pooling references against torch.nn.functional: max/avg (ceil_mode, padding, count_include_pad), indices,
unpooling, global and adaptive average pooling."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from backends import reference
from cnncomp.ir import Graph
from tests.helpers import assert_close, random, run_one_op

T = torch.from_numpy

POOL_CASES = [
    # (N, C, H, W), kernel, stride, padding, ceil_mode
    ((1, 2, 4, 4), 2, 2, 0, False),
    ((2, 3, 7, 7), 3, 2, 1, False),
    ((1, 2, 7, 7), 3, 2, 1, True),  # ceil_mode with padding
    ((1, 2, 6, 9), 3, 2, 0, True),  # ceil_mode overhang without padding
    ((1, 1, 10, 10), 2, 3, 0, False),  # stride > kernel
    ((1, 1, 11, 11), 2, 3, 1, True),
    ((1, 2, 5, 8), (2, 3), (1, 2), (1, 1), True),
    ((1, 3, 28, 28), 3, 1, 1, False),  # the inception module's 3x3 max pool with stride 1
    ((1, 1, 1, 1), 1, 1, 0, False),
]


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", POOL_CASES)
def test_max_pool2d_matches_torch(shape, kernel, stride, padding, ceil_mode):
    x = random(shape, 1)
    y = run_one_op("max_pool2d", [x], dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode))
    assert_close(y, F.max_pool2d(T(x), kernel, stride, padding, ceil_mode=ceil_mode), atol=0, rtol=0)


@pytest.mark.parametrize("dilation", [2, (1, 3)])
def test_max_pool2d_dilated_matches_torch(dilation):
    x = random((1, 2, 11, 12), 1)
    y = run_one_op("max_pool2d", [x], dict(kernel=3, stride=2, padding=1, dilation=dilation, ceil_mode=True))
    assert_close(y, F.max_pool2d(T(x), 3, 2, 1, dilation, ceil_mode=True), atol=0, rtol=0)


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [True, False])
def test_avg_pool2d_matches_torch(shape, kernel, stride, padding, ceil_mode, count_include_pad):
    x = random(shape, 1)
    y = run_one_op("avg_pool2d", [x], dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                                           count_include_pad=count_include_pad))
    expected = F.avg_pool2d(T(x), kernel, stride, padding, ceil_mode, count_include_pad)
    assert_close(y, expected)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 10), w=st.integers(1, 10), kh=st.integers(1, 4), kw=st.integers(1, 4),
       sh=st.integers(1, 4), sw=st.integers(1, 4), ph=st.integers(0, 2), pw=st.integers(0, 2),
       ceil_mode=st.booleans(), count_include_pad=st.booleans())
def test_pools_random_attributes_match_torch(h, w, kh, kw, sh, sw, ph, pw, ceil_mode, count_include_pad):
    if ph > kh // 2 or pw > kw // 2 or h + 2 * ph < kh or w + 2 * pw < kw:
        return  # refused at build time (tested in test_shape_errors)
    x = random((1, 2, h, w), 1)
    attrs = dict(kernel=(kh, kw), stride=(sh, sw), padding=(ph, pw), ceil_mode=ceil_mode)
    assert_close(run_one_op("max_pool2d", [x], attrs),
                 F.max_pool2d(T(x), (kh, kw), (sh, sw), (ph, pw), ceil_mode=ceil_mode), atol=0, rtol=0)
    assert_close(run_one_op("avg_pool2d", [x], {**attrs, "count_include_pad": count_include_pad}),
                 F.avg_pool2d(T(x), (kh, kw), (sh, sw), (ph, pw), ceil_mode, count_include_pad))


def pool_unpool_graph(shape, kernel, stride, padding, ceil_mode=False, output_size=None) -> Graph:
    graph = Graph("pool_unpool")
    graph.add_node("x", "input", attrs={"shape": shape})
    pool = dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    graph.add_node("pooled", "max_pool2d", ["x"], pool)
    graph.add_node("indices", "max_pool2d_indices", ["x"], pool)
    graph.add_node("unpooled", "max_unpool2d", ["pooled", "indices"],
                   dict(kernel=kernel, stride=stride, padding=padding, output_size=output_size))
    graph.set_outputs(["pooled", "indices", "unpooled"])
    return graph


@pytest.mark.parametrize("shape,kernel,stride,padding,ceil_mode", [
    ((1, 2, 4, 4), 2, 2, 0, False),
    ((2, 3, 8, 6), 2, 2, 0, False),
    ((1, 2, 7, 7), 3, 2, 1, False),
    ((1, 1, 9, 9), 3, 3, 0, False),
    ((1, 2, 7, 9), 2, 2, 0, True),
])
def test_max_pool_indices_and_unpool_match_torch(shape, kernel, stride, padding, ceil_mode):
    x = random(shape, 1)
    out = reference.run(pool_unpool_graph(shape, kernel, stride, padding, ceil_mode), {"x": x})
    values, indices = F.max_pool2d(T(x), kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)
    assert_close(out["pooled"], values, atol=0, rtol=0)
    np.testing.assert_array_equal(out["indices"], indices.numpy())
    if not ceil_mode:
        assert_close(out["unpooled"], F.max_unpool2d(values, indices, kernel, stride, padding), atol=0, rtol=0)


def test_max_unpool_to_an_explicit_output_size_matches_torch():
    x = random((1, 2, 7, 9), 1)
    out = reference.run(pool_unpool_graph((1, 2, 7, 9), 2, 2, 0, output_size=(7, 9)), {"x": x})
    values, indices = F.max_pool2d(T(x), 2, 2, return_indices=True)
    assert_close(out["unpooled"], F.max_unpool2d(values, indices, 2, 2, output_size=(7, 9)), atol=0, rtol=0)


def test_max_pool_indices_take_the_first_of_equal_maxima_like_torch():
    x = np.zeros((1, 1, 4, 4), np.float32)
    values, indices = F.max_pool2d(T(x), 2, 2, return_indices=True)
    out = reference.run(pool_unpool_graph((1, 1, 4, 4), 2, 2, 0), {"x": x})
    np.testing.assert_array_equal(out["indices"], indices.numpy())


@pytest.mark.parametrize("shape", [(1, 3, 7, 7), (2, 4, 1, 1), (1, 2, 5, 9)])
def test_global_avg_pool_matches_torch(shape):
    x = random(shape, 1)
    assert_close(run_one_op("global_avg_pool", [x]), F.adaptive_avg_pool2d(T(x), 1))


@pytest.mark.parametrize("shape,output_size", [
    ((1, 2, 7, 7), (7, 7)), ((1, 2, 13, 13), (6, 6)), ((1, 3, 10, 7), (3, 4)), ((1, 1, 5, 5), (7, 7)),
    ((2, 2, 224, 224), (7, 7)), ((1, 1, 3, 8), (1, 3)),
])
def test_adaptive_avg_pool2d_matches_torch(shape, output_size):
    x = random(shape, 1)
    assert_close(run_one_op("adaptive_avg_pool2d", [x], dict(output_size=output_size)),
                 F.adaptive_avg_pool2d(T(x), output_size))
