"""The numba-cuda executable under the executable contract: what it provides, and calls from many threads at once,
each in a working set of its own (arena, status buffer, stream) from a bounded pool. In the simulator, where each
simulated thread costs about 2 ms, so the graphs are tiny."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import backends.numba_cuda as numba_cuda
import cnncomp
from cnncomp.errors import CnnCompError, GraphError
from cnncomp.ir import Graph
from cnncomp.pipeline import optimize
from cnncomp.planner import memory_plan
from cnncomp.runtime import CONCURRENT_CALLS
from frontends.builder import Builder
from tests.backends.contract import check_concurrent, check_contract, check_variant_compiled_during_calls
from tests.backends.cuda.test_executable import inputs_and_outputs_inside_a_concat, two_branches, unpooling
from tests.backends.cuda.test_ops import constant_scale
from tests.helpers import random_inputs, randomize

THREADS = 4
CALLS = 3  # per thread


def tiny_block() -> Graph:
    """A ResNet basic block with the identity shortcut, at -O3 (convs with fused batch norm, residual and relu)."""
    b = Builder("tiny_block")
    x = b.input("x", (3, 4, 4))
    y = x.conv(3, 3, padding=1, bias=False).batch_norm().relu().conv(3, 3, padding=1, bias=False).batch_norm()
    graph, _ = optimize(randomize(b.build((y + x).relu(name="out"))), 3)
    return graph


# The tiny graphs: kernels with shared memory, values inside a concat, constants in the arena.
GRAPHS = {
    "tiny_block": tiny_block,
    "two_branches": two_branches,
    "inputs_and_outputs_inside_a_concat": inputs_and_outputs_inside_a_concat,
    "constant_scale": constant_scale,
}


def call_concurrently(call: Callable[[dict[str, np.ndarray]], Any],
                      per_thread: list[list[dict[str, np.ndarray]]]) -> list[list[Any]]:
    """One thread per list of inputs, all starting together, each calling `call` on its inputs in turn: what
    each call returned, by thread and call."""
    start = threading.Barrier(len(per_thread))

    def caller(calls: list[dict[str, np.ndarray]]) -> list[Any]:
        start.wait(timeout=60)
        return [call(inputs) for inputs in calls]

    with ThreadPoolExecutor(len(per_thread)) as pool:
        return list(pool.map(caller, per_thread))


def assert_concurrent_calls_return_what_single_calls_do(executable: numba_cuda.CudaExecutable) -> None:
    inputs = [random_inputs(executable.graph, seed=10 * call) for call in range(CALLS)]
    check_concurrent([(executable, inputs)], THREADS, calls=1)


def test_the_executable_provides_the_contract():
    graph = tiny_block()
    executable = numba_cuda.compile(graph)
    check_contract(executable, graph)
    assert executable.input_shapes == {"x": (1, 3, 4, 4)} and executable.output_shapes == {"out": (1, 3, 4, 4)}
    assert executable.concurrent_calls == CONCURRENT_CALLS
    assert executable.memory_plan == memory_plan(graph)
    stats = executable.stats
    assert json.loads(json.dumps(stats)) == stats
    assert stats["launches"] == len(executable.steps) and stats["simulator"] == numba_cuda.simulating()
    assert set(executable.source) == {step.kernel.module_name for step in executable.steps}
    profile = executable.profile(random_inputs(graph), repeat=2)
    assert [row["node"] for row in profile] == [step.node for step in executable.steps]


def test_threads_calling_several_executables_at_once():
    """The shared contract check, the tiny graphs' executables mixed across the threads."""
    cases = []
    for seed, build in enumerate(GRAPHS.values()):
        graph = build()
        cases.append((numba_cuda.compile(graph), [random_inputs(graph, 10 * seed)]))
    check_concurrent(cases)


def test_a_model_compiles_a_batch_size_while_threads_call_it():
    b = Builder("pool_branches")
    x = b.input("x", (2, 3, 3))
    graph = b.build(b.concat(x.relu(), x.max_pool(3, 1, 1).sigmoid(), name="out"))  # no convs: cheap to simulate
    model = cnncomp.compile(graph, backend="numba-cuda", opt_level=3, options={"progress": False})
    check_variant_compiled_during_calls(model)


@pytest.mark.parametrize("name", GRAPHS)
def test_threads_calling_at_once_get_what_each_call_alone_gets(name):
    assert_concurrent_calls_return_what_single_calls_do(numba_cuda.compile(GRAPHS[name]()))


def test_callers_beyond_the_concurrent_calls_wait_for_a_working_set():
    executable = numba_cuda.compile(tiny_block(), {"concurrent_calls": 2})
    assert executable.concurrent_calls == 2
    assert_concurrent_calls_return_what_single_calls_do(executable)


def test_each_call_reads_the_status_of_its_own_kernels():
    """Bad unpooling indices in some calls, good ones in the others, at once: only the bad calls fail."""
    executable = numba_cuda.compile(unpooling())
    bad = np.array([[[[0, 1, 2, 3], [4, 5, 6, 7]]]], np.float32)  # maxima in the row outside the 1x4 plane
    good = np.array([[[[0, 9, 8, 3], [4, 5, 6, 7]]]], np.float32)

    def outcome(inputs: dict[str, np.ndarray]) -> Any:
        try:
            return executable(inputs)["unpooled"]
        except GraphError as error:
            return str(error)

    per_thread = [[{"x": bad if (thread + call) % 2 else good} for call in range(CALLS)] for thread in range(THREADS)]
    for thread, results in enumerate(call_concurrently(outcome, per_thread)):
        for call, result in enumerate(results):
            if (thread + call) % 2:
                assert result == "node 'unpooled': an unpooling index lies outside the output plane"
            else:
                np.testing.assert_array_equal(result, [[[[0, 9, 8, 0]]]])


@pytest.mark.parametrize("value", [0, -1, 2.0, "2", True])
def test_concurrent_calls_must_be_a_positive_int(value):
    with pytest.raises(CnnCompError, match=f"concurrent_calls={value!r}: expected a positive number of calls"):
        numba_cuda.compile(constant_scale(), {"concurrent_calls": value})
