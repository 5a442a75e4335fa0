"""Models built here in PyTorch, exported with torch.onnx (the TorchScript exporter: the dynamo one needs
onnxscript), imported, and run on every backend at -O0 and -O3: the outputs match PyTorch's (atol and rtol
1e-4). A ResNet basic and bottleneck stage, an inception module, an MBConv with squeeze-and-excitation, a
depthwise-separable stack, a U-Net level with ConvTranspose and crop, upsampling in every mode torch exports,
and heads and blocks covering the other converters; across opsets 9 to 20, with and without the exporter's
constant folding (which folds batch norms into convs). numba-cuda runs them in its simulator in the slow set
(`pytest -m slow`): minutes per block."""

import io
import warnings

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnncomp import plugins
from cnncomp.errors import ModelLoadError
from cnncomp.pipeline import optimize
from frontends.onnx import import_model

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}
OPSET = 17


# numba-cuda runs in its simulator without a GPU, minutes per block: its runs are in the slow set.
BACKENDS = ["reference", "numba-cpu"]


@pytest.fixture
def cuda_backend():
    """numba-cuda, in its simulator unless NUMBA_ENABLE_CUDASIM=0 (as tests/backends/cuda sets it up)."""
    import importlib.util
    import os

    if importlib.util.find_spec("numba_cuda") is None or "numba-cuda" not in plugins.available(plugins.BACKENDS):
        pytest.skip("numba-cuda is not installed")
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    from numba.core import config

    config.reload_config()
    return "numba-cuda"


def randomize(module: nn.Module, seed: int = 1) -> nn.Module:
    """Batch norms far from the identity (statistics and affine), so a mistake in them shows."""
    generator = torch.Generator().manual_seed(seed)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            with torch.no_grad():
                sub.running_mean.uniform_(-0.5, 0.5, generator=generator)
                sub.running_var.uniform_(0.5, 2.0, generator=generator)
                sub.weight.uniform_(0.5, 1.5, generator=generator)
                sub.bias.uniform_(-0.5, 0.5, generator=generator)
    return module.eval()


def to_onnx(module: nn.Module, shape: tuple[int, ...], opset: int = OPSET, **options) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(shape),), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          **options)
    return onnx.load_from_string(buffer.getvalue())


def torch_output(module: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def check(module: nn.Module, shape: tuple[int, ...], opset: int = OPSET, backends=("reference",), levels=(0,),
          batch: int = 2, **options) -> None:
    """Export at batch 1 with a symbolic batch axis, import, run at `batch` on each backend and level."""
    torch.manual_seed(0)
    module = randomize(module)
    graph = import_model(to_onnx(module, shape, opset, **options)).with_batch(batch)
    x = np.random.default_rng(3).standard_normal((batch, *shape[1:])).astype(np.float32)
    expected = torch_output(module, x)
    for level in levels:
        optimized, _ = optimize(graph, level)
        for backend in backends:
            actual = plugins.backend(backend).compile(optimized)({"x": x})["y"]
            np.testing.assert_allclose(actual, expected, **TOLERANCE, err_msg=f"{backend} at -O{level}")


# ----- the blocks of the issue --------------------------------------------------------------------------------
class BasicBlock(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, width: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, width * 4, 1, bias=False), nn.BatchNorm2d(width * 4)
        self.downsample = None
        if stride != 1 or inplanes != width * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, width * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(width * 4))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def basic_stage() -> nn.Module:
    return nn.Sequential(BasicBlock(8, 16, 2), BasicBlock(16, 16))


def bottleneck_stage() -> nn.Module:
    return nn.Sequential(Bottleneck(16, 8, 2), Bottleneck(32, 8))


