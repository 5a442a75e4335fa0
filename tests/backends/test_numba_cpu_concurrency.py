"""numba-cpu under concurrent callers: each call in a workspace of its own, calls that really overlap (kernels
release the GIL, no lock around a call), a bounded pool of workspaces, and the `threads` option."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import backends.numba_cpu as numba_cpu
import cnncomp
from backends.reference import run as run_reference
from cnncomp.errors import CnnCompError
from tests import models
from tests.backends.contract import check_concurrent
from tests.helpers import random_inputs, random_op_graph


def _inputs(graph, count: int) -> list[dict[str, np.ndarray]]:
    return [random_inputs(graph, seed) for seed in range(count)]


def test_more_callers_than_workspaces_wait_for_one_and_get_their_own_answers():
    graph = models.basic_block(batch=2)
    executable = numba_cpu.compile(graph, {"concurrent_calls": 2})
    check_concurrent([(executable, _inputs(graph, 6))], threads=4, calls=3)
    # Never more than the bound; how many were made depends on how the short calls happened to overlap (waiting
    # for a lent workspace is tested deterministically in tests/test_workspace_pool.py).
    assert 1 <= executable.stats["workspaces"] <= 2


def test_each_workspace_has_its_own_memory_and_the_same_argument_types():
    from numba import typeof

    executable = numba_cpu.compile(models.inception_module())
    first = executable.workspace
    second = first.rebased()
    assert not np.shares_memory(first.arena, second.arena)
    assert not np.shares_memory(first.scratch, second.scratch)
    for old_args, new_args in zip(first.args, second.args, strict=True):
        assert [typeof(a) for a in old_args] == [typeof(a) for a in new_args]
        for old, new in zip(old_args, new_args, strict=True):
            if isinstance(old, np.ndarray) and old.size and np.shares_memory(old, first.arena):
                assert np.shares_memory(new, second.arena) and not np.shares_memory(new, first.arena)
    for name, view in first.views.items():
        if np.shares_memory(view, first.arena):
            assert np.shares_memory(second.views[name], second.arena)


def test_two_concurrent_calls_overlap_in_time():
    """Each call runs one long kernel on one thread; the kernel intervals of two calls started together must
    intersect. A kernel holding the GIL, or a lock around calls, would run them one after the other."""
    graph = random_op_graph("conv2d", [(1, 64, 96, 96)], dict(out_channels=64, kernel=5, padding=2))
    executable = numba_cpu.compile(graph, {"threads": 1, "conv2d_algorithms": {"y": "direct"}})
    (step,) = executable.steps
    kernel = step.function
    intervals: list[tuple[float, float]] = []

    def timed(*args):
        started = time.perf_counter()
        kernel(*args)
        intervals.append((started, time.perf_counter()))

    step.function = timed
    (x,) = _inputs(graph, 1)
    executable(x)  # every workspace's first call alike
    for _ in range(3):  # a busy machine may still deschedule one caller for the whole of the other's call
        intervals.clear()
        check_concurrent([(executable, [x])], threads=2, calls=1)
        (a_start, a_end), (b_start, b_end) = intervals[:2]  # the third: the call alone it is checked against
        if a_start < b_end and b_start < a_end:
            break
    else:
        pytest.fail(f"the calls ran one after the other: {intervals}")


def test_kernels_release_the_gil():
    """While a call runs, another Python thread keeps running."""
    graph = random_op_graph("conv2d", [(1, 64, 96, 96)], dict(out_channels=64, kernel=5, padding=2))
    executable = numba_cpu.compile(graph, {"threads": 1, "conv2d_algorithms": {"y": "direct"}})
    (x,) = _inputs(graph, 1)
    executable(x)
    done = threading.Event()
    ticks = []

    def count() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())
            time.sleep(0.001)

    counter = threading.Thread(target=count)
    counter.start()
    time.sleep(0.01)
    started = time.perf_counter()
    executable(x)
    finished = time.perf_counter()
    done.set()
    counter.join()
    assert sum(started < tick < finished for tick in ticks) >= 2


def test_threads_option_sets_the_tiling_and_the_threads_a_call_uses():
    graph = models.inception_module(batch=2)
    expected = run_reference(graph, dict(_inputs(graph, 1)[0]))
    model = cnncomp.compile(graph, "numba-cpu", opt_level=3, batch=None, threads=1)
    assert model.threads == 1 and model.stats["threads"] == 1
    (x,) = _inputs(graph, 1)
    for name, value in model.run(x).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_must_be_a_positive_int(threads):
    with pytest.raises(CnnCompError, match="threads="):
        cnncomp.compile(models.basic_block(), "numba-cpu", threads=threads)
