"""The .cnn language: what each construct builds, node names and blocks, model parameters, fixed weights, and the
graph it gives compared with the same model written with the Python builder."""

from pathlib import Path

import numpy as np
import pytest

from backends import reference
from cnncomp.ops.activation import ACTIVATIONS
from cnncomp.summary import summarize
from frontends.builder import Builder
from frontends.dsl import DslError, build_from_source, load, load_structure, parse
from tests.helpers import assert_close, random

RESNET_TINY = """\
# ResNet's basic block, used twice
model tiny(classes = 10, width = 32)
input image: 3x32x32

block basic(x, channels, stride = 1):
    y = x -> conv(channels, 3, stride=stride, padding=same, bias=false) -> bn -> relu
    y = y -> conv(channels, 3, padding=same, bias=false) -> bn
    if stride != 1 or x.channels != channels:
        x = x -> conv(channels, 1, stride=stride, bias=false) -> bn   # projection shortcut
    return relu(y + x)

x = image -> conv(16, 3, padding=same) -> relu
for i in range(2):
    x = basic(x, width, 2 if i == 0 else 1) as "layer{i}"
output logits = x -> global_avg_pool -> flatten -> dense(classes)
"""


def build(text, **params):
    return build_from_source(text, "test.cnn", **params)


def names(graph):
    return [n.name for n in graph.nodes]


def test_blocks_become_scoped_nodes_with_their_block_in_meta():
    graph = build(RESNET_TINY)
    assert graph.name == "tiny"
    assert names(graph) == [
        "image", "conv1", "relu1",
        "layer0.conv1", "layer0.bn1", "layer0.relu1", "layer0.conv2", "layer0.bn2", "layer0.conv3", "layer0.bn3",
        "layer0.add1", "layer0.relu2",
        "layer1.conv1", "layer1.bn1", "layer1.relu1", "layer1.conv2", "layer1.bn2", "layer1.add1", "layer1.relu2",
        "global_avg_pool1", "flatten1", "logits",
    ]
    assert graph.node("layer0.conv3").meta["block"] == "layer0"
    assert "block" not in graph.node("conv1").meta
    assert graph.outputs == ["logits"]
    # the projection only where the stride changes: layer0 has three convolutions, layer1 two
    assert graph.node("layer0.conv3").attrs["stride"] == (2, 2)
    assert graph.node("layer1.add1").inputs == ("layer1.bn2", "layer0.relu2")
    assert graph.node("logits").shape == (1, 10)


def test_the_language_builds_the_same_graph_as_the_builder():
    graph = build(RESNET_TINY)
    b = Builder("tiny")
    x = b.input("image", (3, 32, 32)).conv(16, 3, padding="same", name="conv1").relu(name="relu1")
    for i, stride in enumerate((2, 1)):
        with b.scope(f"layer{i}"):
            y = x.conv(32, 3, stride=stride, padding="same", bias=False, name="conv1").batch_norm(name="bn1")
            y = y.relu(name="relu1").conv(32, 3, padding="same", bias=False, name="conv2").batch_norm(name="bn2")
            if stride != 1 or x.channels != 32:
                x = x.conv(32, 1, stride=stride, bias=False, name="conv3").batch_norm(name="bn3")
            x = b.add(y, x, name="add1").relu(name="relu2")
    expected = b.build(x.global_avg_pool(name="global_avg_pool1").flatten(name="flatten1").dense(10, name="logits"))
    assert graph.to_json() == expected.to_json()
    assert graph.params.keys() == expected.params.keys()
    for key in graph.params:  # same names, same seed: the same random weights
        np.testing.assert_array_equal(graph.params[key], expected.params[key])
    image = random((1, 3, 32, 32))
    assert_close(reference.run(graph, {"image": image})["logits"], reference.run(expected, {"image": image})["logits"])


