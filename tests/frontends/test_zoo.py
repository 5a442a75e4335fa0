"""The zoo: every lecture architecture builds with the published parameter count (PyTorch's convention: batch-norm
scale and shift counted, running statistics not), runs on the reference backend at batch 1 with the output shape it
should have, and reads like the model (node names, blocks). Big models run in the slow suite; every model has a
fast test (its structure and parameter count)."""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from backends import reference
from cnncomp.summary import summarize
from frontends import zoo
from frontends.dsl import parse
from tests.helpers import assert_close, random

# name: (parameters, output shape at batch 1). Counts from the papers' reference implementations (torchvision,
# Keras' Xception, the U-Net paper's network), checked independently where a test below can.
PUBLISHED = {
    "edge_detect": (9, (1, 1, 64, 64)),
    "box_mean": (9, (1, 1, 64, 64)),
    "sharpen": (9, (1, 1, 64, 64)),
    "gaussian_blur": (9, (1, 1, 64, 64)),
    "lenet5": (61_706, (1, 10)),
    "alexnet": (62_378_344, (1, 1000)),
    "vgg11": (132_863_336, (1, 1000)),
    "vgg11_lrn": (132_863_336, (1, 1000)),
    "vgg13": (133_047_848, (1, 1000)),
    "vgg16_c": (133_638_952, (1, 1000)),
    "vgg16": (138_357_544, (1, 1000)),
    "vgg19": (143_667_240, (1, 1000)),
    "resnet18": (11_689_512, (1, 1000)),
    "resnet34": (21_797_672, (1, 1000)),
    "resnet50": (25_557_032, (1, 1000)),
    "resnet101": (44_549_160, (1, 1000)),
    "resnet152": (60_192_808, (1, 1000)),
    "inception_naive": (387_296, (1, 416, 28, 28)),
    "inception": (163_696, (1, 256, 28, 28)),
    "googlenet": (6_998_552, (1, 1000)),
    "xception": (22_855_952, (1, 1000)),
    # FCN has no single published count: VGG-16's 14,714,688 convolution parameters, fc6 and fc7 as convolutions
    # (102,764,544 + 16,781,312), score_fr (86,037), the bias-free upsampling 21x21xKxK and the skip scorers.
    "fcn32s": (136_152_917, (1, 21, 224, 224)),
    "fcn16s": (134_815_994, (1, 21, 224, 224)),
    "fcn8s": (134_489_759, (1, 21, 224, 224)),
    "unet": (31_030_658, (1, 2, 388, 388)),
    "efficientnet_b0": (5_288_548, (1, 1000)),
    "mobilenet_v2": (3_504_872, (1, 1000)),
}
# Cheap enough to run in the fast suite; the rest run with `pytest -m slow`.
FAST_RUNS = ("edge_detect", "box_mean", "sharpen", "gaussian_blur", "lenet5", "inception_naive", "inception",
             "resnet18", "efficientnet_b0", "mobilenet_v2")


def run(graph):
    inputs = {node.name: random(node.shape, seed=1) for node in graph.inputs}
    return reference.run(graph, inputs)


def test_the_zoo_holds_every_lecture_model():
    assert set(zoo.names()) == set(PUBLISHED)
    files = {path.stem for path in zoo.FOLDER.glob("*.cnn")}
    assert files == {zoo.path(name).stem for name in zoo.names()}  # no file left out


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_structure_and_parameter_count(name):
    graph = zoo.load(name, structure_only=True)
    summary = summarize(graph)
    params, shape = PUBLISHED[name]
    assert summary["params"] == params
    assert [tuple(o["shape"]) for o in summary["outputs"]] == [shape]
    assert graph.name == name
    assert zoo.describe(name)


@pytest.mark.parametrize("name", [n for n in PUBLISHED if not zoo.presets(n)])
def test_a_file_names_its_model_after_itself(name):
    header = parse(zoo.path(name).read_text(), str(zoo.path(name))).statements[0]
    assert header.name == zoo.path(name).stem


def check_run(name, **params):
    graph = zoo.load(name, **params)
    outputs = run(graph)
    [output] = graph.outputs
    assert outputs[output].shape == PUBLISHED[name][1]
    assert np.isfinite(outputs[output]).all()
    return outputs[output]


@pytest.mark.parametrize("name", FAST_RUNS)
def test_reference_run_at_batch_1(name):
    check_run(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PUBLISHED if n not in FAST_RUNS])
def test_reference_run_at_batch_1_of_the_big_models(name):
    output = check_run(name)
    if name in ("alexnet", "googlenet", "xception") or name.startswith("vgg"):
        np.testing.assert_allclose(output.sum(axis=1), 1.0, rtol=1e-5)  # soft-max


# ----- fully convolutional models at other sizes ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_at_320x256_has_a_score_per_pixel(name):
    graph = zoo.load(name, structure_only=True, height=320, width=256)
    assert graph.node(graph.outputs[0]).shape == (1, 21, 320, 256)
    assert summarize(graph)["params"] == PUBLISHED[name][0]  # the same weights slide over any size


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_runs_at_320x256(name):
    graph = zoo.load(name, height=320, width=256)
    assert run(graph)["scores"].shape == (1, 21, 320, 256)


