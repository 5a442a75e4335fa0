"""The numba-cuda executable: memory plan, one copy in and one copy out per call, weights on the device once, inputs
checked, readable generated sources, the kernel cache, errors reported by kernels. In the simulator."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import backends.numba_cuda as numba_cuda
from backends import reference
from cnncomp.errors import GraphError, InputError
from cnncomp.ir import Graph
from cnncomp.pipeline import optimize
from cnncomp.planner import memory_plan
from frontends.builder import Builder
from tests import models
from tests.backends.cuda.test_blocks import inception_module, unet_level
from tests.helpers import (
    assert_memory_steady,
    assert_same_as_reference,
    random,
    random_inputs,
    random_op_graph,
    randomize,
)


def small_net(batch: int = 1) -> Graph:
    b = Builder("small", batch=batch)
    x = b.input("x", (3, 4, 4))
    y = x.conv(4, 3, padding=1).batch_norm().relu().max_pool(2)
    return randomize(b.build(y.flatten().dense(5).softmax()))


class CopyCounter:
    """Counts the host-device copies of the simulator's device arrays (and new device arrays) while active."""

    def __init__(self, monkeypatch, cuda):
        from numba.cuda.simulator.cudadrv import devicearray

        self.counts = {"to_device": 0, "copy_to_device": 0, "copy_to_host": 0}
        fake = devicearray.FakeCUDAArray
        for method in ("copy_to_device", "copy_to_host"):
            original = getattr(fake, method)

            def counted(array, *args, _original=original, _method=method, **kwargs):
                self.counts[_method] += 1
                return _original(array, *args, **kwargs)

            monkeypatch.setattr(fake, method, counted)
        original_to_device = cuda.to_device

        def to_device(*args, **kwargs):
            self.counts["to_device"] += 1
            return original_to_device(*args, **kwargs)

        monkeypatch.setattr(cuda, "to_device", to_device)


def two_branches() -> Graph:
    """At -O3: a conv and a max pool that write their halves of the concat in place."""
    b = Builder("two_branches", batch=2)
    x = b.input("x", (2, 3, 3))
    graph, _ = optimize(randomize(b.build(b.concat(x.conv(2, 1).relu(), x.max_pool(3, 1, 1), name="out"))), 3)
    return graph


def test_a_call_copies_each_input_in_and_each_output_out_once(monkeypatch, cuda):
    if not numba_cuda.simulating():
        pytest.skip("counts the simulator's copies")
    graph = two_branches()
    assert memory_plan(graph)["in_place_concats"] == ["out"]
    executable = numba_cuda.compile(graph)
    inputs = random_inputs(graph)
    counter = CopyCounter(monkeypatch, cuda)
    outputs = executable(inputs)
    assert counter.counts == {"to_device": 0, "copy_to_device": 1, "copy_to_host": 1}
    np.testing.assert_allclose(outputs["out"], reference.run(graph, inputs)["out"], atol=1e-4, rtol=1e-4)


def test_weights_are_copied_to_the_device_once_at_compile_time(monkeypatch, cuda):
    if not numba_cuda.simulating():
        pytest.skip("counts the simulator's copies")
    graph = small_net()
    counter = CopyCounter(monkeypatch, cuda)
    executable = numba_cuda.compile(graph)
    # Each array the kernels read, once: the arena of the first working set is one more.
    assert counter.counts["to_device"] == len(executable.weights) + 1
    # conv weight and bias, batch norm folded to a scale and a shift, dense weight and bias, one placeholder for
    # the epilogue arrays a kernel does not use.
    floats = 4 * 3 * 3 * 3 + 4 + 2 * 4 + 5 * 16 + 5 + 1
    assert executable.stats["weight_bytes"] == 4 * floats
    counter.counts.update(to_device=0)
    executable(random_inputs(graph))
    assert counter.counts["to_device"] == 0


