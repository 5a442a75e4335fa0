"""Broken model descriptions: each mistake is reported as file:line:col with a message that says what is wrong,
all mistakes of a file in one run, none as a Python traceback."""

import random
import re

import pytest

from cnncomp.errors import ModelLoadError
from frontends.dsl import DslError, build_from_source

X = "model m\ninput x: 3x8x8\n"  # a header and an input, lines 1 and 2

# name: (description, line, column, words the message must hold)
BROKEN = {
    # ----- syntax
    "unclosed bracket": (X + "y = conv(x, 8, 3\noutput z = y\n", 3, 9, "'(' is never closed"),
    "unmatched bracket": (X + "output y = x -> relu)\n", 3, 21, "unmatched ')'"),
    "header without colon": (X + "block b(x)\n    return x\noutput y = x\n", 3, 11,
                             "unexpected end of line; expected ':'"),
    "dedent to no block": (X + "block b(x):\n    y = x\n  return y\noutput y = b(x)\n", 5, 3,
                           "indented 2 columns, which matches no enclosing block (expected 0 or 4)"),
    "stray indentation": (X + "    y = x\noutput y = x\n", 3, 5, "unexpected indentation"),
    "unknown character": (X + "output y = x $ 2\n", 3, 14, "unexpected character '$'"),
    "unterminated string": (X + 'output y = x -> upsample(scale=2, mode="nearest)\n', 3, 40, "unterminated string"),
    "chain into a number": (X + "output y = x -> 3\n", 3, 17, "unexpected number 3; expected a name"),
    "operator after a chain": (X + "output y = x -> conv(3, 3, padding=same) + x\n", 3, 42,
                               "unexpected '+'; a chain ends its expression: write (x -> step) + y"),
    "double comma": (X + "output y = x -> conv(8, 3,, 1)\n", 3, 27, "unexpected ','; expected an expression or ')'"),
    "bad name template": (X + 'output y = x -> relu as "a{i"\n', 3, 25, "unmatched brace"),
    # ----- the model
    "no header": ("input x: 3x8x8\noutput y = x -> relu\n", 1, 7, "a model description starts with `model NAME("),
    "no output": (X + "y = x -> relu\n", 1, 7, "model m declares no output"),
    "parameter without default": ("model m(classes)\ninput x: 3x8x8\noutput y = x\n", 1, 9,
                                  "model parameter classes needs a default value"),
    "assigning a model parameter": ("model m(classes = 10)\ninput x: 3x8x8\nclasses = 5\noutput y = x -> relu\n",
                                    3, 1, "classes is a model parameter and cannot be assigned"),
    "input dimension zero": ("model m\ninput x: 3x0x8\noutput y = x -> relu\n", 2, 7,
                             "node 'x' (input): every input dimension must be positive, got 0"),
    "value never used": (X + "x -> relu\noutput y = x\n", 3, 1, "this value is computed but never used"),
    # ----- ops and their arguments
    "unknown op": (X + "output y = x -> convv(8, 3)\n", 3, 17, "unknown op or block 'convv'; did you mean conv"),
    "unknown argument": (X + "output y = x -> conv(8, 3, strides=2)\n", 3, 28,
                         "conv has no argument 'strides'; did you mean stride?"),
    "argument of the wrong type": (X + "output y = x -> conv(8, 3, stride=1.5)\n", 3, 28,
                                   "conv: argument 'stride': expected an int or a pair of ints, got 1.5"),
    "unknown padding word": (X + "output y = x -> conv(8, 3, padding=sam)\n", 3, 36,
                             "argument 'padding' takes same or valid (or a value), not 'sam'; did you mean same?"),
    "too many arguments": (X + "output y = x -> relu(3)\n", 3, 22,
                           "relu takes 0 positional arguments after the chained value, got 1"),
    "missing argument": (X + "output y = x -> conv(8)\n", 3, 17, "conv needs argument 'kernel': conv(x, out_channels"),
    "argument given twice": (X + "output y = x -> conv(8, 3, kernel=5)\n", 3, 28,
                             "conv: argument 'kernel' is given twice (by position and by name)"),
    "number where a tensor goes": (X + "output y = relu(3)\n", 3, 17,
                                   "relu: argument 'x' must be a tensor, got the int 3"),
    "tensor where a number goes": (X + "output y = x -> conv(x, 3)\n", 3, 22,
                                   "conv: argument 'out_channels' takes a value, not a tensor of shape 1x3x8x8"),
    "weight that does not fit": ("model m\ninput x: 1x8x8\noutput y = x -> conv(1, 3, weight=[[1, 2], [3, 4]])\n", 3,
                                 28, "a weight of shape 2x2 does not broadcast to the weight's 1x1x3x3"),
    "function as a chain step": (X + "output y = x -> range(3)\n", 3, 17, "range is a function, not an op"),
    "op used as a value": (X + "y = relu\noutput z = x\n", 3, 5, "relu is an op, not a value: call it"),
    # ----- values
    "undefined value": (X + "output y = z -> relu\n", 3, 12, "undefined name 'z'"),
    "misspelt tensor attribute": (X + "output y = x -> conv(x.chanels, 3)\n", 3, 24,
                                  "a tensor has no attribute 'chanels'; did you mean channels?"),
    "division by zero": (X + "c = x.channels // 0\noutput y = x -> conv(c, 1)\n", 3, 16, "division by zero in '//'"),
    "text minus a number": (X + 'c = "a" - 1\noutput y = x\n', 3, 9,
                            "cannot apply '-' to the string \"a\" and the int 1"),
    "tensor compared with a number": (X + "if x < 3:\n    x = x\noutput y = x\n", 3, 6,
                                      "cannot apply '<' to a tensor of shape 1x3x8x8 and the int 3"),
    "tensor as a condition": (X + "if x:\n    x = x -> relu\noutput y = x\n", 3, 4,
                              "a condition must be true or false, got a tensor"),
    "loop that cannot unpack": (X + "for a, b in [[1, 2], [3]]:\n    x = x -> conv(a, 1)\noutput y = x\n", 3, 1,
                                "cannot unpack a list of 1 into the 2 names a, b"),
    "failed assert": ("model m(groups = 2)\ninput x: 3x8x8\nassert x.channels % groups == 0, \"groups must divide "
                      "the channels\"\noutput y = x -> relu\n", 3, 1, "groups must divide the channels"),
    "duplicate node name": (X + "a = x -> conv(4, 1) as c\nb = x -> conv(4, 1) as c\noutput y = a + b\n", 4, 24,
                            "the name c is already used at the top level"),
    # ----- shapes, reported by the graph builder at the line that asked for the node
    "kernel larger than the input": (X + "y = x -> conv(8, 3)\ny = y -> conv(8, 7)\noutput z = y\n", 4, 10,
                                     "node 'conv2' (conv2d): height: kernel extent 7 (F=7, D=1) is larger than the "
                                     "padded input 6"),
    "residual of another shape": (X + "y = x -> conv(8, 3, padding=same)\noutput z = y + x\n", 4, 14,
                                  "node 'z' (add): operand shapes 1x8x8x8 and 1x3x8x8 differ"),
    "concat of other sizes": (X + "y = x -> max_pool(2)\noutput z = concat(x, y)\n", 4, 12,
                              "node 'z' (concat): operand 1 has shape 1x3x4x4, but operand 0 has 1x3x8x8"),
    "groups that do not divide": (X + "output y = x -> conv(4, 3, groups=2)\n", 3, 17,
                                  "groups=2 does not divide the 3 input channels"),
    # ----- blocks, sequences and repetition
    "block without return": (X + "block b(x):\n    y = x -> relu\noutput y = b(x)\n", 3, 7, "block b has no `return`"),
    "block defined twice": (X + "block b(x):\n    return x\nblock b(x):\n    return x\noutput y = b(x)\n", 5, 7,
                            "block b is already defined at line 3"),
    "block named like an op": (X + "block relu(x):\n    return x\noutput y = x\n", 3, 7,
                               "block relu has the name of a built-in op"),
    "return outside a block": (X + "return x\n", 3, 1, "`return` outside a block"),
    "output inside a block": (X + "block b(x):\n    output y = x\n    return x\noutput z = b(x)\n", 4, 12,
                              "`output` is only allowed at the top level of the file, not inside block b"),
    "block reading a top-level value": ("model m\ninput image: 3x8x8\nblock b(x):\n    return x + image\n"
                                        "output y = b(image)\n", 4, 16,
                                        "undefined name 'image' (block b sees its parameters, its own values and "
                                        "the model parameters; pass image as an argument)"),
    "unknown block argument": (X + "block b(x, c = 1):\n    return x\noutput y = b(x, channels=2)\n", 5, 17,
                               "b has no argument 'channels' (arguments: x, c)"),
    "endless recursion": (X + "block f(x):\n    return x -> f\noutput y = f(x)\n", 4, 17,
                          "blocks nest more than 32 deep (f -> f -> f -> f -> f ...); does a block call itself "
                          "without end?"),
    "runaway repetition": (X + "for i in range(100000):\n    x = x -> relu\noutput y = x\n", 3, 10,
                           "a loop may repeat at most 1000 times; this one would repeat 100,000 times"),
    "table layer of unknown size": (X + "sequence s:\n    conv3-width maxpool\noutput y = x -> s\n", 4, 11,
                                    "undefined name 'width' (sequence s sees the model parameters only"),
}


