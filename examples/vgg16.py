"""VGG-16 (configuration D of Simonyan and Zisserman): 3x3 same convolutions, 2x2 max pools, FC-4096 twice,
FC-1000, soft-max; 138,357,544 parameters. Run `cnncomp summary examples/vgg16.py`."""

from frontends.builder import Builder

# Channels of each conv3 layer; "M" is a 2x2 max pool with stride 2.
CONFIG_D = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def build(classes: int = 1000, size: int = 224):
    b = Builder("vgg16")
    x = b.input("image", (3, size, size))
    for layer in CONFIG_D:
        x = x.max_pool(2) if layer == "M" else x.conv(layer, 3, padding="same").relu()
    x = x.flatten().dense(4096).relu().dropout().dense(4096).relu().dropout()
    return b.build(x.dense(classes).softmax())