def test_nested_blocks_nest_scopes():
    graph = build("""\
model nested
input x: 8x8x8
block inner(x):
    return x -> conv(8, 3, padding=same) as conv3x3 -> relu
block outer(x):
    return x -> inner as branch1 -> inner as branch2
output y = x -> outer as stage1 -> relu
""")
    assert "stage1.branch2.conv3x3" in names(graph)
    assert graph.node("stage1.branch2.conv3x3").meta["block"] == "stage1.branch2"
    assert graph.node("stage1.branch2.conv3x3").inputs == ("stage1.branch1.relu1",)


def test_model_parameters_are_overridden_from_python_and_as_text():
    assert build(RESNET_TINY, classes=3).node("logits").shape == (1, 3)
    assert build(RESNET_TINY, classes="7").node("logits").shape == (1, 7)  # the command line gives text
    assert build(RESNET_TINY, width=8).node("layer1.conv2").shape == (1, 8, 16, 16)


def test_outputs_made_inside_a_block_get_their_name_from_an_identity():
    graph = build("""\
model m
input x: 4x8x8
block f(x):
    return x -> relu
output a = f(x)
output b = x -> relu
""")
    assert graph.outputs == ["a", "b"]
    assert graph.node("a").op == "identity" and graph.node("a").inputs == ("f1.relu1",)
    assert graph.node("b").op == "relu"


def test_chains_calls_and_operators():
    graph = build("""\
model m(c = 6)
input x: 4x8x8
a = conv(x, c, 3, padding=same) as a_conv
b = x -> conv(c, kernel=3, padding=1) as b_conv
s = a + b
p = s * (s -> global_avg_pool -> sigmoid)
output y = concat(a, b, p, axis=1) -> relu
""")
    assert graph.node("a_conv").attrs["padding"] == (1, 1, 1, 1)
    assert graph.node("b_conv").attrs["kernel"] == (3, 3)
    assert graph.node("add1").inputs == ("a_conv", "b_conv")
    assert graph.node("mul1").inputs[1] == "sigmoid1"
    assert graph.node("concat1").shape == (1, 18, 8, 8)
    assert graph.node("y").op == "relu"


def test_integer_arithmetic_conditionals_and_shapes():
    graph = build("""\
model m(width = 10)
input x: 4 x (2 * 8) x (width + 2)
h = x.height // 4 * 4 + 7 % 3 - 2 ** 2
c = max(1, x.channels // 4) if x.width > 8 and not false else 100
assert h == 13 and c == 1 and x.shape == [4, 16, 12], "shapes"
items = [1, 2] + [3] * 2
assert len(items) == 4 and items[-1] == 3 and min(items) == 1 and int(2.7) == 2
output y = x -> conv(h, 1) -> conv(c, 1)
""")
    assert graph.node("x").shape == (1, 4, 16, 12)
    assert graph.node("y").shape == (1, 1, 16, 12)


def test_loops_unpack_lists_and_count_node_names():
    graph = build("""\
model m
input x: 4x8x8
for channels, kernel in [[8, 1], [16, 3], [4, 5]]:
    x = x -> conv(channels, kernel, padding=same)
output y = x -> relu
""")
    convs = [n for n in graph.nodes if n.op == "conv2d"]
    assert [n.name for n in convs] == ["conv1", "conv2", "conv3"]
    assert [n.attrs["kernel"] for n in convs] == [(1, 1), (3, 3), (5, 5)]
    assert graph.node("y").shape == (1, 4, 8, 8)


def test_a_recursive_block_that_ends():
    graph = build("""\
model m
input x: 4x32x32
block pyramid(x, depth):
    if depth == 0:
        return x
    return x -> conv(x.channels * 2, 3, stride=2, padding=same) -> pyramid(depth - 1) as inner
output y = x -> pyramid(3) as p
""")
    assert graph.node("y").shape == (1, 32, 4, 4)
    assert "p.inner.inner.conv1" in names(graph)


