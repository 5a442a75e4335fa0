"""Blocks written in the .cnn language give the outputs of the same blocks written in PyTorch with the same
weights: a residual block, a bottleneck, an inception module, an MBConv block with squeeze-and-excitation, a U-Net
level and an Xception entry block; and the zoo's ResNets against a torchvision-style ResNet."""

import pytest
import torch
from torch import nn

from backends import reference
from cnncomp.ir import Graph
from frontends import zoo
from frontends.dsl import build_from_source
from tests.helpers import assert_close, random

TOLERANCE = {"atol": 1e-4, "rtol": 1e-4}


def randomize_batch_norms(module: nn.Module) -> None:
    """Batch norms with statistics and affine parameters far from the identity, so a mistake shows."""
    generator = torch.Generator().manual_seed(1)
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            with torch.no_grad():
                sub.running_mean.uniform_(-0.5, 0.5, generator=generator)
                sub.running_var.uniform_(0.5, 2.0, generator=generator)
                sub.weight.uniform_(0.5, 1.5, generator=generator)
                sub.bias.uniform_(-0.5, 0.5, generator=generator)


def copy_weights(graph: Graph, module: nn.Module, prefix: str = "", rename=lambda name: name) -> None:
    """Give each weighted node of the graph the weights of the PyTorch module of the same name; every weighted
    node must get them."""
    copied = set()
    for name, sub in module.named_modules():
        if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            params = {"weight": sub.weight, **({"bias": sub.bias} if sub.bias is not None else {})}
        elif isinstance(sub, nn.BatchNorm2d):
            params = {"weight": sub.weight, "bias": sub.bias, "running_mean": sub.running_mean,
                      "running_var": sub.running_var}
        else:
            continue
        node = prefix + rename(name)
        graph.set_node_params(node, {key: value.detach().numpy() for key, value in params.items()})
        copied.add(node)
    assert copied == {node.name for node in graph.nodes if graph.node_params(node.name)}


def compare(graph: Graph, module: nn.Module, *shape: int, prefix: str = "block.", rename=lambda name: name) -> None:
    torch.manual_seed(0)
    randomize_batch_norms(module)
    module.eval()
    copy_weights(graph, module, prefix, rename)
    graph = graph.with_batch(shape[0])
    x = random(shape, seed=3)
    [name] = [n.name for n in graph.inputs]
    actual = next(iter(reference.run(graph, {name: x}).values()))
    with torch.no_grad():
        expected = module(torch.from_numpy(x))
    assert_close(actual, expected, **TOLERANCE)


# ----- a residual block (basic, with and without projection) ----------------------------------------------------
BASIC = """\
model residual(channels = 16, stride = 2)
input x: 8x10x10
block basic(x, planes, stride = 1):
    y = x -> conv(planes, 3, stride=stride, padding=same, bias=false) as conv1 -> bn as bn1 -> relu
    y = y -> conv(planes, 3, padding=same, bias=false) as conv2 -> bn as bn2
    if stride != 1 or x.channels != planes:
        x = x -> conv(planes, 1, stride=stride, bias=false) as proj_conv -> bn as proj_bn
    return relu(y + x)
output y = basic(x, channels, stride) as block
"""


class TorchBasic(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.project = stride != 1 or inplanes != planes
        if self.project:
            self.proj_conv = nn.Conv2d(inplanes, planes, 1, stride, bias=False)
            self.proj_bn = nn.BatchNorm2d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(y + (self.proj_bn(self.proj_conv(x)) if self.project else x))


@pytest.mark.parametrize(("channels", "stride"), [(16, 2), (8, 1)])
def test_residual_block(channels, stride):
    graph = build_from_source(BASIC, "basic.cnn", channels=channels, stride=stride)
    assert ("block.proj_conv" in graph) == (stride != 1)
    compare(graph, TorchBasic(8, channels, stride), 2, 8, 10, 10)


BOTTLENECK = """\
model bottleneck
input x: 16x9x9
block bottleneck(x, planes, stride = 1):
    y = x -> conv(planes, 1, bias=false) as conv1 -> bn as bn1 -> relu
    y = y -> conv(planes, 3, stride=stride, padding=same, bias=false) as conv2 -> bn as bn2 -> relu
    y = y -> conv(4 * planes, 1, bias=false) as conv3 -> bn as bn3
    x = x -> conv(4 * planes, 1, stride=stride, bias=false) as proj_conv -> bn as proj_bn
    return relu(y + x)
output y = x -> bottleneck(8, 2) as block
"""


class TorchBottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(inplanes, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, 4 * planes, 1, bias=False), nn.BatchNorm2d(4 * planes)
        self.proj_conv = nn.Conv2d(inplanes, 4 * planes, 1, stride, bias=False)
        self.proj_bn = nn.BatchNorm2d(4 * planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(y)))))
        return torch.relu(y + self.proj_bn(self.proj_conv(x)))