class Inception(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.b1 = nn.Conv2d(16, 8, 1)
        self.b2 = nn.Sequential(nn.Conv2d(16, 6, 1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1))
        self.b3 = nn.Sequential(nn.Conv2d(16, 4, 1), nn.ReLU(), nn.Conv2d(4, 6, 5, padding=2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(16, 4, 1))

    def forward(self, x):
        return torch.cat([F.relu(self.b1(x)), F.relu(self.b2(x)), F.relu(self.b3(x)), F.relu(self.b4(x))], 1)


class MBConv(nn.Module):
    """EfficientNet's block: expand, depthwise, squeeze-and-excitation, project, residual."""

    def __init__(self, channels: int = 16, expand: int = 4) -> None:
        super().__init__()
        mid = channels * expand
        self.expand = nn.Sequential(nn.Conv2d(channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.SiLU())
        self.depthwise = nn.Sequential(nn.Conv2d(mid, mid, 3, padding=1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                       nn.SiLU())
        self.se_reduce, self.se_expand = nn.Conv2d(mid, 4, 1), nn.Conv2d(4, mid, 1)
        self.project = nn.Sequential(nn.Conv2d(mid, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x):
        y = self.depthwise(self.expand(x))
        gate = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(y, 1)))))
        return self.project(y * gate) + x


class SeparableStack(nn.Module):
    """Xception's entry-flow block: relu, separable conv, bn, twice, a strided max pool, and a 1x1 projection."""

    def __init__(self, cin: int = 8, cout: int = 16) -> None:
        super().__init__()
        self.dw1, self.pw1 = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1,
                                                                                                  bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.dw2, self.pw2 = nn.Conv2d(cout, cout, 3, padding=1, groups=cout, bias=False), nn.Conv2d(cout, cout, 1,
                                                                                                     bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip, self.skip_bn = nn.Conv2d(cin, cout, 1, stride=2, bias=False), nn.BatchNorm2d(cout)

    def forward(self, x):
        y = self.bn1(self.pw1(self.dw1(F.relu(x))))
        y = self.bn2(self.pw2(self.dw2(F.relu(y))))
        return F.max_pool2d(y, 3, 2, 1) + self.skip_bn(self.skip(x))


class UNetLevel(nn.Module):
    """Two valid convs, a pool, a conv, an up-convolution, the encoder's features center-cropped to it, concat."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(2, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU())
        self.down = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        skip = self.enc(x)
        up = self.up(self.down(skip))
        dh, dw = skip.shape[2] - up.shape[2], skip.shape[3] - up.shape[3]
        cropped = skip[:, :, dh // 2: dh // 2 + up.shape[2], dw // 2: dw // 2 + up.shape[3]]
        return self.out(torch.cat([cropped, up], 1))


ISSUE_BLOCKS = {
    "basic_stage": (basic_stage, (1, 8, 12, 12)),
    "bottleneck_stage": (bottleneck_stage, (1, 16, 10, 10)),
    "inception": (Inception, (1, 16, 9, 9)),
    "mbconv_se": (MBConv, (1, 16, 10, 10)),
    "separable_stack": (SeparableStack, (1, 8, 12, 12)),
    "unet_level": (UNetLevel, (1, 2, 21, 20)),
}


@pytest.mark.parametrize("name", list(ISSUE_BLOCKS))
def test_issue_blocks_on_every_backend_at_O0_and_O3(name):
    build, shape = ISSUE_BLOCKS[name]
    check(build(), shape, backends=BACKENDS, levels=(0, 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ISSUE_BLOCKS))
def test_issue_blocks_on_numba_cuda_at_O0_and_O3(name, cuda_backend):
    build, shape = ISSUE_BLOCKS[name]
    check(build(), shape, backends=(cuda_backend,), levels=(0, 3))


@pytest.mark.parametrize("opset", [10, 11, 13, 20])  # torch exports the U-Net crop from opset 10
@pytest.mark.parametrize("name", list(ISSUE_BLOCKS))
def test_issue_blocks_across_opsets(name, opset):
    build, shape = ISSUE_BLOCKS[name]
    check(build(), shape, opset)


@pytest.mark.parametrize("name", list(ISSUE_BLOCKS))
def test_issue_blocks_without_the_exporters_constant_folding(name):
    """Batch norms stay BatchNormalization nodes, shape computations stay unfolded."""
    build, shape = ISSUE_BLOCKS[name]
    check(build(), shape, do_constant_folding=False)


def test_the_unet_crop_is_a_crop_and_bn_folding_leaves_no_batch_norm():
    graph = import_model(to_onnx(randomize(UNetLevel()), (1, 2, 21, 20)))
    ops = [node.op for node in graph.nodes]
    assert ops.count("crop") == 1 and ops.count("conv_transpose2d") == 1 and "batch_norm" not in ops
    unfolded = import_model(to_onnx(randomize(MBConv()), (1, 16, 10, 10), do_constant_folding=False))
    assert [node.op for node in unfolded.nodes].count("batch_norm") == 3
    assert [node.op for node in unfolded.nodes].count("silu") == 3  # x * sigmoid(x) becomes silu


# ----- upsampling in every mode torch exports -----------------------------------------------------------------
class Upsampling(nn.Module):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.kwargs = kwargs
        self.before, self.after = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.after(F.interpolate(self.before(x), **self.kwargs))


UPSAMPLING = [
    {"mode": "nearest", "scale_factor": 2},
    {"mode": "nearest", "scale_factor": (1.5, 3)},
    {"mode": "nearest", "scale_factor": 0.5},
    {"mode": "nearest", "size": (11, 7)},
    {"mode": "bilinear", "scale_factor": 2, "align_corners": False},
    {"mode": "bilinear", "scale_factor": (1.5, 2), "align_corners": True},  # whole lengths (onnx/onnx#2462)
    {"mode": "bilinear", "size": (9, 13), "align_corners": False},
    {"mode": "bilinear", "size": (9, 13), "align_corners": True},
    {"mode": "bicubic", "scale_factor": 2, "align_corners": False},
    {"mode": "bicubic", "scale_factor": (1.5, 2), "align_corners": True},  # whole lengths (onnx/onnx#2462)
    {"mode": "bicubic", "size": (3, 11), "align_corners": False},
    {"mode": "bicubic", "size": (9, 13), "align_corners": True},
]


@pytest.mark.parametrize("kwargs", UPSAMPLING, ids=[str(k) for k in UPSAMPLING])
def test_upsampling_modes_on_every_backend(kwargs):
    check(Upsampling(**kwargs), (1, 3, 6, 5), backends=BACKENDS, levels=(0, 3))


@pytest.mark.slow
@pytest.mark.parametrize("kwargs", UPSAMPLING, ids=[str(k) for k in UPSAMPLING])
def test_upsampling_modes_on_numba_cuda(kwargs, cuda_backend):
    check(Upsampling(**kwargs), (1, 3, 6, 5), backends=(cuda_backend,), levels=(0, 3))


@pytest.mark.parametrize("opset", [11, 13, 18, 20])
@pytest.mark.parametrize("kwargs", UPSAMPLING, ids=[str(k) for k in UPSAMPLING])
def test_upsampling_modes_across_opsets(kwargs, opset):
    check(Upsampling(**kwargs), (1, 3, 6, 5), opset)


def test_upsampling_nearest_at_opsets_9_and_10():
    """Upsample (opset 9) and Resize (opset 10) have asymmetric coordinates; nearest enlarges by floor."""
    for opset in (9, 10):
        check(Upsampling(mode="nearest", scale_factor=2), (1, 3, 6, 5), opset)


def test_linear_upsampling_at_opset_9_is_refused_not_approximated():
    """Opset 9's Upsample has no half-pixel coordinates: its linear mode is not PyTorch's bilinear (torch warns),
    and not our upsample either."""
    model = to_onnx(randomize(Upsampling(mode="bilinear", scale_factor=2)), (1, 3, 6, 5), 9)
    with pytest.raises(ModelLoadError, match=r"Upsample '.*': Resize \(mode=linear, coordinate_transformation_mode="
                                             r"asymmetric\) of 6x5 to 12x10 weighs other input pixels"):
        import_model(model)


def test_align_corners_by_a_scale_giving_no_whole_length_is_refused():
    """PyTorch's 5 pixels x 1.5 = 7 (floored) divides by 6, ONNX's definition by 7.5 - 1 (onnx/onnx#2462): the
    exported file means two things, so it is refused, not imported as one of them."""
    model = to_onnx(randomize(Upsampling(mode="bilinear", scale_factor=1.5, align_corners=True)), (1, 3, 6, 5))
    with pytest.raises(ModelLoadError, match=r"by the scale 1.5 of 5 pixels along the width: .* length_resized = 7.5 "
                                             r".*onnx/onnx#2462.*give `sizes` instead"):
        import_model(model)


# ----- channel slices: DPN's dual path (Slice) and Res2Net's scales (Split) -------------------------------------
class DualPath(nn.Module):
    """DPN's block: the input's first 16 channels are the residual path (added to the convs' first 16), the other
    8 the dense path (concatenated with the convs' last 8)."""

    def __init__(self, residual: int = 16, dense: int = 8, width: int = 16) -> None:
        super().__init__()
        self.residual = residual
        self.conv1, self.bn1 = nn.Conv2d(residual + dense, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, 1, 1, groups=4, bias=False), nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, residual + dense, 1, bias=False)

    def forward(self, x):
        y = self.conv3(F.relu(self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))))
        r = self.residual
        return F.relu(torch.cat([x[:, :r] + y[:, :r], x[:, r:], y[:, r:]], 1))


class Res2Net(nn.Module):
    """Res2Net's block: a 1x1 conv's channels split into 4 scales; each scale but the first is added to the previous
    scale's output before its 3x3 conv; the last passes through; concatenated, a 1x1 conv and the residual."""

    def __init__(self, channels: int = 8, width: int = 6, scales: int = 4) -> None:
        super().__init__()
        self.width = width
        self.conv1, self.bn1 = nn.Conv2d(channels, width * scales, 1, bias=False), nn.BatchNorm2d(width * scales)
        self.convs = nn.ModuleList(nn.Conv2d(width, width, 3, 1, 1, bias=False) for _ in range(scales - 1))
        self.bns = nn.ModuleList(nn.BatchNorm2d(width) for _ in range(scales - 1))
        self.conv3, self.bn3 = nn.Conv2d(width * scales, channels, 1, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x):
        parts = torch.split(F.relu(self.bn1(self.conv1(x))), self.width, 1)
        outputs = []
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns, strict=True)):
            outputs.append(F.relu(bn(conv(parts[i] if i == 0 else parts[i] + outputs[-1]))))
        return F.relu(self.bn3(self.conv3(torch.cat([*outputs, parts[-1]], 1))) + x)


