"""The per-call workspace pool the backends share (`cnncomp.runtime.WorkspacePool`): never more lent than its
size, callers wait while all are lent, and a workspace that cannot be made frees its place."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cnncomp.runtime import WorkspacePool


def test_the_pool_lends_each_working_set_to_one_call_and_makes_at_most_its_size():
    made: list[object] = []
    lent: set[int] = set()
    most_lent = 0
    lock = threading.Lock()

    def make() -> object:
        made.append(object())
        return made[-1]

    pool = WorkspacePool(make, 2)
    assert len(made) == 1  # the first one at once

    def borrow(_: int) -> None:
        nonlocal most_lent
        with pool.take() as work:
            with lock:
                assert id(work) not in lent
                lent.add(id(work))
                most_lent = max(most_lent, len(lent))
            time.sleep(0.001)  # lets the other threads ask meanwhile
            with lock:
                lent.remove(id(work))

    with ThreadPoolExecutor(6) as threads:
        list(threads.map(borrow, range(30)))
    assert len(made) <= 2 and most_lent <= 2


def test_a_caller_waits_while_every_working_set_is_lent():
    pool = WorkspacePool(object, 2)
    taken = []

    def third_caller() -> None:
        with pool.take() as work:
            taken.append(work)

    with pool.take() as first, pool.take() as second:
        assert second is not first
        waiter = threading.Thread(target=third_caller)
        waiter.start()
        waiter.join(timeout=0.5)
        assert waiter.is_alive() and taken == []
    waiter.join(timeout=60)
    assert taken[0] in (first, second)


def test_a_working_set_that_cannot_be_made_leaves_its_place_free():
    def make() -> object:
        if made:
            raise MemoryError("out of device memory")
        made.append(object())
        return made[-1]

    made: list[object] = []
    pool = WorkspacePool(make, 2)
    with pool.take() as first:
        with pytest.raises(MemoryError), pool.take():
            pass
        made.clear()  # the device has memory again
        with pool.take() as second:
            assert second is not first
