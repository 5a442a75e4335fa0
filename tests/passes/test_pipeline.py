"""The pipeline: opt levels as lists of passes, every model equal at -O0 and -O3 with equal MAC totals, passes
switched off by name, what each pass changed."""

import pytest

from backends import reference
from cnncomp.errors import CnnCompError
from cnncomp.passes.dense_to_conv import dense_to_conv
from cnncomp.passes.fold_batch_norm import fold_batch_norm
from cnncomp.pipeline import LEVELS, O1, O2, PASSES, optimize, passes_for
from cnncomp.summary import summarize
from tests.helpers import random_inputs, randomize
from tests.passes.models import (
    assert_outputs,
    assert_same_outputs,
    bottleneck_stage,
    inception_net,
    mobile_blocks,
    op_counts,
    resnet,
    unet_level,
    vgg16,
    xception_blocks,
)

MODELS = {
    "resnet50_at_32": lambda: resnet(size=32, batch=2),
    "bottleneck_stage": bottleneck_stage,
    "inception": inception_net,
    "xception": xception_blocks,
    "mobilenet_v2": mobile_blocks,
    "mbconv_se": lambda: mobile_blocks(se=True),
    "unet": unet_level,
    "unet_padded": lambda: unet_level(padded=True),
    "vgg16_at_32": lambda: vgg16(size=32),
}


def test_levels_are_plain_lists_that_grow():
    assert LEVELS[0] == []
    assert [p.__name__ for p in LEVELS[1]] == ["eliminate_identity", "fold_constants", "fold_batch_norm",
                                               "eliminate_dead"]
    assert LEVELS[2][:len(O1)] == O1 and LEVELS[3] == O2  # -O3: measured, per-machine choices as they come
    assert set(PASSES) == {p.__name__ for p in LEVELS[3]} | {"dense_to_conv"}


@pytest.mark.parametrize("model", MODELS)
def test_every_model_computes_the_same_at_every_level_with_the_same_macs(model):
    graph = randomize(MODELS[model]())
    before = graph.to_json()
    macs = summarize(graph)["macs"]
    expected = reference.run(graph, random_inputs(graph))
    for level in (1, 2, 3):
        optimized, runs = optimize(graph, level)
        assert [run.name for run in runs] == [p.__name__ for p in LEVELS[level]]
        assert summarize(optimized)["macs"] == macs
        assert summarize(optimized).keys() == summarize(graph).keys()
        assert_outputs(expected, optimized)
    assert graph.to_json() == before  # passes work on copies


def test_level_0_changes_nothing():
    graph = randomize(bottleneck_stage())
    optimized, runs = optimize(graph, 0)
    assert runs == [] and optimized.to_json() == graph.to_json()


def test_a_pass_switched_off_by_name():
    graph = randomize(xception_blocks())
    optimized, runs = optimize(graph, 2, disable=["fuse_separable"])
    assert "fuse_separable" not in [run.name for run in runs]
    assert op_counts(optimized)["separable_conv2d"] == 0 and op_counts(optimized)["depthwise_conv2d"] == 5
    assert_same_outputs(graph, optimized)


def test_what_each_pass_changed_and_the_dump_hook():
    seen = []
    _, runs = optimize(randomize(bottleneck_stage()), 2, after_pass=lambda name, g: seen.append((name, len(g))))
    by_name = {run.name: run for run in runs}
    assert by_name["fold_batch_norm"].changes == "batch_norm -7"
    assert by_name["lower_pointwise"].changes == "conv2d -5, pointwise_conv2d +5, strided_slice +1"
    assert by_name["eliminate_identity"].changes == ""
    assert "fold_batch_norm" in by_name["fold_batch_norm"].describe() and "nodes 23 -> 16" in \
        by_name["fold_batch_norm"].describe()
    assert [name for name, _ in seen] == [run.name for run in runs]
    assert seen[-1][1] == 9
    assert all(run.seconds >= 0 for run in runs)


def test_fully_convolutional_puts_dense_to_conv_first():
    assert passes_for(1, fully_convolutional=True) == [dense_to_conv, *O1]
    assert fold_batch_norm not in passes_for(2, disable=["fold_batch_norm"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(level=4), "unknown opt level -O4; expected 0 to 3"),
    (dict(level=2, disable=["fuse_everything"]), "unknown pass 'fuse_everything'; passes: eliminate_identity"),
])
def test_unknown_levels_and_passes_are_errors(kwargs, message):
    with pytest.raises(CnnCompError, match=message):
        passes_for(**kwargs)


@pytest.mark.parametrize("model", ["bottleneck_stage", "inception", "xception", "mobilenet_v2", "mbconv_se",
                                   "unet", "unet_padded"])
def test_the_reference_backend_runs_the_graph_after_every_pass(model):
    graph = randomize(MODELS[model]())
    expected = reference.run(graph, random_inputs(graph))
    checked = []

    def check(name, result):
        assert_outputs(expected, result)
        checked.append(name)

    optimize(graph, 3, after_pass=check)
    assert checked == [p.__name__ for p in LEVELS[3]]
