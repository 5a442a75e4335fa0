"""dense_to_conv, the lecture's FCN step: VGG-16 gives the same scores at 224x224 and, at 384x384, a 6x6 score
map equal to the original dense layers slid over the 7x7 windows of pool5."""

import numpy as np
import pytest

from backends import reference
from cnncomp.passes.dense_to_conv import dense_to_conv
from cnncomp.pipeline import optimize
from frontends.builder import Builder
from tests.helpers import randomize
from tests.passes.models import assert_same_outputs, op_counts, vgg16

POOL5, LOGITS, SCORES = "max_pool5", "dense3", "softmax1"


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def sliding_dense_layers(graph, pool5: np.ndarray) -> np.ndarray:
    """The original VGG head (FC-4096, ReLU, FC-4096, ReLU, FC-classes) applied to every 7x7 window of pool5 by
    explicit slicing: logits of shape (N, rows, cols, classes)."""
    p = graph.params
    kh, kw = graph.node(POOL5).shape[2:]
    rows, cols = pool5.shape[2] - kh + 1, pool5.shape[3] - kw + 1
    windows = np.stack([np.stack([pool5[:, :, i:i + kh, j:j + kw].reshape(pool5.shape[0], -1)
                                  for j in range(cols)], axis=1) for i in range(rows)], axis=1)
    h = np.maximum(windows @ p["dense1.weight"].T + p["dense1.bias"], 0)
    h = np.maximum(h @ p["dense2.weight"].T + p["dense2.bias"], 0)
    return h @ p["dense3.weight"].T + p["dense3.bias"]


def check_score_map(graph, size: int, expected_cells: int) -> None:
    fcn = dense_to_conv(graph)
    assert op_counts(fcn)["dense"] == 0 and op_counts(fcn)["flatten"] == 0
    kernel = fcn.node("dense1").attrs["kernel"]
    assert kernel == graph.node(POOL5).shape[2:]  # the first FC layer's kernel covers the whole pool5 map
    large = fcn.with_input_shapes({"image": (1, 3, size, size)})
    large.set_outputs([SCORES, LOGITS, POOL5])
    image = np.random.default_rng(2).standard_normal((1, 3, size, size)).astype(np.float32)
    out = reference.run(large, {"image": image})
    assert out[SCORES].shape == (1, 1000, expected_cells, expected_cells)
    expected = sliding_dense_layers(graph, out[POOL5])  # (1, rows, cols, classes)
    logits = out[LOGITS].transpose(0, 2, 3, 1)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(out[SCORES].transpose(0, 2, 3, 1), softmax(expected), rtol=1e-3, atol=1e-6)


@pytest.fixture(scope="module")
def vgg():
    return vgg16()


def test_vgg16_at_224_gives_the_same_scores(vgg):
    fcn = dense_to_conv(vgg)
    assert fcn.node(SCORES).shape == (1, 1000, 1, 1) and vgg.node(SCORES).shape == (1, 1000)
    image = np.random.default_rng(1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    before = reference.run(vgg, {"image": image})[SCORES]
    after = reference.run(fcn, {"image": image})[SCORES]
    np.testing.assert_allclose(after.reshape(before.shape), before, rtol=1e-4, atol=1e-7)


def test_vgg16_at_384_gives_a_6x6_map_of_sliding_window_scores(vgg):
    check_score_map(vgg, 384, 6)


def test_small_vgg_score_map():
    # The same check on VGG-16 built for 64x64 images (pool5 2x2), run at 128x128: a 3x3 score map.
    check_score_map(vgg16(size=64), 128, 3)


def test_runs_first_in_the_pipeline_when_asked():
    graph = randomize(vgg16(size=32))
    result, runs = optimize(graph, 3, fully_convolutional=True)
    assert runs[0].name == "dense_to_conv"
    assert op_counts(result)["dense"] == 0 and op_counts(result)["pointwise_conv2d"] == 3
    image = np.random.default_rng(3).standard_normal((1, 3, 32, 32)).astype(np.float32)
    before = reference.run(graph, {"image": image})[SCORES]
    after = reference.run(result, {"image": image})[SCORES]
    np.testing.assert_allclose(after.reshape(before.shape), before, rtol=1e-4, atol=1e-7)


def test_lenet_head_on_a_1x1_map_and_a_batch_norm_in_the_head():
    b = Builder("lenet_like", batch=2)
    x = b.input("image", (1, 12, 12))
    x = x.conv(4, 5).tanh().avg_pool(2).conv(6, 4).tanh()  # 6 x 1 x 1
    graph = randomize(b.build(x.flatten().dense(8).batch_norm().tanh().dropout().dense(3).softmax(name="out")))
    fcn = dense_to_conv(graph)
    assert op_counts(fcn)["dense"] == 0 and fcn.node("out").shape == (2, 3, 1, 1)
    inputs = {"image": np.random.default_rng(0).standard_normal((2, 1, 12, 12)).astype(np.float32)}
    np.testing.assert_allclose(reference.run(fcn, inputs)["out"].reshape(2, 3), reference.run(graph, inputs)["out"],
                               rtol=1e-5, atol=1e-6)


# ----- preconditions -------------------------------------------------------------------------------------------
def test_a_head_mixing_in_a_flat_value_is_left_alone():
    b = Builder("mixed")
    x = b.input("image", (2, 4, 4))
    extra = b.input("extra", (8,))
    graph = randomize(b.build(x.flatten().dense(8) + extra.dense(8)))
    result = dense_to_conv(graph)
    assert result.to_json() == graph.to_json()
    assert_same_outputs(graph, result)


def test_a_flatten_read_twice_or_of_a_flat_tensor_is_left_alone():
    b = Builder("twice")
    x = b.input("image", (2, 4, 4))
    flat = x.flatten()
    graph = randomize(b.build(flat.dense(3), flat))
    assert dense_to_conv(graph).to_json() == graph.to_json()
    b = Builder("flat")
    x = b.input("features", (12,))
    graph = randomize(b.build(x.flatten().dense(3)))
    assert dense_to_conv(graph).to_json() == graph.to_json()
