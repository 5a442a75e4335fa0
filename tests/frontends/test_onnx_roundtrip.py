"""Every zoo model round-trips through ONNX: exported, imported, the same outputs as the original on the reference
backend, and ONNX Runtime on the exported model gives them too; before passes (where the imported graph is the
original, node for node and name for name) and after -O3 (whose fused and lowered ops export as standard ONNX).

Tolerance: |actual - expected| <= ATOL * max|expected| + RTOL * |expected|, as in the zoo backend tests (float32
sums in another order across up to 150 layers). The fast set runs reduced input sizes where the model allows
(global pooling, fully convolutional) and the small models at full size; every model at full size is in the slow
set (`pytest -m slow`).
"""

import numpy as np
import onnxruntime
import pytest

from backends import reference
from cnncomp.driver import load_model, zoo_models
from cnncomp.pipeline import optimize
from frontends.onnx import import_model
from frontends.onnx.export import to_onnx

ATOL = 1e-4
RTOL = 1e-3

# name, model parameters, input size override (C, H, W) or None, opt levels
FAST = [
    ("edge_detect", {}, None, (0, 3)),
    ("box_mean", {}, None, (0, 3)),
    ("sharpen", {}, None, (0, 3)),
    ("gaussian_blur", {}, None, (0, 3)),
    ("lenet5", {}, None, (0, 3)),
    ("resnet18", {}, (3, 64, 64), (0, 3)),
    ("resnet34", {}, (3, 64, 64), (0,)),
    ("resnet50", {}, (3, 64, 64), (0, 3)),
    ("resnet101", {}, (3, 32, 32), (3,)),
    ("inception_naive", {}, None, (0, 3)),
    ("inception", {}, None, (0, 3)),
    ("xception", {}, (3, 71, 71), (0, 3)),
    ("unet", {}, (1, 188, 188), (0, 3)),
    ("efficientnet_b0", {}, (3, 64, 64), (0, 3)),
    ("mobilenet_v2", {}, (3, 64, 64), (0, 3)),
]
# Their dense layers (or GoogLeNet's 7x7 average pool) fix the input size, and they are too large for the fast set
# at it; the 60M to 134M weights of ResNet-152 and the FCNs take seconds to draw, export and load.
FULL_SIZE_ONLY = ["alexnet", "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19", "googlenet", "resnet152",
                  "fcn32s", "fcn16s", "fcn8s"]
# Ops that come back as another op computing the same function.
RETURNS_AS = {"adaptive_avg_pool2d": "avg_pool2d"}


def test_the_fast_and_slow_sets_cover_the_zoo():
    assert {case[0] for case in FAST} | set(FULL_SIZE_ONLY) == set(zoo_models())


def inputs_of(graph):
    return {n.name: np.random.default_rng(i).standard_normal(n.shape).astype(np.float32)
            for i, n in enumerate(graph.inputs)}


def assert_close(actual, expected, what):
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, atol=ATOL * scale, rtol=RTOL, err_msg=what)


def round_trip(graph, level):
    optimized, _ = optimize(graph, level)
    model = to_onnx(optimized)
    imported = import_model(model, graph.name)
    if level == 0:
        assert [n.name for n in imported.nodes] == [n.name for n in graph.nodes]
        assert [n.op for n in imported.nodes] == [RETURNS_AS.get(n.op, n.op) for n in graph.nodes]
        assert imported.params.keys() == graph.params.keys()
    inputs = inputs_of(graph)
    expected = reference.run(graph, inputs)
    actual = reference.run(imported, inputs)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    by_runtime = dict(zip(graph.outputs, session.run(graph.outputs, inputs), strict=True))
    assert imported.outputs == graph.outputs
    for name in graph.outputs:
        assert_close(actual[name], expected[name], f"{name}: imported graph on the reference backend")
        assert_close(by_runtime[name], expected[name], f"{name}: ONNX Runtime on the exported model")


@pytest.mark.parametrize("name,params,size,level", [(*case[:3], level) for case in FAST for level in case[3]],
                         ids=[f"{case[0]}-O{level}" for case in FAST for level in case[3]])
def test_zoo_model_round_trips(name, params, size, level):
    graph = load_model(name, batch=1, **params)
    if size is not None:
        graph = graph.with_input_shapes({graph.inputs[0].name: (1, *size)})
    round_trip(graph, level)


@pytest.mark.slow
@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("name", list(zoo_models()))
def test_zoo_model_round_trips_at_full_size(name, level):
    round_trip(load_model(name, batch=1), level)


def test_a_batch_of_two_round_trips():
    round_trip(load_model("resnet18", batch=2).with_input_shapes({"image": (2, 3, 64, 64)}), 3)