def test_the_vgg_table_reads_like_the_paper():
    graph = build("""\
model m(classes = 10)
input image: 3x32x32
sequence column:
    conv3-16 LRN
    maxpool
    conv3-32 conv1-32
    maxpool
    FC-64
    FC-classes
    soft-max
output probs = image -> column
""")
    assert names(graph) == ["image", "conv1_1", "relu1_1", "norm1", "pool1", "conv2_1", "relu2_1", "conv2_2",
                            "relu2_2", "pool2", "flatten1", "fc3", "relu3", "fc4", "probs"]
    assert graph.node("conv2_2").attrs["kernel"] == (1, 1)
    assert graph.node("conv1_1").attrs["padding"] == (1, 1, 1, 1)
    assert graph.node("pool1").attrs["kernel"] == (2, 2) and graph.node("pool1").attrs["stride"] == (2, 2)
    assert graph.node("fc4").shape == (1, 10)  # the classifier before soft-max has no ReLU
    assert graph.node("probs").op == "softmax"


def test_a_named_sequence_is_a_block_instance():
    graph = build("""\
model m
input image: 3x16x16
sequence features:
    conv3-8 maxpool
output y = image -> features as stem -> relu
""")
    assert names(graph)[1:4] == ["stem.conv1_1", "stem.relu1_1", "stem.pool1"]
    assert graph.node("stem.pool1").meta["block"] == "stem"


def test_fixed_weights_broadcast_over_channels():
    graph = build("""\
model m
input image: 3x6x6
output y = image -> conv(3, 3, padding=same, groups=3, bias=false, weight=[[0, 0, 0], [0, 2, 0], [0, 0, 0]])
""")
    assert graph.params["y.weight"].shape == (3, 1, 3, 3)
    image = random((1, 3, 6, 6))
    assert_close(reference.run(graph, {"image": image})["y"], 2 * image)


def test_structure_only_has_the_same_summary_and_no_weights(tmp_path):
    path = tmp_path / "tiny.cnn"
    path.write_text(RESNET_TINY)
    full, structure = load(path), load_structure(path)
    assert structure.params == {}
    assert summarize(structure) == summarize(full)
    with pytest.raises(Exception, match="parameter 'weight' is missing"):
        structure.validate()


def test_comments_blank_lines_and_brackets_over_several_lines():
    graph = build("""\

# a comment before the header
model m   # and after it

input x: 2x4x4


y = conv(x,      # the arguments may run over lines inside brackets
         4, 3,
         padding=same)
    # an indented comment is no block
output z = y -> relu
""")
    assert graph.node("z").shape == (1, 4, 4, 4)


def test_parse_gives_a_syntax_tree_with_positions():
    program = parse("model m(c = 3)\ninput x: 3x8x8\noutput y = x -> relu\n", "p.cnn")
    header, inp, out = program.statements
    assert (header.name, header.params[0].name, header.params[0].default.value) == ("m", "c", 3)
    assert (inp.pos.line, inp.pos.col) == (2, 7)
    assert out.value.steps[0].name == "relu" and out.value.steps[0].chained


def test_errors_are_model_load_errors():
    from cnncomp.errors import ModelLoadError

    with pytest.raises(ModelLoadError):
        build("model m\noutput y = nothing\n")
    assert issubclass(DslError, ModelLoadError)


def macs(graph, node):
    return next(layer["macs"] for layer in summarize(graph)["layers"] if layer["name"] == node)


def test_the_lectures_multiplication_counts():
    """Inception's 5x5 branch: ~470 million multiplications, ~40 million with a 1x1 reduction to 16 channels;
    a 5x5 convolution of a 3-channel image to 256 channels at 8x8 locations against its depthwise-separable form."""
    graph = build("""\
model costs
input image: 200x32x32
input rgb: 3x12x12
naive = image -> conv(92, 5, padding=same) as conv5x5
reduced = image -> conv(16, 1) as reduce -> conv(92, 5, padding=same) as reduced5x5
full = rgb -> conv(256, 5) as full
separable = rgb -> conv(3, 5, groups=3) as depthwise -> conv(256, 1) as pointwise
output a = concat(naive, reduced)
output b = full + separable
""")
    assert macs(graph, "conv5x5") == 5 * 5 * 200 * 32 * 32 * 92 == 471_040_000
    assert macs(graph, "reduce") + macs(graph, "reduced5x5") == 1 * 1 * 200 * 32 * 32 * 16 + 5 * 5 * 16 * 32 * 32 * 92
    assert macs(graph, "reduce") + macs(graph, "reduced5x5") == 40_960_000
    assert macs(graph, "full") == 1_228_800
    assert (macs(graph, "depthwise"), macs(graph, "pointwise")) == (4_800, 49_152)