SLICE_BLOCKS = {"dual_path": (DualPath, (1, 24, 7, 6)), "res2net": (Res2Net, (1, 8, 6, 5))}


@pytest.mark.parametrize("name", list(SLICE_BLOCKS))
def test_dual_path_and_res2net_on_every_backend_at_O0_and_O3(name):
    """At batch 2: the slices are views whose samples lie apart (their input's batch stride)."""
    build, shape = SLICE_BLOCKS[name]
    check(build(), shape, backends=BACKENDS, levels=(0, 3))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLICE_BLOCKS))
def test_dual_path_and_res2net_on_numba_cuda_at_O0_and_O3(name, cuda_backend):
    build, shape = SLICE_BLOCKS[name]
    check(build(), shape, backends=(cuda_backend,), levels=(0, 3))


@pytest.mark.parametrize("opset", [9, 11, 13, 18])  # Slice's bounds and Split's lengths: attributes, then inputs
@pytest.mark.parametrize("name", list(SLICE_BLOCKS))
def test_dual_path_and_res2net_across_opsets(name, opset):
    build, shape = SLICE_BLOCKS[name]
    check(build(), shape, opset)


@pytest.mark.parametrize("name", list(SLICE_BLOCKS))
def test_dual_path_and_res2net_agree_with_onnxruntime(name):
    build, shape = SLICE_BLOCKS[name]
    model = to_onnx(randomize(build()), shape)
    graph = import_model(model).with_batch(2)
    assert sum(node.op == "channel_slice" for node in graph.nodes) == 4
    x = np.random.default_rng(3).standard_normal((2, *shape[1:])).astype(np.float32)
    expected = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    actual = plugins.backend("numba-cpu").compile(optimize(graph, 3)[0])({"x": x})["y"]
    np.testing.assert_allclose(actual, expected, **TOLERANCE)


