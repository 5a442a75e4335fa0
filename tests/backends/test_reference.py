"""The reference backend: whole small networks against the same networks in PyTorch, and input checking."""

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backends import reference
from cnncomp.errors import InputError
from frontends.builder import Builder
from tests.helpers import assert_close, one_op_graph, random, randomize

EXAMPLES = Path(__file__).parents[2] / "examples"
T = torch.from_numpy


def test_lenet5_matches_torch():
    graph = runpy.run_path(str(EXAMPLES / "lenet5.py"))["build"]()
    randomize(graph)
    p = {k: T(v) for k, v in graph.params.items()}
    x = random((1, 1, 32, 32), 1)
    t = torch.tanh(F.conv2d(T(x), p["c1.weight"], p["c1.bias"]))
    t = torch.tanh(F.conv2d(F.avg_pool2d(t, 2), p["c3.weight"], p["c3.bias"]))
    t = torch.tanh(F.conv2d(F.avg_pool2d(t, 2), p["c5.weight"], p["c5.bias"]))
    t = torch.tanh(F.linear(t.flatten(1), p["f6.weight"], p["f6.bias"]))
    expected = F.linear(t, p["output.weight"], p["output.bias"])
    assert_close(reference.run(graph, {"image": x})["output"], expected, atol=1e-5, rtol=1e-4)


class TorchBasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = nn.Conv2d(cin, cout, 1, stride, bias=False)
        self.proj_bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.proj_bn(self.proj(x)))


def test_resnet_basic_block_with_projection_matches_torch():
    b = Builder("block")
    x = b.input("x", (4, 9, 9))
    y = x.conv(8, 3, stride=2, padding=1, bias=False, name="conv1").batch_norm(name="bn1").relu()
    y = y.conv(8, 3, padding=1, bias=False, name="conv2").batch_norm(name="bn2")
    shortcut = x.conv(8, 1, stride=2, bias=False, name="proj").batch_norm(name="proj_bn")
    graph = randomize(b.build((y + shortcut).relu(name="out")))
    block = TorchBasicBlock(4, 8, 2).eval()
    missing, unexpected = block.load_state_dict({k: T(v) for k, v in graph.params.items()}, strict=False)
    assert not unexpected and all(key.endswith("num_batches_tracked") for key in missing)
    data = random((2, 4, 9, 9), 1)
    out = reference.run(graph.with_batch(2), {"x": data})["out"]
    with torch.no_grad():
        assert_close(out, block(T(data)), atol=1e-5, rtol=1e-4)


def test_inception_module_with_reductions_matches_torch():
    b = Builder("inception")
    x = b.input("x", (16, 7, 7))
    branches = [
        x.conv(8, 1, name="b1").relu(),
        x.conv(6, 1, name="b2r").relu().conv(8, 3, padding=1, name="b2").relu(),
        x.conv(2, 1, name="b3r").relu().conv(4, 5, padding=2, name="b3").relu(),
        x.max_pool(3, 1, 1).conv(4, 1, name="b4").relu(),
    ]
    graph = randomize(b.build(b.concat(*branches, name="out")))
    p = {k: T(v) for k, v in graph.params.items()}
    data = random((1, 16, 7, 7), 1)
    t = T(data)

    def conv(inp, name, pad=0):
        return F.relu(F.conv2d(inp, p[f"{name}.weight"], p[f"{name}.bias"], padding=pad))

    expected = torch.cat([conv(t, "b1"), conv(conv(t, "b2r"), "b2", 1), conv(conv(t, "b3r"), "b3", 2),
                          conv(F.max_pool2d(t, 3, 1, 1), "b4")], 1)
    assert_close(reference.run(graph, {"x": data})["out"], expected, atol=1e-5, rtol=1e-4)


def unet_level():
    b = Builder("unet_level")
    x = b.input("x", (2, 20, 20))
    enc = x.conv(4, 3, name="e1").relu().conv(4, 3, name="e2").relu()
    down = enc.max_pool(2).conv(8, 3, name="d1").relu()
    up = down.conv_transpose(4, 2, stride=2, name="up")
    merged = b.concat(enc.crop(up), up, name="merged")
    return randomize(b.build(merged.conv(4, 3, name="out")))


def test_unet_level_with_up_convolution_and_crop_matches_torch():
    graph = unet_level()
    p = {k: T(v) for k, v in graph.params.items()}
    data = random((1, 2, 20, 20), 1)
    t = T(data)
    enc = F.relu(F.conv2d(F.relu(F.conv2d(t, p["e1.weight"], p["e1.bias"])), p["e2.weight"], p["e2.bias"]))
    down = F.relu(F.conv2d(F.max_pool2d(enc, 2), p["d1.weight"], p["d1.bias"]))
    up = F.conv_transpose2d(down, p["up.weight"], p["up.bias"], stride=2)
    margin = (enc.shape[2] - up.shape[2]) // 2
    cropped = enc[:, :, margin: margin + up.shape[2], margin: margin + up.shape[3]]
    expected = F.conv2d(torch.cat([cropped, up], 1), p["out.weight"], p["out.bias"])
    assert_close(reference.run(graph, {"x": data})["out"], expected, atol=1e-5, rtol=1e-4)


def test_inputs_are_checked():
    run = reference.compile(unet_level())
    good = random((1, 2, 20, 20))
    with pytest.raises(InputError, match="input 'x': shape 1x2x20x21, expected 1x2x20x20"):
        run({"x": random((1, 2, 20, 21))})
    with pytest.raises(InputError, match="input 'x': dtype float64, expected float32"):
        run({"x": good.astype(np.float64)})
    with pytest.raises(InputError, match="missing input 'x'; unknown input 'image'"):
        run({"image": good})
    with pytest.raises(InputError, match="expected a numpy array, got list"):
        run({"x": good.tolist()})


def test_non_contiguous_inputs_give_the_same_outputs():
    run = reference.compile(unet_level())
    data = random((1, 2, 20, 40))[:, :, :, ::2]
    np.testing.assert_array_equal(run({"x": data})["out"], run({"x": np.ascontiguousarray(data)})["out"])


def test_nan_and_inf_propagate():
    b = Builder()
    graph = b.build(b.input("x", (1, 2, 2)).conv(1, 1, name="c").relu())
    data = np.array([[[[np.nan, 1.0], [np.inf, -np.inf]]]], np.float32)
    graph.params["c.weight"][:] = 1.0
    out = reference.run(graph, {"x": data})["relu1"]
    assert np.isnan(out[0, 0, 0, 0]) and out[0, 0, 1, 0] == np.inf and out[0, 0, 1, 1] == 0.0


def test_outputs_are_fresh_where_an_op_passes_its_operand_through():
    data = random((1, 2, 3, 3))
    out = reference.run(one_op_graph("identity", [data.shape]), {"x0": data})["y"]
    np.testing.assert_array_equal(out, data)
    assert not np.may_share_memory(out, data)