def first_diagnostic(text: str, **params):
    with pytest.raises(DslError) as caught:
        build_from_source(text, "broken.cnn", **params)
    return caught.value.diagnostics[0], caught.value


def test_there_are_at_least_25_distinct_mistakes():
    assert len(BROKEN) >= 25
    assert len({text for text, *_ in BROKEN.values()}) == len(BROKEN)


@pytest.mark.parametrize("case", list(BROKEN))
def test_each_mistake_is_reported_where_it_is(case):
    text, line, col, words = BROKEN[case]
    diagnostic, error = first_diagnostic(text)
    assert (diagnostic.line, diagnostic.col) == (line, col), str(error)
    assert words in diagnostic.message, str(error)
    message = str(error)
    assert message.splitlines()[0] == f"broken.cnn:{line}:{col}: {diagnostic.message}"
    assert "Traceback" not in message
    assert isinstance(error, ModelLoadError)


def test_the_message_shows_the_line_and_a_caret_under_the_mistake():
    _, error = first_diagnostic(X + "output y = x -> convv(8, 3)\n")
    assert str(error).splitlines()[1:3] == [
        "    output y = x -> convv(8, 3)",
        "                    ^^^^^",
    ]


def test_all_syntax_errors_come_in_one_run():
    text = X + "a = conv(x, 8, 3\nb = x x\nblock f(x)\n    return x\nc = x -> relu)\noutput y = x\n"
    _, error = first_diagnostic(text)
    assert [(d.line, d.col) for d in error.diagnostics] == [(3, 9), (4, 7), (5, 11), (7, 14)]
    assert str(error).splitlines()[-1] == "broken.cnn: 4 errors"


