"""Hostile `.cnn` descriptions: named attacks on the parser and the evaluator, and random mutations of every zoo
file. Each runs in a sandbox child (tests/fuzz/sandbox.py) under a time limit, with the memory limit at 512 MiB;
the only outcomes allowed are a graph or the language's diagnostics (`file:line:col: message`, the source line
and a caret): no other exception, no hang, no dead interpreter."""

from __future__ import annotations

import random

import pytest

from tests.fuzz.hostile import ZOO, judge_outcome, mutate_text
from tests.fuzz.sandbox import Sandbox

MEMORY_LIMIT = "512MiB"
SECONDS = 60
MUTATIONS_PER_FILE = 30
X = "model m\ninput x: 3x8x8\n"
RELU = "output y = x -> relu\n"

# name (what it attacks) -> (description, a phrase the diagnostic must hold; None: a graph is fine too)
ATTACKS = {
    "int_of_infinity": (X + "n = int(1e308 * 10)\n" + RELU, "not a finite number"),
    "int_of_nan": (X + "n = int(1e308 * 10 - 1e308 * 10)\n" + RELU, "not a finite number"),
    "float_power_overflow": (X + "n = 1e300 ** 2\n" + RELU, "overflows"),
    "int_squared_in_a_loop_until_it_hangs": (X + "n = 3\nfor i in range(40):\n    n = n * n\n" + RELU,
                                             "beyond the 64-bit range"),
    "int_power_tower": (X + "n = (10 ** 60) ** 60\n" + RELU, "beyond the 64-bit range"),
    "string_doubled_in_a_loop": (X + 's = "a"\nfor i in range(1000):\n    s = s + s\n' + RELU,
                                 "strings are limited"),
    "list_doubled_in_a_loop": (X + "s = [1]\nfor i in range(100):\n    s = s + s\n" + RELU, "lists are limited"),
    "int_literal_of_5000_digits": (X + "n = 1" + "0" * 5000 + "\n" + RELU, "beyond the 64-bit range"),
    "float_literal_beyond_float_range": (X + "n = 1" + "0" * 400 + ".5\n" + RELU, "beyond the range of floats"),
    "table_conv_with_a_huge_kernel": (X + "sequence s:\n    conv" + "9" * 30 + "-64\noutput y = x -> s\n",
                                      "beyond the 64-bit range"),
    "brackets_nested_50000_deep": (X + "n = " + "[" * 50000 + "1" + "]" * 50000 + "\n" + RELU, "too deeply"),
    "unary_minus_50000_deep": (X + "n = " + "-" * 50000 + "1\n" + RELU, "too deeply"),
    "ifs_nested_1500_deep": (X + "".join(" " * i + "if true:\n" for i in range(1500)) + " " * 1500 + "z = 1\n"
                             + RELU, "too deeply"),
    "parentheses_nested_50000_deep": (X + "n = " + "(" * 50000 + "1" + ")" * 50000 + "\n" + RELU, None),
    "block_recursing_without_end": (X + "block b(x):\n    return b(x)\noutput y = b(x)\n", "nest more than 32"),
    "loop_of_a_million": (X + "for i in range(1000000):\n    k = i\n" + RELU, "at most 1000 times"),
    "nested_loops_past_the_statement_budget": (X + "for i in range(1000):\n    for j in range(1000):\n        k = i\n"
                                               + RELU, "more than 200,000 statements"),
    "nodes_past_the_node_budget": (X + "y = x\nfor i in range(1000):\n    for j in range(100):\n        y = y -> relu\n"
                                   "output z = y\n", "more than 50,000 nodes"),
    "input_of_100000_squared_pixels": ("model m\ninput x: 3x100000x100000\n" + RELU, "over the memory limit"),
    "dense_weight_of_372_gib": ("model m\ninput x: 100000\noutput y = x -> dense(1000000)\n", "over the memory limit"),
    "conv_with_10e18_channels": (X + "output y = x -> conv(10 ** 18, 3)\n", "over the memory limit"),
    "upsample_by_a_million": (X + "output y = x -> upsample(scale=1000000)\n", "over the memory limit"),
    "weights_over_the_limit_only_together": (
        "model m\ninput x: 300x8x8\n" + "".join(f"y{i} = x -> conv(3000, 3)\n" for i in range(20))
        + "output o = y1\n", "the parameters of graph 'm'"),
    "weight_beyond_float32": (X + "output y = x -> conv(3, 3, weight=1e39)\n", "finite in float32"),
    "weight_list_of_a_million": (X + "output y = x -> conv(3, 3, weight=[1] * 1000000)\n", "lists are limited"),
    "name_of_100000_characters": (X + 'output y = x -> relu as "' + "a" * 100000 + '"\n', None),
    "null_bytes": (X + "\x00\n" + RELU, "unexpected character"),
    "binary_garbage": (bytes(range(256)).decode("latin-1") * 4, "unexpected character"),
    "unterminated_string": (X + 'n = "abc\n' + RELU, "unterminated string"),
    "tabs_and_spaces_mixed": (X + "if true:\n\tz = 1\n        w = 2\n" + RELU, None),
    "shape_attribute_out_of_range": (X + "n = x.shape[99]\n" + RELU, None),
    "division_by_zero": (X + "n = 1 // 0\n" + RELU, "division by zero"),
    "negative_kernel": (X + "output y = x -> conv(3, -3)\n", "must be positive"),
    "empty_file": ("", "starts with `model"),
}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(timeout=SECONDS, env={"CNNCOMP_MEMORY_LIMIT": MEMORY_LIMIT}) as box:
        yield box


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_ends_in_a_graph_or_a_diagnostic(sandbox, name):
    text, phrase = ATTACKS[name]
    outcome = sandbox.run("tests.fuzz.hostile:load_cnn", [text, f"{name}.cnn", True])
    problem = judge_outcome(outcome, diagnostics=True)
    assert problem is None, problem
    if phrase is not None:
        assert outcome.status == "error" and phrase in outcome.message.splitlines()[0], outcome.message[:500]


ZOO_FILES = sorted(ZOO.glob("*.cnn"))
SMALL = {"box_mean", "edge_detect", "gaussian_blur", "sharpen", "lenet5", "inception", "inception_naive"}


@pytest.mark.parametrize("path", ZOO_FILES, ids=[p.stem for p in ZOO_FILES])
def test_mutated_zoo_file_ends_in_a_graph_or_a_diagnostic(sandbox, path):
    """Deletions, insertions of syntax and extreme values, copied spans and changed numbers; small models are
    built with their weights, the others as structure (drawing VGG's weights takes seconds each)."""
    rng = random.Random(path.stem)
    original = path.read_text()
    failures = []
    for index in range(MUTATIONS_PER_FILE):
        text = mutate_text(original, rng)
        outcome = sandbox.run("tests.fuzz.hostile:load_cnn", [text, f"mangled_{index}.cnn", path.stem in SMALL])
        problem = judge_outcome(outcome, diagnostics=True)
        if problem is not None:
            failures.append(f"mutation {index}: {problem}\n--- text ---\n{text}")
    assert not failures, "\n\n".join(failures[:3])


def test_zoo_files_unmutated_build(sandbox):
    for path in ZOO_FILES:
        outcome = sandbox.run("tests.fuzz.hostile:load_cnn", [path.read_text(), path.name, path.stem in SMALL])
        assert outcome.status == "ok", outcome.describe()
