"""The CI fuzz job: random valid graphs (tests/fuzz/graphs.py, CI profile) on every in-process backend at every opt
level against the reference backend at -O0, and a few tiny ones on numba-cuda in its simulator; plus the checks
that the strategy reaches every registry op and that the harness finds, reports and shrinks a planted bug.

The job is derandomized (the same graphs on every run, so the Numba kernels it needs come from the kernel cache
after the first run); CNNCOMP_FUZZ_SEED picks other graphs, CNNCOMP_FUZZ_EXAMPLES another count. A failure
writes the (hypothesis-shrunk) graph as a `.cnn` reproducer (tests/fuzz/reproduce.py) and names it.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, assume, given, note, settings
from hypothesis import seed as hypothesis_seed

from backends import torch_eager
from cnncomp.ir import Graph
from tests.fuzz import differential
from tests.fuzz.differential import CUDA, IN_PROCESS, LEVELS, CudaRunner, check, compare, fragile
from tests.fuzz.graphs import CI, MOTIFS, TINY, FuzzCase, fuzz_cases, fuzz_ops
from tests.fuzz.reduce import reduce
from tests.fuzz.reproduce import load_reproducer, replay, write_reproducer
from tests.helpers import random_inputs, randomize

EXAMPLES = int(os.environ.get("CNNCOMP_FUZZ_EXAMPLES", "200"))
CUDA_EXAMPLES = int(os.environ.get("CNNCOMP_FUZZ_CUDA_EXAMPLES", "8"))
SEED = os.environ.get("CNNCOMP_FUZZ_SEED")


def job(examples: int):
    """Settings of a fuzz job: derandomized unless CNNCOMP_FUZZ_SEED is set, no deadline (cold Numba compiles)."""
    chosen = settings(max_examples=examples, deadline=None, database=None, derandomize=SEED is None,
                      suppress_health_check=list(HealthCheck), print_blob=False)

    def decorate(test):
        test = chosen(test)
        return hypothesis_seed(int(SEED))(test) if SEED is not None else test

    return decorate


def assert_agrees(case: FuzzCase, report: differential.Report) -> None:
    if report.mismatches:
        path = write_reproducer(case, report.mismatches[0])
        lines = [m.describe() for m in report.mismatches]
        raise AssertionError("\n".join([*lines, f"reproduce: python tools/fuzz.py --replay {path}"]))


@job(EXAMPLES)
@given(fuzz_cases(CI))
def test_every_backend_at_every_opt_level_agrees_with_the_reference(case):
    note(repr(case))
    inputs = random_inputs(case.graph, case.seed)
    assume(not fragile(case.graph, inputs, case.seed))
    report = check(case, IN_PROCESS, LEVELS, inputs=inputs)
    assert_agrees(case, report)
    assert {backend for backend, _ in report.compared} == set(IN_PROCESS) - {b for b, _ in report.skipped}


@pytest.fixture(scope="module")
def cuda_runner():
    pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install 'cnncomp[cuda]')")
    runner = CudaRunner()
    yield runner
    runner.close()


def test_numba_cuda_in_the_simulator_agrees_with_the_reference_on_tiny_graphs(cuda_runner):
    @job(CUDA_EXAMPLES)
    @given(fuzz_cases(TINY))
    def tiny(case):
        note(repr(case))
        inputs = random_inputs(case.graph, case.seed)
        assume(not fragile(case.graph, inputs, case.seed))
        assert_agrees(case, check(case, [CUDA], LEVELS, cuda=cuda_runner, inputs=inputs))

    tiny()


# ----- the strategy reaches what it should ---------------------------------------------------------------------------
def _generated(count: int, profile=CI) -> list[FuzzCase]:
    cases = []

    @settings(max_examples=count, deadline=None, database=None, derandomize=True, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(fuzz_cases(profile))
    def collect(case):
        cases.append(case)

    collect()
    return cases


def test_the_strategy_makes_every_registry_op():
    made = Counter(node.op for case in _generated(400) for node in case.graph.nodes)
    missing = sorted(set(fuzz_ops()) - set(made))
    assert not missing, f"the fuzz strategy never made {missing}: teach tests/fuzz/graphs.py how to draw them"


def test_the_strategy_makes_the_structures_of_the_lectures_networks():
    cases = _generated(400)
    seen: Counter[str] = Counter()
    for case in cases:
        graph = case.graph
        seen[f"batch {case.batch}"] += 1
        for node in graph.nodes:
            types = [graph.node(i).type for i in node.inputs]
            if node.op == "input" and 1 in node.shape[2:]:
                seen["a 1-pixel side"] += 1
            if node.op == "input" and any(side % 2 for side in node.shape[2:]):
                seen["an odd side"] += 1
            if node.op == "add" and types[0] == types[1]:
                seen["a residual add"] += 1
            if node.op == "concat" and len(node.inputs) >= 2:
                seen["a concat of branches"] += 1
            if node.op == "conv2d" and node.attrs["groups"] == types[0].channels > 1:
                seen["a depthwise conv"] += 1
            if node.op == "mul" and any(t.shape[2:] == (1, 1) for t in types) and node.type.shape[2:] != (1, 1):
                seen["a per-channel gate"] += 1
            if node.op == "batch_norm":
                seen["a batch norm"] += 1
            if node.op == "max_unpool2d":
                seen["an unpooling"] += 1
        if graph.outputs and any(graph.consumers(o) for o in graph.outputs):
            seen["an output that is also read"] += 1
    wanted = ["batch 1", "batch 2", "batch 3", "a 1-pixel side", "an odd side", "a residual add",
              "a concat of branches", "a depthwise conv", "a per-channel gate", "a batch norm", "an unpooling",
              "an output that is also read"]
    assert [w for w in wanted if seen[w] < 5] == [], seen
    assert len(MOTIFS) == 8


def test_batch_norms_get_statistics_that_are_not_the_identity():
    graph = Graph("fuzz")
    graph.add_node("x0", "input", attrs={"shape": (1, 4, 3, 3)})
    graph.add_node("bn", "batch_norm", ["x0"])
    graph.set_outputs(["bn"])
    params = randomize(graph, 3).node_params("bn")
    assert np.all(params["running_var"] >= 0.5) and np.abs(params["running_mean"]).max() > 0.1
    assert np.abs(params["weight"] - 1).max() > 0.05 and np.abs(params["bias"]).max() > 0.05


# ----- the harness finds, reports and shrinks a bug ------------------------------------------------------------------
def sigmoid_chain() -> FuzzCase:
    graph = Graph("fuzz")
    graph.add_node("x0", "input", attrs={"shape": (2, 3, 5, 5)})
    graph.add_node("n1", "conv2d", ["x0"], {"out_channels": 4, "kernel": 3, "padding": "same"})
    graph.add_node("n2", "batch_norm", ["n1"])
    graph.add_node("n3", "relu", ["n2"])
    graph.add_node("n4", "max_pool2d", ["n3"], {"kernel": 2, "ceil_mode": True})
    graph.add_node("n5", "sigmoid", ["n4"])
    graph.add_node("n6", "global_avg_pool", ["n5"])
    graph.add_node("n7", "flatten", ["n6"])
    graph.add_node("n8", "dense", ["n7"], {"out_features": 3})
    graph.set_outputs(["n8"])
    return FuzzCase(randomize(graph, 11, shared_constants=True), 11)


@pytest.fixture
def torch_sigmoid_is_tanh(monkeypatch):
    """A planted bug: the torch backend computes sigmoid as tanh."""
    monkeypatch.setitem(torch_eager.RULES, "sigmoid", ("sigmoid", lambda e, node, ops, p: e.torch.tanh(ops[0])))


def test_a_planted_bug_is_found_written_replayed_and_shrunk(torch_sigmoid_is_tanh, tmp_path):
    case = sigmoid_chain()
    report = check(case, ["reference", "torch"], LEVELS)
    assert {(m.backend, m.level) for m in report.mismatches} == {("torch", level) for level in LEVELS}
    assert all(m.output == "n8" and "values off" in m.detail for m in report.mismatches)

    path = write_reproducer(case, report.mismatches[0], tmp_path)
    assert path.read_text().splitlines()[:3] == [
        "# fuzz: seed=11 batch=2 backend=torch level=0", f"# {report.mismatches[0].describe()}",
        f"# reproduce: python tools/fuzz.py --replay {path}"]
    again, backend, level = load_reproducer(path)
    assert (backend, level) == ("torch", 0) and again.graph.to_json() == case.graph.to_json()
    for key, value in case.graph.params.items():
        np.testing.assert_array_equal(again.graph.params[key], value)
    assert replay(path).mismatches

    small = reduce(case, lambda c: bool(check(c, ["torch"], [0]).mismatches), seconds=60)
    assert [node.op for node in small.graph.nodes] == ["input", "sigmoid"]


def test_without_the_planted_bug_the_same_graph_agrees():
    assert not check(sigmoid_chain(), IN_PROCESS, LEVELS).mismatches


def test_a_backend_that_raises_on_a_valid_graph_is_a_mismatch(monkeypatch):
    def broken(graph, options=None):
        raise RuntimeError("kernel exploded")

    monkeypatch.setattr(torch_eager, "compile", broken)
    report = check(sigmoid_chain(), ["torch"], [2])
    assert [m.describe() for m in report.mismatches] == ["torch -O2: raised RuntimeError: kernel exploded"]


# ----- tolerances and near-ties --------------------------------------------------------------------------------------
def test_compare_uses_atol_scaled_by_the_output_and_rtol():
    expected = np.array([0.0, 10.0, -3.0], np.float32)
    scale = 1 + 10.0
    assert compare(expected + np.float32(differential.ATOL * scale * 0.9), expected) is None
    assert "1 of 3 values off; worst at [0]" in compare(expected + np.array([differential.ATOL * scale * 1.5, 0, 0],
                                                                            np.float32), expected)
    assert compare(np.array([0.0, 10.0 * (1 + differential.RTOL), -3.0], np.float32), expected) is None


def test_compare_wants_nan_where_the_reference_has_nan_and_equal_infinities():
    expected = np.array([np.nan, np.inf, -np.inf, 1.0], np.float32)
    assert compare(expected.copy(), expected) is None
    assert compare(np.array([0.0, np.inf, -np.inf, 1.0], np.float32), expected) is not None
    assert compare(np.array([np.nan, -np.inf, -np.inf, 1.0], np.float32), expected) is not None
    assert compare(np.array([np.nan, np.inf, -np.inf, np.nan], np.float32), expected) is not None


def test_compare_wants_shapes_dtypes_and_integers_exact():
    assert "gave float32[3], expected float32[1, 3]" in compare(np.zeros(3, np.float32), np.zeros((1, 3), np.float32))
    assert "1 of 2 values differ" in compare(np.array([1, 3]), np.array([1, 2]))


def pool_indices_graph() -> Graph:
    graph = Graph("fuzz")
    graph.add_node("x0", "input", attrs={"shape": (1, 1, 2, 2)})
    graph.add_node("n1", "max_pool2d_indices", ["x0"], {"kernel": 2})
    graph.set_outputs(["n1"])
    return graph


def test_a_near_tie_in_a_max_pool_window_is_fragile_and_an_exact_or_clear_one_is_not():
    graph = pool_indices_graph()
    near = np.array([1.0, 1.0 + 1e-6, -1.0, 0.0], np.float32).reshape(1, 1, 2, 2)
    exact = np.array([0.0, 0.0, -1.0, -2.0], np.float32).reshape(1, 1, 2, 2)
    clear = np.array([1.0, 2.0, -1.0, 0.0], np.float32).reshape(1, 1, 2, 2)
    assert fragile(graph, {"x0": near}, 0)
    assert not fragile(graph, {"x0": exact}, 0)
    assert not fragile(graph, {"x0": clear}, 0)


def test_inputs_whose_maxima_fall_outside_a_smaller_unpooling_plane_are_discarded():
    graph = Graph("fuzz")
    graph.add_node("x0", "input", attrs={"shape": (1, 1, 2, 2)})
    graph.add_node("n1", "max_pool2d", ["x0"], {"kernel": 2})
    graph.add_node("n2", "max_pool2d_indices", ["x0"], {"kernel": 2})
    graph.add_node("n3", "max_unpool2d", ["n1", "n2"], {"kernel": 2, "output_size": (1, 2)})
    graph.set_outputs(["n3"])
    inside = np.array([1.0, 0.0, -1.0, -2.0], np.float32).reshape(1, 1, 2, 2)  # the maximum at flat index 0
    outside = np.array([0.0, 0.0, 1.0, -2.0], np.float32).reshape(1, 1, 2, 2)  # at 2, past the 1x2 plane
    assert not fragile(graph, {"x0": inside}, 0)
    assert fragile(graph, {"x0": outside}, 0)


def test_the_ci_backends_are_the_in_process_ones():
    assert IN_PROCESS == ("reference", "numba-cpu", "torch", "onnxruntime") and CUDA == "numba-cuda"
    assert LEVELS == (0, 1, 2, 3)
