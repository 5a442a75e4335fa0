"""Hostile inputs: mutators that mangle model descriptions, ONNX files and artifacts, and the functions the sandbox
child runs on them (tests/fuzz/sandbox.py), each returning a plain summary of what happened.

The suites (test_hostile_*.py) accept two outcomes only: a graph, or the one-line error of the project
(`CnnCompError`; the `.cnn` language's diagnostics are `file:line:col: message` with the source line and a
caret); a traceback of any other exception, a hang or a dead interpreter fails them.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]
ZOO = ROOT / "frontends" / "zoo"
DIAGNOSTIC = re.compile(r"^[^\n:]+:\d+:\d+: \S")

# Pieces the `.cnn` mutator inserts: syntax, keywords, and values that probe limits.
CNN_PIECES = ["(", ")", "[", "]", ":", "->", "=", ",", " x ", "\n", "    ", " as ", '"', "{", "}", " if ", " else ",
              "0", "-1", "1e308", "1e999", "99999999999", "9" * 30, "2 ** 64", "0.5", "return ", "block ", "for i in ",
              "range(100000)", "conv3-", "maxpool", "*", "**", "//", "%", ".channels", ".shape[9]", "#", "\t", "\x00",
              "input big: 3x100000x100000\n", "x -> upsample(scale=100000)", "conv(10**9, 3)", "dense(1000000000)",
              "assert false\n", "model m\n", "output o = ", "block b(x):\n    return b(x)\n"]


def mutate_text(text: str, rng: random.Random) -> str:
    """One to three edits: delete a span, insert a piece, copy a span elsewhere, or change a number."""
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(text) + 1)
        choice = rng.random()
        if choice < 0.3:
            text = text[:i] + text[i + rng.randint(1, 8):]
        elif choice < 0.6:
            text = text[:i] + rng.choice(CNN_PIECES) + text[i:]
        elif choice < 0.8:
            j = rng.randrange(len(text) + 1)
            text = text[:i] + text[j: j + rng.randint(1, 40)] + text[i:]
        else:
            numbers = list(re.finditer(r"\d+", text))
            if numbers:
                match = rng.choice(numbers)
                value = rng.choice(["0", "1", "3", "7", "1000", "65536", "100000", "1" + "0" * 12])
                text = text[: match.start()] + value + text[match.end():]
    return text


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """One to four edits: flip a bit, overwrite a byte with an extreme one, delete or duplicate a span, truncate."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        i = rng.randrange(len(data))
        choice = rng.random()
        if choice < 0.4:
            data[i] ^= 1 << rng.randrange(8)
        elif choice < 0.6:
            data[i] = rng.choice([0x00, 0x7F, 0x80, 0xFF])
        elif choice < 0.75:
            del data[i: i + rng.randint(1, 16)]
        elif choice < 0.9:
            data[i:i] = data[i: i + rng.randint(1, 16)]
        else:
            del data[i:]
    return bytes(data)


# ----- what the sandbox child runs ------------------------------------------------------------------------------------
def load_cnn(text: str, filename: str, initialize: bool) -> dict[str, Any]:
    from frontends.dsl import build_from_source

    graph = build_from_source(text, filename, initialize=initialize)
    return {"nodes": len(graph)}


def load_onnx(path: str) -> dict[str, Any]:
    from frontends import onnx as onnx_frontend

    graph = onnx_frontend.load(path)
    return {"nodes": len(graph)}


def load_artifact_and_run(path: str) -> dict[str, Any]:
    """Load an artifact and, if it loads, run it once on zeros: a sound file must also run."""
    import numpy as np

    import cnncomp

    model = cnncomp.load(path, options={"progress": False})
    outputs = model.run({name: np.zeros(shape, np.float32) for name, shape in model.input_shapes.items()})
    return {"outputs": sorted(outputs)}


def judge_outcome(outcome: Any, diagnostics: bool = False) -> str | None:
    """None when the sandbox outcome is allowed (a result, or the project's one-line error), else what went
    wrong. With `diagnostics`, errors must be the language's DslError whose first line is file:line:col."""
    if outcome.status == "ok":
        return None
    if outcome.status != "error":
        return outcome.describe() + ("\n" + outcome.traceback if outcome.traceback else "")
    if diagnostics:
        if outcome.error_type == "DslError" and DIAGNOSTIC.match(outcome.message):
            return None
        return f"{outcome.error_type}: {outcome.message}\n{outcome.traceback}"
    if "CnnCompError" in outcome.error_bases and "\n" not in outcome.message:
        return None
    return f"{outcome.error_type}: {outcome.message}\n{outcome.traceback}"