# ----- heads and blocks for the other converters ---------------------------------------------------------------
class Classifier(nn.Module):
    """AlexNet-style: ceil-mode max pool, view(N, -1) (a Shape/Gather/Unsqueeze/Concat/Reshape chain), dropout,
    softmax. (torch exports LocalResponseNorm as 5-D pooling, not as ONNX's LRN.)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 4, 20), nn.Linear(20, 5)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        y = F.max_pool2d(F.relu(self.conv(x)), 3, 2, ceil_mode=True)
        y = y.view(y.size(0), -1)
        return F.softmax(self.fc2(self.drop(F.relu(self.fc1(y)))), dim=1)


class MobileHead(nn.Module):
    """MobileNetV3's pieces: hardswish, relu6, a hard-sigmoid gate, average pooling over padding, leaky relu."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU6(), nn.Conv2d(4, 8, 1),
                                nn.Hardsigmoid())
        self.pool = nn.AvgPool2d(3, 2, 1, count_include_pad=False)
        self.pool_with_pad = nn.AvgPool2d(3, 2, 1, ceil_mode=True)

    def forward(self, x):
        y = F.hardswish(self.conv(x))
        y = F.relu6(self.dw(y))
        y = y * self.se(y)
        return F.leaky_relu(self.pool(y) + self.pool_with_pad(y), 0.2)


