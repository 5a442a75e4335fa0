"""The `.cnn` model description language: a small text language for CNNs, in the spirit of the lecture's notation.

    # ResNet's basic block, used twice
    model tiny(classes = 10)
    input image: 3x32x32

    block basic(x, channels, stride = 1):
        y = x -> conv(channels, 3, stride=stride, padding=same, bias=false) -> bn -> relu
        y = y -> conv(channels, 3, padding=same, bias=false) -> bn
        if stride != 1 or x.channels != channels:
            x = x -> conv(channels, 1, stride=stride, bias=false) -> bn   # projection shortcut
        return relu(y + x)

    x = image -> conv(16, 3, padding=same) -> relu
    for i in range(2):
        x = basic(x, 32, 2 if i == 0 else 1) as "layer{i}"
    output logits = x -> global_avg_pool -> flatten -> dense(classes)

Parsing is in `parser` (grammar in `grammar.lark`), evaluation in `evaluator` (which builds the graph with
`frontends.builder`), the ops and their arguments in `ops`. Mistakes are reported all at once, each as
`file:line:col: message` with the source line and a caret (`DslError`, a ModelLoadError).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cnncomp.errors import ModelLoadError
from cnncomp.ir import Graph
from frontends.dsl.errors import Diagnostic, DslError, Pos
from frontends.dsl.evaluator import Evaluator
from frontends.dsl.parser import parse
from frontends.dsl.syntax import Program

__all__ = ["Diagnostic", "DslError", "Pos", "Program", "build_from_source", "load", "load_structure", "parse"]


def build_from_source(text: str, filename: str = "<string>", *, initialize: bool = True, batch: int = 1,
                      strict: bool = False, **params: Any) -> Graph:
    """The graph a model description builds. `params` override the header's model parameters; text values (as
    from the command line) are read as constants of the language. `initialize=False` skips drawing the weights:
    the graph has every shape, parameter count and cost, but cannot run (see `load_structure`). `batch` is the
    inputs' batch size (as the driver's `batch`; a constant with a batch axis needs it at build time). `strict`
    builds in strict mode, as `model NAME(...) strict` does: a window whose output size is a fraction is an error
    at its line."""
    return Evaluator(parse(text, filename), params, batch, strict).run(initialize)


def _read(path: str | Path) -> tuple[str, str]:
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8"), str(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{path}: cannot read the model description: {exc}") from None


def load(path: str | Path, *, strict: bool = False, **params: Any) -> Graph:
    """The frontend interface: a `.cnn` file to a Graph with initialized weights (`strict`: see
    `build_from_source`)."""
    text, filename = _read(path)
    return build_from_source(text, filename, strict=strict, **params)


def load_structure(path: str | Path, *, strict: bool = False, **params: Any) -> Graph:
    """A `.cnn` file to a Graph without parameter values, for summaries and listings: building VGG-16 with its
    138M random weights takes seconds, its structure a fraction of one."""
    text, filename = _read(path)
    return build_from_source(text, filename, initialize=False, strict=strict, **params)