def test_bottleneck_block():
    compare(build_from_source(BOTTLENECK, "bottleneck.cnn"), TorchBottleneck(16, 8, 2), 1, 16, 9, 9)


# ----- an inception module ---------------------------------------------------------------------------------------
INCEPTION = """\
model inception_test
input x: 24x11x11
block inception(x, c1x1, reduce3x3, c3x3, reduce5x5, c5x5, pool_proj):
    branch1 = x -> conv(c1x1, 1) as conv1x1 -> relu
    branch2 = x -> conv(reduce3x3, 1) as reduce3x3 -> relu -> conv(c3x3, 3, padding=same) as conv3x3 -> relu
    branch3 = x -> conv(reduce5x5, 1) as reduce5x5 -> relu -> conv(c5x5, 5, padding=same) as conv5x5 -> relu
    branch4 = x -> max_pool(3, stride=1, padding=1) as pool -> conv(pool_proj, 1) as pool_proj -> relu
    return concat(branch1, branch2, branch3, branch4)
output y = x -> inception(8, 6, 12, 4, 6, 5) as block
"""


class TorchInception(nn.Module):
    def __init__(self, inplanes: int, c1x1: int, reduce3x3: int, c3x3: int, reduce5x5: int, c5x5: int,
                 pool_proj: int) -> None:
        super().__init__()
        self.conv1x1 = nn.Conv2d(inplanes, c1x1, 1)
        self.reduce3x3, self.conv3x3 = nn.Conv2d(inplanes, reduce3x3, 1), nn.Conv2d(reduce3x3, c3x3, 3, padding=1)
        self.reduce5x5, self.conv5x5 = nn.Conv2d(inplanes, reduce5x5, 1), nn.Conv2d(reduce5x5, c5x5, 5, padding=2)
        self.pool_proj = nn.Conv2d(inplanes, pool_proj, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        relu = torch.relu
        return torch.cat([
            relu(self.conv1x1(x)),
            relu(self.conv3x3(relu(self.reduce3x3(x)))),
            relu(self.conv5x5(relu(self.reduce5x5(x)))),
            relu(self.pool_proj(nn.functional.max_pool2d(x, 3, 1, 1))),
        ], dim=1)


def test_inception_module():
    graph = build_from_source(INCEPTION, "inception.cnn")
    assert graph.node("y").shape == (1, 8 + 12 + 6 + 5, 11, 11)
    compare(graph, TorchInception(24, 8, 6, 12, 4, 6, 5), 2, 24, 11, 11)


# ----- an MBConv block with squeeze-and-excitation ----------------------------------------------------------------
MBCONV = """\
model mbconv_test(expand = 6, kernel = 5, stride = 2, channels = 24)
input x: 16x13x13
block squeeze_excite(x, squeeze):
    scale = x -> global_avg_pool -> conv(squeeze, 1) as reduce -> silu -> conv(x.channels, 1) as expand -> sigmoid
    return x * scale
block mbconv(x, expand, kernel, stride, channels):
    y = x
    if expand != 1:
        y = y -> conv(expand * x.channels, 1, bias=false) as expand_conv -> bn -> silu
    y = y -> conv(y.channels, kernel, stride=stride, padding=same, groups=y.channels, bias=false) as depthwise
    y = y -> bn -> silu -> squeeze_excite(max(1, x.channels // 4)) as se
    y = y -> conv(channels, 1, bias=false) as project -> bn
    if stride == 1 and x.channels == channels:
        y = y + x
    return y
output y = mbconv(x, expand, kernel, stride, channels) as block
"""


class TorchSqueezeExcite(nn.Module):
    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(channels, squeeze, 1), nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.expand(nn.functional.silu(self.reduce(scale))))