def test_unet_at_other_sizes():
    # 188 is the smallest input all the crops fit; the width parameter keeps the run cheap.
    small = zoo.load("unet", size=188, width=8)
    assert run(small)["segmentation"].shape == (1, 2, 4, 4)
    assert zoo.load("unet", structure_only=True, size=252).node("segmentation").shape == (1, 2, 68, 68)


def test_a_wrong_fcn_stride_is_refused():
    from frontends.dsl import DslError

    with pytest.raises(DslError, match="FCN's output stride is 32, 16 or 8"):
        zoo.load("fcn8s", structure_only=True, stride=4)


# ----- the image filters compute the lecture's kernels ---------------------------------------------------------
KERNELS = {
    "edge_detect": np.array([[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]),
    "box_mean": np.ones((3, 3)) / 9,
    "sharpen": np.array([[0, -1, 0], [-1, 5, -1], [0, -1, 0]]),
    "gaussian_blur": np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16,
}


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("channels", [1, 3])
def test_image_filters_apply_their_kernel_to_each_channel(name, channels):
    graph = zoo.load(name, channels=channels, size=9)
    image = random((1, channels, 9, 9))
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))  # "pad, often 0"
    expected = (sliding_window_view(padded, (3, 3), axis=(2, 3)) * KERNELS[name]).sum(axis=(4, 5))
    assert_close(run_with(graph, image), expected, atol=1e-5, rtol=1e-5)


def run_with(graph, image):
    return next(iter(reference.run(graph, {"image": image}).values()))


def test_filters_on_a_flat_image():
    flat = np.full((1, 1, 6, 6), 5.0, np.float32)
    inside = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert_close(run_with(zoo.load("edge_detect", size=6), flat)[inside], np.zeros((1, 1, 4, 4)))
    for name in ("box_mean", "sharpen", "gaussian_blur"):
        assert_close(run_with(zoo.load(name, size=6), flat)[inside], np.full((1, 1, 4, 4), 5.0))


# ----- the models read like their papers ------------------------------------------------------------------------
def test_node_names_and_blocks_read_like_the_models():
    resnet = zoo.load("resnet50", structure_only=True)
    assert resnet.node("layer1.0.conv1").meta["block"] == "layer1.0"
    assert resnet.node("layer3.0.downsample.conv1").attrs["stride"] == (2, 2)
    assert "layer3.1.downsample.conv1" not in resnet  # the identity where the shape is kept
    assert len([n for n in resnet.nodes if n.op == "add"]) == 16
    googlenet = zoo.load("googlenet", structure_only=True)
    assert googlenet.node("inception3a.conv3x3").shape == (1, 128, 28, 28)
    assert googlenet.node("inception5b.output").shape == (1, 1024, 7, 7)
    vgg = zoo.load("vgg16", structure_only=True)
    assert [n.name for n in vgg.nodes if n.op == "conv2d"][-3:] == ["conv5_1", "conv5_2", "conv5_3"]
    assert vgg.node("pool5").shape == (1, 512, 7, 7) and vgg.node("fc8").shape == (1, 1000)
    assert len([n for n in vgg.nodes if n.op in ("conv2d", "dense")]) == 16  # "16 layers that have weights"
    assert len([n for n in zoo.load("vgg19", structure_only=True).nodes if n.op in ("conv2d", "dense")]) == 19
    lrn = zoo.load("vgg11_lrn", structure_only=True)
    assert lrn.node("norm1").inputs == ("relu1_1",)
    xception = zoo.load("xception", structure_only=True)
    separable = [n for n in xception.nodes if n.op == "conv2d" and n.attrs["groups"] > 1]
    assert len(separable) + 2 == 36  # "36 conv layers": the separable ones and the two of the stem
    assert xception.node("block12.add1").shape == (1, 728, 19, 19)
    effnet = zoo.load("efficientnet_b0", structure_only=True)
    assert len([n for n in effnet.nodes if n.op == "mul"]) == 16  # a squeeze-and-excitation per MBConv block


def test_the_lecture_stages_of_each_model():
    """Spatial sizes the lecture and the papers give: AlexNet's 55, 27, 13, 6; LeNet's 28, 14, 10, 5."""
    alexnet = zoo.load("alexnet", structure_only=True)
    assert [alexnet.node(n).shape[2] for n in ("conv1", "pool1", "pool2", "pool5")] == [55, 27, 13, 6]
    lenet = zoo.load("lenet5", structure_only=True)
    assert [lenet.node(n).shape[2] for n in ("c1", "s2", "c3", "s4", "c5")] == [28, 14, 10, 5, 1]
    unet = zoo.load("unet", structure_only=True)
    assert unet.node("bottom.relu2").shape == (1, 1024, 28, 28)
    assert unet.node("up1.upconv1").shape == (1, 64, 392, 392)


def test_parameters_can_be_set_on_zoo_models():
    graph = zoo.load("resnet18", structure_only=True, classes=10)
    assert graph.node("logits").shape == (1, 10)
    assert summarize(graph)["params"] == 11_689_512 - 1000 * 513 + 10 * 513