def test_activations_live_in_one_arena_laid_out_by_the_memory_plan():
    graph, _ = optimize(inception_module(), 3)
    plan = memory_plan(graph)
    executable = assert_same_as_reference(graph, numba_cuda)
    assert executable.stats["arena_bytes"] == plan["arena_bytes"]
    for name, slot in executable.slots.items():
        planned = plan["tensors"][name]
        assert slot.at * 4 == planned["offset"] and slot.batch == planned["batch_stride"]
    # The concat's four operands were written in place by their convs: no copy kernel runs for it.
    assert plan["in_place_concats"] == ["out"]
    assert [step.node for step in executable.steps if step.node == "out"] == []


def test_the_backend_plans_the_memory_of_the_graph_it_compiles():
    graph, _ = optimize(unet_level(), 2)
    assert "memory_plan" not in graph.meta
    executable = assert_same_as_reference(graph, numba_cuda)
    assert executable.memory_plan == memory_plan(graph)


def inputs_and_outputs_inside_a_concat() -> Graph:
    graph = Graph("strided")
    graph.add_node("x", "input", attrs={"shape": (2, 2, 3, 3)})
    graph.add_node("y", "input", attrs={"shape": (2, 3, 3, 3)})
    graph.add_node("r", "relu", ["y"])
    graph.add_node("c", "concat", ["x", "r"])
    graph.set_outputs(["c", "r"])
    return graph


def unpooling() -> Graph:
    """Max pooling with indices, then unpooling into a plane of 1x4: the kernel reports indices outside it."""
    graph = Graph("unpool")
    graph.add_node("x", "input", attrs={"shape": (1, 1, 2, 4)})
    graph.add_node("pooled", "max_pool2d", ["x"], dict(kernel=2))
    graph.add_node("indices", "max_pool2d_indices", ["x"], dict(kernel=2))
    graph.add_node("unpooled", "max_unpool2d", ["pooled", "indices"], dict(kernel=2, output_size=(1, 4)))
    graph.set_outputs(["unpooled"])
    return graph


def test_inputs_and_outputs_inside_a_concat():
    """The plan may put a graph input or output inside a concat: its samples then lie apart in the arena."""
    executable = assert_same_as_reference(inputs_and_outputs_inside_a_concat(), numba_cuda, atol=0, rtol=0)
    assert not executable.slots["x"].contiguous and not executable.slots["r"].contiguous


def test_bad_unpooling_index_is_a_clear_error_and_the_next_good_call_runs():
    """Indices of a 2x4 plane unpooled into a 1x4 one: maxima in the second row point outside it. The kernel
    reports it, the executable raises it, and the next call's first unpooling launch clears the report."""
    graph = unpooling()
    executable = numba_cuda.compile(graph)
    bad = np.array([[[[0, 1, 2, 3], [4, 5, 6, 7]]]], np.float32)  # maxima at 5 and 7
    with pytest.raises(GraphError, match="node 'unpooled': an unpooling index lies outside the output plane"):
        executable({"x": bad})
    good = np.array([[[[0, 9, 8, 3], [4, 5, 6, 7]]]], np.float32)  # maxima at 1 and 2
    np.testing.assert_array_equal(executable({"x": good})["unpooled"], [[[[0, 9, 8, 0]]]])
    np.testing.assert_array_equal(reference.run(graph, {"x": good})["unpooled"], [[[[0, 9, 8, 0]]]])


def test_inputs_are_checked():
    executable = numba_cuda.compile(small_net())
    with pytest.raises(InputError, match="input 'x': shape 1x3x4x5, expected 1x3x4x4"):
        executable({"x": random((1, 3, 4, 5))})
    with pytest.raises(InputError, match="dtype float64"):
        executable({"x": random((1, 3, 4, 4)).astype(np.float64)})
    with pytest.raises(InputError, match="missing input 'x'"):
        executable({})


def test_outputs_are_fresh_arrays_and_calls_are_repeatable():
    graph = small_net(batch=2)
    executable = numba_cuda.compile(graph)
    inputs = random_inputs(graph)
    first = executable(inputs)
    second = executable(random_inputs(graph, seed=7))
    again = executable(inputs)
    for name in graph.outputs:
        np.testing.assert_array_equal(again[name], first[name])
        assert not np.shares_memory(first[name], second[name])
        assert not np.array_equal(first[name], second[name])


