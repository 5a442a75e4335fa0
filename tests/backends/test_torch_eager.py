"""The torch backend (benchmark peer and second oracle) agrees with the reference on ops and whole blocks."""

import pytest
import torch

import backends.torch_eager as torch_eager
from tests import models
from tests.helpers import activation_cases, assert_same_as_reference, random_inputs, random_op_graph


@pytest.mark.parametrize("build", [models.basic_block, models.inception_module, models.unet_level, models.mbconv,
                                   models.separable_stack, models.dual_path_block, models.res2net_block])
def test_blocks(build):
    assert_same_as_reference(build(2), torch_eager)


@pytest.mark.parametrize("op,shapes,attrs", [
    ("conv2d", [(1, 4, 9, 9)], dict(out_channels=6, kernel=3, padding=(0, 2, 1, 0), affine=True, act="silu")),
    ("conv_transpose2d", [(1, 4, 5, 4)], dict(out_channels=4, kernel=3, stride=3, padding=1, output_padding=2,
                                              groups=2)),
    ("depthwise_conv2d", [(1, 6, 9, 9)], dict(kernel=3, padding=1, multiplier=2, act="relu6")),
    ("pointwise_conv2d", [(2, 8, 3, 3), (2, 8, 1, 1)], dict(out_channels=4, gate=True)),
    ("separable_conv2d", [(1, 6, 9, 9)], dict(out_channels=5, kernel=3, padding=1, mid_bias=True, mid_act="relu")),
    ("strided_slice", [(1, 2, 7, 7)], dict(stride=2)),
    ("avg_pool2d", [(1, 2, 7, 7)], dict(kernel=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("max_pool2d_indices", [(1, 2, 8, 8)], dict(kernel=2)),
    ("upsample", [(1, 2, 4, 5)], dict(mode="bicubic", size=(9, 7), align_corners=True)),
    ("lrn", [(1, 7, 3, 3)], dict(size=5, alpha=1e-2, beta=0.75, k=2.0)),
    ("pad", [(1, 2, 5, 5)], dict(pads=(1, 2, 0, 3), mode="reflect")),
    ("crop", [(1, 2, 9, 9), (1, 2, 4, 6)], {}),
    ("channel_slice", [(2, 6, 3, 3)], dict(start=1, stop=5)),
])
def test_ops(op, shapes, attrs):
    assert_same_as_reference(random_op_graph(op, shapes, attrs), torch_eager)


@pytest.mark.parametrize("epilogue", activation_cases(), ids=lambda e: e["act"])
def test_each_activation_alone_and_in_an_epilogue(epilogue):
    alone = {key: value for key, value in epilogue.items() if key != "act"}
    assert_same_as_reference(random_op_graph(epilogue["act"], [(2, 3, 5, 7)], alone), torch_eager)
    assert_same_as_reference(random_op_graph("conv2d", [(1, 4, 6, 6)], dict(out_channels=5, kernel=3, **epilogue)),
                             torch_eager)


def test_threads_are_set_once_at_compile_time_and_calls_leave_them_alone():
    graph = models.basic_block()
    inputs = random_inputs(graph)
    previous = torch.get_num_threads()
    try:
        torch_eager.compile(graph)
        assert torch.get_num_threads() == previous  # no `threads`: PyTorch's own setting stays
        executable = torch_eager.compile(graph, {"threads": 1})
        assert torch.get_num_threads() == 1 and executable.stats == {"threads": 1}
        torch.set_num_threads(previous)
        executable(inputs)
        assert torch.get_num_threads() == previous
    finally:
        torch.set_num_threads(previous)
