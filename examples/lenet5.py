"""LeNet-5 (LeCun et al. 1998) as the lecture draws it: Conv -> Pool -> Conv -> Pool -> Conv -> FC -> FC.

32x32x1 input, valid 5x5 convolutions with 6, 16 and 120 filters, 2x2 average pooling, tanh activations,
FC 84 and FC 10: 61,706 parameters. Run `cnncomp summary examples/lenet5.py`.
"""

from frontends.builder import Builder


def build(classes: int = 10):
    b = Builder("lenet5")
    x = b.input("image", (1, 32, 32))
    x = x.conv(6, 5, name="c1").tanh().avg_pool(2, name="s2")
    x = x.conv(16, 5, name="c3").tanh().avg_pool(2, name="s4")
    x = x.conv(120, 5, name="c5").tanh()
    x = x.flatten().dense(84, name="f6").tanh()
    return b.build(x.dense(classes, name="output"))
