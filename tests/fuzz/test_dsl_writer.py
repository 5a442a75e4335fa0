"""The `.cnn` writer (frontends/dsl/writer.py): every graph the fuzzer makes, before and after the passes, is
written as text that the language reads back into the same graph."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.pipeline import optimize
from frontends.dsl import build_from_source
from frontends.dsl.writer import write
from tests.fuzz.graphs import CI, WIDE, fuzz_cases
from tests.helpers import randomize


def quick(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck))


def structure(graph: Graph) -> dict:
    """Nodes, attributes, operands and outputs, without annotations (meta) the text does not carry."""
    data = json.loads(graph.to_json())
    data.pop("meta", None)
    for node in data["nodes"]:
        node.pop("meta", None)
    return data


def read_back(graph: Graph) -> Graph:
    return build_from_source(write(graph), "written.cnn", initialize=False, batch=graph.inputs[0].shape[0])


@quick(150)
@given(fuzz_cases(CI))
def test_fuzz_graphs_read_back_the_same(case):
    assert structure(read_back(case.graph)) == structure(case.graph)


@quick(100)
@given(fuzz_cases(WIDE))
def test_optimized_graphs_with_lowered_and_fused_ops_read_back_the_same(case):
    optimized, _ = optimize(case.graph, 3)
    assert structure(read_back(optimized)) == structure(optimized)


def test_parameters_saved_beside_the_text_load_into_the_graph_read_back(tmp_path):
    graph = Graph("pair")
    graph.add_node("x", "input", attrs={"shape": (2, 3, 5, 5)})
    graph.add_node("c", "constant", attrs={"shape": (2, 3, 1, 1)})
    graph.add_node("y", "conv2d", ["x"], {"out_channels": 3, "kernel": 3, "padding": "same", "affine": True,
                                          "act": "leaky_relu", "alpha": 0.2})
    graph.add_node("z", "pointwise_conv2d", ["y", "c", "x"], {"out_channels": 3, "gate": True, "residual": True})
    graph.set_outputs(["z"])
    randomize(graph, 7)
    graph.save_params(tmp_path / "pair.npz")
    text = write(graph)
    assert "y = conv(x, out_channels=3, kernel=3, padding=1, act=\"leaky_relu\", affine=true, alpha=0.2) as y" in text
    assert "output z = pointwise_conv2d(y, out_channels=3, gate=c, residual=x)" in text
    again = build_from_source(text, batch=2)
    again.load_params(tmp_path / "pair.npz")
    assert structure(again) == structure(graph)
    for key, value in graph.params.items():
        np.testing.assert_array_equal(again.params[key], value)


@pytest.mark.parametrize("name,what", [("layer1.conv", "the node name"), ("relu", "the node name"),
                                       ("as", "the node name")])
def test_names_the_language_cannot_hold_are_refused(name, what):
    graph = Graph("m")
    graph.add_node("x", "input", attrs={"shape": (1, 2, 3, 3)})
    graph.add_node(name, "relu", ["x"])
    graph.set_outputs([name])
    with pytest.raises(GraphError, match=f"cannot write {what} '{name}' in a model description"):
        write(graph)
