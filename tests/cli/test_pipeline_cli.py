"""`cnncomp summary -O N` and the pipeline options through the real entry point: same JSON keys and MAC totals
at every level, passes switched off, graphs dumped after passes, pass timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnncomp.pipeline import passes_for

ROOT = Path(__file__).parents[2]
BLOCK = ROOT / "tests" / "passes" / "resnet_block.py"
LENET = ROOT / "examples" / "lenet5.py"


def cnncomp(*args):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def summary(*args):
    result = cnncomp("summary", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), result.stderr


def test_levels_keep_the_json_keys_and_the_mac_total():
    plain, _ = summary(BLOCK)
    for level in range(4):
        optimized, stderr = summary(BLOCK, "-O", level)
        assert stderr == ""
        assert optimized.keys() == plain.keys()
        assert optimized["layers"][0].keys() == plain["layers"][0].keys()
        assert optimized["macs"] == plain["macs"] == sum(layer["macs"] for layer in optimized["layers"])
    ops = [layer["op"] for layer in summary(BLOCK, "-O3")[0]["layers"]]
    assert ops == ["pointwise_conv2d", "conv2d", "strided_slice", "pointwise_conv2d", "pointwise_conv2d"]
    assert [layer["op"] for layer in plain["layers"]].count("batch_norm") == 4


def test_a_disabled_pass_and_the_short_level_spelling():
    result, _ = summary(BLOCK, "-O2", "--disable-pass", "fuse_epilogue", "--disable-pass", "lower_pointwise")
    ops = [layer["op"] for layer in result["layers"]]
    assert ops.count("relu") == 3 and ops.count("add") == 1 and ops.count("conv2d") == 4
    assert "batch_norm" not in ops


def test_dump_after_all_and_verbose_go_to_stderr():
    result, stderr = summary(BLOCK, "-O3", "--dump-after", "all", "--verbose")
    assert result["model"] == "resnet50_layer2.0"  # stdout stays pure JSON
    assert stderr.count("# after ") == len(passes_for(3)) == 9
    after_folding = stderr.split("# after fold_batch_norm\n")[1].split("# after")[0]
    assert "batch_norm" not in after_folding and "layer2.0.conv1 = conv2d(x) 1x1 -> 128" in after_folding
    assert "layer2.0.relu3 = pointwise_conv2d(layer2.0.conv2, layer2.0.downsample) -> 512 +residual relu" in stderr
    assert "[fused: layer2.0.conv3, layer2.0.bn3, layer2.0.add1]" in stderr
    lines = [line for line in stderr.splitlines() if " ms  nodes " in line]
    assert [line.split()[0] for line in lines][:3] == ["eliminate_identity", "fold_constants", "fold_batch_norm"]
    assert "fold_batch_norm" in lines[2] and "(batch_norm -4)" in lines[2]
    assert "memory plan: arena" in stderr and "the lower bound" in stderr


def test_dump_after_one_pass():
    _, stderr = summary(BLOCK, "-O2", "--dump-after", "fuse_epilogue")
    assert stderr.startswith("# after fuse_epilogue\ngraph resnet50_layer2.0: 6 nodes")


def test_fully_convolutional_lenet():
    result, _ = summary(LENET, "-O2", "--fully-convolutional")
    assert [layer["op"] for layer in result["layers"]][-2:] == ["pointwise_conv2d", "pointwise_conv2d"]
    assert result["outputs"] == [{"name": "output", "shape": [1, 10, 1, 1]}]
    assert result["macs"] == summary(LENET)[0]["macs"]


@pytest.mark.parametrize("args,message", [
    (["--disable-pass", "fuse_all"], "unknown pass 'fuse_all'; passes: eliminate_identity"),
    (["-O1", "--dump-after", "fuse_epilogue"], "--dump-after fuse_epilogue: does not run at -O1; this pipeline"),
    (["--dump-after", "nothing"], "--dump-after nothing: is not a pass"),
])
def test_bad_pipeline_options_are_one_line_errors(args, message):
    result = cnncomp("summary", BLOCK, *args)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"cnncomp: error: {result.stderr.split('error: ')[1].strip()}"]
    assert message in result.stderr


def test_an_unknown_level_is_a_usage_error():
    result = cnncomp("summary", BLOCK, "-O", "4")
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr
