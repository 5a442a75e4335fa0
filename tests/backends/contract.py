"""Checks of the executable contract (`cnncomp.runtime.Executable`) that any backend's tests can call.

`check_contract` checks one executable against its graph; `check_concurrent` calls executables from several
threads at once and requires every output to be, bit for bit, what a call alone returns;
`check_variant_compiled_during_calls` does that for a CompiledModel while it compiles a batch size's variant.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from cnncomp.api import CompiledModel
from cnncomp.ir import Graph
from cnncomp.runtime import Executable
from tests.helpers import random_inputs

Call = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]

BARRIER_SECONDS = 60.0  # how long a thread waits for the others to start: a bound on a broken run, not a pace


def check_contract(executable: Any, graph: Graph, repeat: int = 2) -> None:
    """`executable`, compiled from `graph`, keeps the executable contract: the Protocol, the graph's shapes, the
    plain-data properties, a profile of the graph's nodes and a call that returns fresh arrays."""
    assert isinstance(executable, Executable), f"{type(executable).__name__} lacks part of the Executable protocol"
    assert executable.input_shapes == {node.name: node.shape for node in graph.inputs}
    assert executable.output_shapes == {name: graph.node(name).shape for name in graph.outputs}
    limit = executable.concurrent_calls
    assert limit is None or (isinstance(limit, int) and limit >= 1), f"concurrent_calls {limit!r}"
    plan = executable.memory_plan
    assert plan is None or (isinstance(plan, dict) and "tensors" in plan), f"memory_plan {plan!r}"
    source = executable.source
    assert isinstance(source, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in source.items())
    assert isinstance(executable.stats, dict), f"stats {executable.stats!r}"

    inputs = random_inputs(graph)
    check_profile(executable.profile(inputs, repeat), graph)

    first = executable(inputs)
    assert list(first) == list(graph.outputs), f"outputs {list(first)}, graph outputs {graph.outputs}"
    for name, array in first.items():
        node = graph.node(name)
        assert isinstance(array, np.ndarray) and array.shape == node.shape and array.dtype == node.type.dtype, (
            f"output {name!r}: {type(array).__name__} {getattr(array, 'dtype', '')}{getattr(array, 'shape', '')}, "
            f"expected {node.type}")
    # Fresh: no output shares memory with an input, another output, or the next call's outputs; and writing
    # into one changes nothing the executable keeps.
    expected = {name: array.copy() for name, array in first.items()}
    for array in first.values():
        array.fill(np.nan if array.dtype.kind == "f" else -1)
    second = executable(inputs)
    arrays = [*inputs.values(), *first.values(), *second.values()]
    for index, array in enumerate(arrays):
        assert not any(np.may_share_memory(array, other) for other in arrays[index + 1:]), "outputs are not fresh"
    for name, array in second.items():
        np.testing.assert_array_equal(array, expected[name], err_msg=f"output {name!r} after writing into the last")


def check_profile(rows: list[dict[str, Any]], graph: Graph) -> None:
    """Profile rows: `node` (a node of the graph), `kernel` (a name), `seconds` (not negative), perhaps
    `algorithm` (a name or None), in the graph's order (a node may have several rows, one per kernel)."""
    order = {node.name: index for index, node in enumerate(graph.nodes) if node.op != "input"}
    assert rows, "the profile has no rows"
    for row in rows:
        assert set(row) - {"algorithm"} == {"node", "kernel", "seconds"}, f"profile row {row}"
        assert isinstance(row.get("algorithm"), str | None), f"profile row {row}"
        assert row["node"] in order, f"profile row for {row['node']!r}, not a node of the graph"
        assert isinstance(row["kernel"], str) and row["kernel"], f"profile row {row}"
        assert isinstance(row["seconds"], float) and row["seconds"] >= 0.0, f"profile row {row}"
    positions = [order[row["node"]] for row in rows]
    assert positions == sorted(positions), f"profile rows out of the graph's order: {[r['node'] for r in rows]}"


def check_concurrent(cases: Sequence[tuple[Call, Sequence[Mapping[str, np.ndarray]]]], threads: int = 4,
                     calls: int = 2) -> None:
    """Call every (executable, inputs) case on each of its inputs, `calls` times over, from `threads` threads that
    start together; every output must equal, bit for bit, that of a call alone on the same input (made after, so
    that whatever a case compiles on demand is compiled while the threads run). Each thread starts at another
    place in the list, so different cases and inputs overlap."""
    jobs = [(case, index) for case, (_, inputs) in enumerate(cases) for index in range(len(inputs))]
    barrier = threading.Barrier(threads)

    def worker(thread: int) -> list[tuple[int, int, dict[str, np.ndarray]]]:
        barrier.wait(BARRIER_SECONDS)
        results = []
        for position in range(calls * len(jobs)):
            case, index = jobs[(thread + position) % len(jobs)]
            call, inputs = cases[case]
            results.append((case, index, call(inputs[index])))
        return results

    # Threads switch as often as Python allows, so that calls interleave even where they hold the GIL.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(threads) as pool:
            futures = [pool.submit(worker, thread) for thread in range(threads)]
            outcomes = [result for future in futures for result in future.result()]
    finally:
        sys.setswitchinterval(interval)
    alone = {(case, index): cases[case][0](cases[case][1][index]) for case, index in jobs}
    for case, index, outputs in outcomes:
        expected = alone[case, index]
        assert list(outputs) == list(expected)
        for name, array in outputs.items():
            np.testing.assert_array_equal(array, expected[name],
                                          err_msg=f"case {case}, input {index}, output {name!r}: concurrent calls")


def check_variant_compiled_during_calls(model: CompiledModel, threads: int = 4, calls: int = 2) -> None:
    """`check_concurrent` on a model compiled at batch 1 called at batch 1 and 3 mixed, so that one thread compiles
    the batch-3 variant while the others call."""
    compiled = model.input_shapes
    assert all(shape[0] == 1 for shape in compiled.values()) and len(model.variants) == 1, model.variants
    inputs = [random_inputs(model.graph, seed, batch) for seed, batch in enumerate((1, 3, 1, 3))]
    check_concurrent([(model.run, inputs)], threads, calls)
    assert {name: (3, *shape[1:]) for name, shape in compiled.items()} in model.variants, model.variants
