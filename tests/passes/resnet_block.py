"""A model file for the command-line tests: ResNet-50's first bottleneck of layer2 (torchvision's v1.5 form, the
stride on the 3x3 conv), with its strided 1x1 projection shortcut, batch norm after every conv."""

from frontends.builder import Builder


def build(size: int = 56):
    b = Builder("resnet50_layer2.0")
    x = b.input("x", (256, size, size))
    with b.scope("layer2"), b.scope("0"):
        y = x.conv(128, 1, bias=False, name="conv1").batch_norm(name="bn1").relu(name="relu1")
        y = y.conv(128, 3, stride=2, padding=1, bias=False, name="conv2").batch_norm(name="bn2").relu(name="relu2")
        y = y.conv(512, 1, bias=False, name="conv3").batch_norm(name="bn3")
        shortcut = x.conv(512, 1, stride=2, bias=False, name="downsample").batch_norm(name="downsample_bn")
        out = (y + shortcut).relu(name="relu3")
    return b.build(out)