class TorchMBConv(nn.Module):
    """As torchvision's EfficientNet MBConv at inference (stochastic depth is the identity)."""

    def __init__(self, inplanes: int, expand: int, kernel: int, stride: int, channels: int) -> None:
        super().__init__()
        hidden = inplanes * expand
        self.expand_conv = nn.Conv2d(inplanes, hidden, 1, bias=False) if expand != 1 else None
        self.bn1 = nn.BatchNorm2d(hidden) if expand != 1 else None
        self.depthwise = nn.Conv2d(hidden, hidden, kernel, stride, (kernel - 1) // 2, groups=hidden, bias=False)
        self.bn2 = nn.BatchNorm2d(hidden)
        self.se = TorchSqueezeExcite(hidden, max(1, inplanes // 4))
        self.project, self.bn3 = nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels)
        self.skip = stride == 1 and inplanes == channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = nn.functional.silu(self.bn1(self.expand_conv(x))) if self.expand_conv is not None else x
        y = self.se(nn.functional.silu(self.bn2(self.depthwise(y))))
        y = self.bn3(self.project(y))
        return y + x if self.skip else y


@pytest.mark.parametrize(("expand", "kernel", "stride", "channels"), [(6, 5, 2, 24), (6, 3, 1, 16), (1, 3, 1, 8)])
def test_mbconv_block_with_squeeze_and_excitation(expand, kernel, stride, channels):
    graph = build_from_source(MBCONV, "mbconv.cnn", expand=expand, kernel=kernel, stride=stride, channels=channels)
    assert ("block.add1" in graph) == (stride == 1 and channels == 16)
    names = {"bn1": "bn1", "bn2": "bn2", "bn3": "bn3"} if expand != 1 else {"bn2": "bn1", "bn3": "bn2"}
    compare(graph, TorchMBConv(16, expand, kernel, stride, channels), 2, 16, 13, 13,
            rename=lambda name: names.get(name, name))


# ----- a U-Net level ---------------------------------------------------------------------------------------------
UNET_LEVEL = """\
model unet_level(width = 8)
input x: 3x28x28
block double_conv(x, channels):
    return x -> conv(channels, 3) as conv1 -> relu -> conv(channels, 3) as conv2 -> relu
block up(x, skip, channels):
    x = x -> upconv(channels, 2, stride=2) as upconv
    return concat(crop(skip, x), x) -> double_conv(channels) as convs
block level(x, width):
    skip = x -> double_conv(width) as down
    y = skip -> max_pool(2) -> double_conv(2 * width) as bottom
    return y -> up(skip, width) as up
output y = x -> level(width) as block
"""


class TorchDoubleConv(nn.Module):
    def __init__(self, inplanes: int, channels: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(inplanes, channels, 3), nn.Conv2d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class TorchUp(nn.Module):
    def __init__(self, inplanes: int, channels: int) -> None:
        super().__init__()
        self.upconv = nn.ConvTranspose2d(inplanes, channels, 2, stride=2)
        self.convs = TorchDoubleConv(2 * channels, channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upconv(x)
        top, left = (skip.shape[2] - x.shape[2]) // 2, (skip.shape[3] - x.shape[3]) // 2
        cropped = skip[:, :, top: top + x.shape[2], left: left + x.shape[3]]
        return self.convs(torch.cat([cropped, x], dim=1))


class TorchUNetLevel(nn.Module):
    def __init__(self, inplanes: int, width: int) -> None:
        super().__init__()
        self.down = TorchDoubleConv(inplanes, width)
        self.bottom = TorchDoubleConv(width, 2 * width)
        self.up = TorchUp(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.down(x)
        return self.up(self.bottom(nn.functional.max_pool2d(skip, 2)), skip)


def test_unet_level():
    graph = build_from_source(UNET_LEVEL, "unet_level.cnn")
    assert graph.node("y").shape == (1, 8, 12, 12)  # 28 -> 24 -> 12 -> 8 -> 16, crop 24 to 16 -> 12
    compare(graph, TorchUNetLevel(3, 8), 2, 3, 28, 28)


# ----- an Xception entry block -----------------------------------------------------------------------------------
XCEPTION_ENTRY = """\
model xception_entry
input x: 16x15x15
block separable(x, channels):
    x = x -> conv(x.channels, 3, padding=same, groups=x.channels, bias=false) as depthwise
    return x -> conv(channels, 1, bias=false) as pointwise
block downsample(x, channels, out_channels = channels, relu_first = true):
    y = x
    if relu_first:
        y = y -> relu
    y = y -> separable(channels) as sep1 -> bn as bn1 -> relu -> separable(out_channels) as sep2 -> bn as bn2
    y = y -> max_pool(3, stride=2, padding=1)
    return y + (x -> conv(out_channels, 1, stride=2, bias=false) as skip -> bn as skip_bn)
output y = x -> downsample(32) as block
"""


class TorchSeparable(nn.Module):
    def __init__(self, inplanes: int, channels: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(inplanes, inplanes, 3, padding=1, groups=inplanes, bias=False)
        self.pointwise = nn.Conv2d(inplanes, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class TorchXceptionEntry(nn.Module):
    def __init__(self, inplanes: int, channels: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = TorchSeparable(inplanes, channels), nn.BatchNorm2d(channels)
        self.sep2, self.bn2 = TorchSeparable(channels, channels), nn.BatchNorm2d(channels)
        self.skip, self.skip_bn = nn.Conv2d(inplanes, channels, 1, stride=2, bias=False), nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn1(self.sep1(torch.relu(x)))
        y = nn.functional.max_pool2d(self.bn2(self.sep2(torch.relu(y))), 3, 2, 1)
        return y + self.skip_bn(self.skip(x))


def test_xception_entry_block():
    graph = build_from_source(XCEPTION_ENTRY, "xception_entry.cnn")
    assert graph.node("block.sep1.depthwise").attrs["groups"] == 16
    compare(graph, TorchXceptionEntry(16, 32), 2, 16, 15, 15)


# ----- whole zoo ResNets against a torchvision-style ResNet --------------------------------------------------------
class TorchProjection(nn.Module):
    def __init__(self, inplanes: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, channels, 1, stride, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(self.conv1(x))


class TorchResNet(nn.Module):
    """torchvision's ResNet (v1.5: the stride in the 3x3 of a bottleneck), with the zoo's names for the
    projections (downsample.conv1/bn1) and the classifier (logits)."""

    def __init__(self, depth: int, classes: int = 1000) -> None:
        super().__init__()
        blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}[depth]
        bottleneck = depth >= 50
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        inplanes = 64
        for index, (planes, count) in enumerate(zip([64, 128, 256, 512], blocks, strict=True)):
            layer = []
            for i in range(count):
                stride = 2 if i == 0 and index > 0 else 1
                block = (TorchBottleneck if bottleneck else TorchBasic)(inplanes, planes, stride)
                out = 4 * planes if bottleneck else planes
                if isinstance(block, TorchBottleneck):
                    block.project = stride != 1 or inplanes != out
                    if not block.project:
                        del block.proj_conv, block.proj_bn
                if block.project:
                    block.downsample = TorchProjection(inplanes, out, stride)
                    del block.proj_conv, block.proj_bn
                layer.append(block)
                inplanes = out
            setattr(self, f"layer{index + 1}", nn.Sequential(*layer))
        self.logits = nn.Linear(inplanes, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for index in range(1, 5):
            for block in getattr(self, f"layer{index}"):
                x = residual_forward(block, x)
        return self.logits(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def residual_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(block, TorchBottleneck):
        y = torch.relu(block.bn1(block.conv1(x)))
        y = block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(y)))))
    else:
        y = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
    return torch.relu(y + (block.downsample(x) if block.project else x))


def resnet_against_torch(depth: int) -> None:
    graph = zoo.load(f"resnet{depth}").with_input_shapes({"image": (1, 3, 64, 64)})
    module = TorchResNet(depth)
    assert sum(p.numel() for p in module.parameters()) == {18: 11_689_512, 50: 25_557_032}[depth]
    compare(graph, module, 1, 3, 64, 64, prefix="")


def test_zoo_resnet18_matches_a_torchvision_style_resnet():
    resnet_against_torch(18)


def test_zoo_resnet50_matches_a_torchvision_style_resnet():
    resnet_against_torch(50)



# ----- the zoo's MobileNetV2 against torchvision's, built by hand -------------------------------------------------
def torch_conv_bn_relu6(inplanes: int, channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """torchvision's Conv2dNormActivation with ReLU6."""
    return nn.Sequential(nn.Conv2d(inplanes, channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(channels), nn.ReLU6())


class TorchInvertedResidual(nn.Module):
    def __init__(self, inplanes: int, expand: int, stride: int, channels: int) -> None:
        super().__init__()
        hidden = inplanes * expand
        expansion = [torch_conv_bn_relu6(inplanes, hidden, 1)] if expand != 1 else []
        self.conv = nn.Sequential(*expansion, torch_conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
                                  nn.Conv2d(hidden, channels, 1, bias=False), nn.BatchNorm2d(channels))
        self.skip = stride == 1 and inplanes == channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.skip else self.conv(x)


class TorchMobileNetV2(nn.Module):
    """torchvision's mobilenet_v2 (width 1.0) with its module names, which the zoo's node names follow."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        layers, inplanes = [torch_conv_bn_relu6(3, 32, 3, 2)], 32
        for expand, channels, repeats, stride in [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                                                  [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]:
            for i in range(repeats):
                layers.append(TorchInvertedResidual(inplanes, expand, stride if i == 0 else 1, channels))
                inplanes = channels
        self.features = nn.Sequential(*layers, torch_conv_bn_relu6(inplanes, 1280, 1))
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def test_zoo_mobilenet_v2_matches_torchvisions():
    module = TorchMobileNetV2()
    assert sum(p.numel() for p in module.parameters()) == 3_504_872  # torchvision.models.mobilenet_v2()'s count
    compare(zoo.load("mobilenet_v2"), module, 1, 3, 224, 224, prefix="")
