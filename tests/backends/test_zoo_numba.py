"""Every zoo model on numba-cpu at -O0 and -O3 gives the reference backend's outputs.

Tolerance: |numba - reference| <= ATOL * max|reference| + RTOL * |reference| per output, float32 sums taken in
another order (BLAS blocking, Winograd transforms) across up to 150 layers. The fast set runs in CI on reduced
input sizes where the model allows (global pooling, fully convolutional); every model at its full size is in
the slow set (`pytest -m slow`).
"""

import numpy as np
import pytest

import backends.numba_cpu as numba_cpu
from backends import reference
from cnncomp.driver import load_model
from cnncomp.pipeline import optimize

ATOL = 1e-4
RTOL = 1e-3

# name, model parameters, input size override (C, H, W) or None, batch
FAST = [
    ("lenet5", {}, None, 2),
    ("edge_detect", {}, None, 1),
    ("gaussian_blur", {}, None, 2),
    ("inception_naive", {}, None, 1),
    ("inception", {}, None, 2),
    ("resnet18", {}, (3, 64, 64), 2),
    ("resnet50", {}, (3, 64, 64), 1),
    ("efficientnet_b0", {}, (3, 64, 64), 1),
    ("mobilenet_v2", {}, (3, 64, 64), 1),
    ("xception", {}, (3, 71, 71), 1),
    ("fcn8s", {"height": 64, "width": 96}, None, 1),
    ("unet", {}, (1, 188, 188), 1),
]
SLOW = [
    "lenet5", "alexnet", "vgg11", "vgg11_lrn", "vgg13", "vgg16_c", "vgg16", "vgg19", "resnet18", "resnet34",
    "resnet50", "resnet101", "resnet152", "inception_naive", "inception", "googlenet", "xception", "fcn32s",
    "fcn16s", "fcn8s", "unet", "efficientnet_b0", "mobilenet_v2",
]


def check(graph, level):
    optimized, _ = optimize(graph, level)
    inputs = {n.name: np.random.default_rng(i).standard_normal(n.shape).astype(np.float32)
              for i, n in enumerate(graph.inputs)}
    expected = reference.run(graph, inputs)
    actual = numba_cpu.compile(optimized)(inputs)
    for name in graph.outputs:
        scale = float(np.abs(expected[name]).max())
        np.testing.assert_allclose(actual[name], expected[name], atol=ATOL * scale, rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("name,params,size,batch", FAST, ids=[case[0] for case in FAST])
def test_zoo_model_at_reduced_size(name, params, size, batch, level):
    graph = load_model(name, batch=batch, **params)
    if size is not None:
        graph = graph.with_input_shapes({graph.inputs[0].name: (batch, *size)})
    check(graph, level)


@pytest.mark.slow
@pytest.mark.parametrize("level", [0, 3])
@pytest.mark.parametrize("name", SLOW)
def test_zoo_model_at_full_size(name, level):
    check(load_model(name, batch=1), level)


@pytest.mark.slow
@pytest.mark.parametrize("name,params", [("fcn8s", {"height": 320, "width": 256}), ("fcn32s", {"height": 256,
                                                                                                   "width": 320})])
def test_fcn_at_another_input_size(name, params):
    check(load_model(name, batch=1, **params), 3)


@pytest.mark.slow
def test_unet_at_another_input_size():
    graph = load_model("unet", batch=1)
    check(graph.with_input_shapes({graph.inputs[0].name: (1, 1, 252, 252)}), 3)