def test_the_readme_example_builds():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("```\n", readme.index("## Writing a model in the `.cnn` language")) + 4
    graph = build(readme[start: readme.index("```", start)])
    assert graph.name == "tiny" and graph.node("layer1.relu2").shape == (1, 32, 16, 16)


def test_the_language_reference_lists_every_op_and_its_example_builds():
    from frontends.dsl.ops import SIGNATURES

    reference_text = (Path(__file__).parents[2] / "frontends" / "dsl" / "README.md").read_text()
    for signature in SIGNATURES.values():
        if signature.op in ACTIVATIONS:  # one row for them all: a new activation needs no line here
            continue
        assert f"| `{signature.describe()}` | {signature.op} |" in reference_text
    assert "| `NAME(x)` for each activation of the registry (`cnncomp/ops/activation.py`)" in reference_text
    start = reference_text.index("```\n") + 4
    graph = build(reference_text[start: reference_text.index("```", start)])
    assert graph.node("filter_concatenation").shape == (1, 64 + 128 + 32 + 32, 28, 28)
    assert graph.node("branch3.conv_out").meta["block"] == "branch3"


def test_concat_takes_a_list_of_tensors():
    """DenseNet's concatenation of every feature map so far: `concat(features)` with a list, or lists and tensors
    mixed; a list that holds anything but tensors is one error at the argument."""
    graph = build("model dense()\ninput image: 3 x 16 x 16\na = image -> conv(8, 3, padding=same)\n"
                  "b = a -> conv(4, 3, padding=same)\nfeatures = [image, a]\n"
                  "output y = concat(features, b)\n")
    assert graph.node("y").shape == (1, 15, 16, 16)
    x = random((1, 3, 16, 16))
    outputs = reference.compile(graph, {})({"image": x})
    assert_close(outputs["y"][:, :3], x)
    for listed, message in [("[]", "concat needs at least one tensor"),
                            ("[image, 3]", "argument 'values' must be a tensor or a list of tensors, got a list of 2")]:
        with pytest.raises(DslError, match=message.replace("(", r"\(")):
            build(f"model bad()\ninput image: 3 x 8 x 8\nfeatures = {listed}\noutput y = concat(features)\n")


def test_strict_mode_makes_fractions_illegal_at_their_line():
    """The lecture's N = 7, F = 3: stride 2 gives 3, stride 3 gives (7 - 3)/3 + 1 = 2.3333, "fractions are illegal"."""
    text = "model lecture() strict\ninput image: 1x7x7\na = image -> conv(1, 3, stride=2)\n" \
           "output b = image -> conv(1, 3, stride=3)\n"
    with pytest.raises(DslError) as error:
        build(text)
    message = str(error.value)
    assert "test.cnn:4:21:" in message and "(7 + 0 - 2 - 1)/3 + 1 = 2.3333 is not an integer" in message
    lenient = build(text.replace(") strict", ")"))  # without it, the size rounds down, as PyTorch's does
    assert lenient.node("b").shape == (1, 1, 2, 2) and not lenient.strict
    with pytest.raises(DslError, match="2.3333"):
        build_from_source(text.replace(") strict", ")"), strict=True)
    assert build("model ok(strict = 3) strict\ninput image: 1x7x7\noutput y = image -> conv(1, strict, stride=2)\n"
                 ).node("y").shape == (1, 1, 3, 3)  # `strict` is still a name elsewhere