def test_memory_does_not_grow_over_calls():
    graph = random_op_graph("relu", [(1, 2, 3, 3)])
    executable = numba_cuda.compile(graph)
    inputs = random_inputs(graph)
    assert_memory_steady(lambda: executable(inputs), warmup=3, calls=10)


def test_generated_sources_are_readable_modules_in_the_cache(tmp_path):
    graph, _ = optimize(models.mbconv(), 3)
    executable = numba_cuda.compile(graph, {"cache_dir": tmp_path})
    sources = executable.source
    assert len(sources) == executable.stats["kernels"]
    for module, text in sources.items():
        assert text.startswith('"""cnncomp numba-cuda kernel: ')
        assert "@cuda.jit(cache=True)\ndef kernel(" in text
        compile(text, module, "exec")
        (path,) = tmp_path.glob(f"numba-cuda-*/{module}.py")
        assert path.read_text() == text
    families = {step.kernel.family for step in executable.steps}
    assert {"conv2d_pointwise", "conv2d_gated", "depthwise_conv2d", "global_avg_pool_small"} <= families
    gated = next(text for name, text in sources.items() if "conv2d_gated" in name)
    assert "gate[gate_at + load_img * gate_batch + k]" in gated and "THREADS = " in gated


def test_stats_describe_the_compile():
    graph, _ = optimize(small_net(), 3)
    executable = numba_cuda.compile(graph)
    stats = executable.stats
    assert stats["launches"] == len(executable.steps) > 0
    assert stats["kernels"] == len({step.kernel.key for step in executable.steps})
    assert stats["simulator"] == numba_cuda.simulating()
    assert stats["arena_bytes"] == memory_plan(graph)["arena_bytes"]
    assert stats["seconds"] > 0


def test_profile_times_every_launch():
    graph = small_net()
    executable = numba_cuda.compile(graph)
    profile = executable.profile(random_inputs(graph), repeat=2)
    assert [entry["node"] for entry in profile] == [step.node for step in executable.steps]
    assert all(entry["seconds"] > 0 for entry in profile)


def test_argument_types_are_what_the_device_arrays_type_as():
    from numba import typeof

    from backends.numba_cuda.templates.common import Arena, Status

    weight = np.zeros((4, 9), np.float32)
    types = numba_cuda.argument_types((Arena.FLOAT, 3, Arena.INT, weight, np.int64(5), Status.ARRAY))
    assert types == (typeof(np.zeros(4, np.float32)), typeof(3), typeof(np.zeros(4, np.int64)), typeof(weight),
                     typeof(5), typeof(np.zeros(1, np.int32)))


@pytest.mark.parametrize("batch", [1, 3])
def test_dense_batches_larger_and_smaller_than_a_warp_chunk(batch):
    assert_same_as_reference(random_op_graph("dense", [(batch, 40)], dict(out_features=9, act="tanh")), numba_cuda)


def test_a_second_compile_in_a_fresh_process_loads_every_kernel_from_the_cache(tmp_path):
    """On a GPU: numba-cuda keeps the compiled kernels beside their sources; the simulator compiles nothing."""
    if numba_cuda.simulating():
        pytest.skip("the simulator compiles nothing")
    script = textwrap.dedent(f"""
        import backends.numba_cuda as numba_cuda
        from tests.backends.cuda.test_executable import small_net
        stats = numba_cuda.compile(small_net(), {{"cache_dir": {str(tmp_path)!r}}}).stats
        print(stats["kernels"], stats["compiled"], stats["from_cache"])
    """)

    def run():
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        return [int(v) for v in result.stdout.split()]

    kernels, compiled, cached = run()
    assert kernels > 0 and compiled == kernels and cached == 0
    kernels, compiled, cached = run()
    assert compiled == 0 and cached == kernels