class Padding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3)

    def forward(self, x):
        y = self.conv1(F.pad(x, (1, 2, 0, 1), mode="reflect"))
        y = self.conv2(F.pad(F.relu(y), (1, 1, 2, 0), mode="replicate"))
        return torch.tanh(F.pad(y, (2, 0, 1, 1))) * 2 - torch.sigmoid(y).mean(dim=(2, 3), keepdim=True)


class GlobalHead(nn.Module):
    """Global pooling as ReduceMean without keepdims, a flatten by reshape, a per-channel scale and shift."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 6).reshape(1, 6, 1, 1))
        self.register_buffer("shift", torch.linspace(-1.0, 1.0, 6).reshape(6, 1, 1))
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = (self.conv(x) - self.shift) / self.scale + 0.5
        return self.fc(y.mean(dim=(2, 3)) + torch.amax(y, dim=(2, 3)))


OTHER_BLOCKS = {
    "classifier": (Classifier, (1, 3, 19, 19)),
    "mobile_head": (MobileHead, (1, 3, 11, 11)),
    "padding": (Padding, (1, 3, 8, 9)),
    "global_head": (GlobalHead, (1, 3, 8, 8)),
}


@pytest.mark.parametrize("opset", [9, 11, 13, 17, 20])
@pytest.mark.parametrize("name", list(OTHER_BLOCKS))
def test_other_blocks_across_opsets(name, opset):
    build, shape = OTHER_BLOCKS[name]
    check(build(), shape, opset, levels=(0, 3))


@pytest.mark.parametrize("name", list(OTHER_BLOCKS))
def test_other_blocks_on_every_backend(name):
    build, shape = OTHER_BLOCKS[name]
    check(build(), shape, backends=BACKENDS, levels=(0, 3))