def test_all_mistakes_of_the_evaluation_come_in_one_run():
    text = X + ("a = x -> conv(8, 3, strides=2)\n"
                "b = a -> relu\n"                       # reads a failed value: no second report
                "c = x -> convv(4, 1)\n"
                "block unused(x):\n"
                "    return x -> unknown_op\n"          # never called, still checked
                "d = (x -> conv(4, 3)) + x\n"
                "output y = undefined_value\n")
    _, error = first_diagnostic(text)
    assert [(d.line, d.message.split(";")[0].split(":")[0]) for d in error.diagnostics] == [
        (3, "conv has no argument 'strides'"),
        (5, "unknown op or block 'convv'"),
        (7, "unknown op or block 'unknown_op'"),
        (8, "node 'add1' (add)"),
        (9, "undefined name 'undefined_value'"),
    ]


def test_a_mistake_in_a_block_is_reported_once_with_where_it_was_called_from():
    text = X + ("block b(x):\n"
                "    return x -> conv(8, 9)\n"
                "y = x -> b as first\n"
                "z = x -> b as second\n"
                "output w = y\n")
    _, error = first_diagnostic(text)
    assert len(error.diagnostics) == 1
    diagnostic = error.diagnostics[0]
    assert (diagnostic.line, diagnostic.col) == (4, 17)
    assert diagnostic.notes == ("in block b (instance first), called at broken.cnn:5:10",)
    assert "node 'first.conv1' (conv2d)" in diagnostic.message


def test_unknown_and_mistyped_model_parameters():
    text = "model m(classes = 10, ratio = 0.5)\ninput x: 3x8x8\noutput y = x -> flatten -> dense(classes)\n"
    diagnostic, _ = first_diagnostic(text, clases=3)
    assert (diagnostic.line, diagnostic.col) == (1, 7)
    assert diagnostic.message == "model m has no parameter 'clases'; did you mean classes? (parameters: classes, ratio)"
    diagnostic, _ = first_diagnostic(text, classes="ten")
    assert (diagnostic.line, diagnostic.col) == (1, 9)
    assert diagnostic.message == "model parameter classes is an int (default 10); got 'ten'"
    diagnostic, _ = first_diagnostic(text, classes=2.5)
    assert "is an int (default 10); got 2.5" in diagnostic.message
    assert build_from_source(text, ratio=1).name == "m"  # an int where a number goes is fine


def test_deep_expressions_and_node_budgets_stop_cleanly():
    text = X + "block grow(x, n):\n    if n == 0:\n        return x\n    return grow(x -> relu, n - 1) as inner\n" \
               "output y = grow(x, 50)\n"
    diagnostic, _ = first_diagnostic(text)
    assert "blocks nest more than 32 deep" in diagnostic.message
    nested = X + "for i in range(1000):\n    for j in range(1000):\n        k = i\noutput y = x\n"
    diagnostic, _ = first_diagnostic(nested)
    assert "more than 200,000 statements" in diagnostic.message


def test_mangled_zoo_files_give_diagnostics_never_a_crash():
    """Random deletions, insertions and moved text in real descriptions: each run ends in a graph or a DslError
    whose first line is file:line:col."""
    from frontends import zoo

    texts = [zoo.path(name).read_text() for name in ("resnet18", "googlenet", "vgg16", "unet", "fcn8s")]
    pieces = ["(", ")", "[", "]", ":", "->", "=", ",", " x ", "\n", "    ", " as ", '"', "{", "}", " if ", "0", "-1",
              "return ", "block ", "conv3-", "maxpool", "*", "**", "//", ".channels", "1e99", " for ", "range(5000)",
              "#"]
    rng = random.Random(0)
    for _ in range(100):
        text = rng.choice(texts)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            choice = rng.random()
            if choice < 0.4:
                text = text[:i] + text[i + rng.randint(1, 5):]
            elif choice < 0.8:
                text = text[:i] + rng.choice(pieces) + text[i:]
            else:
                j = rng.randrange(len(text))
                text = text[:i] + text[j: j + 10] + text[i:]
        try:
            build_from_source(text, "mangled.cnn", initialize=False)
        except DslError as error:
            assert re.match(r"mangled\.cnn:\d+:\d+: \S", str(error)), str(error)
