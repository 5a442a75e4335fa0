"""Diagnostics of the model language: `file:line:col: message`, the source line and a caret under the culprit."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from cnncomp.errors import ModelLoadError


@dataclass(frozen=True)
class Pos:
    """Where something is in a source file: 1-based line and column, and how many characters to underline."""

    line: int
    col: int
    length: int = 1


@dataclass(frozen=True)
class Diagnostic:
    """One mistake in a model description. `notes` say how evaluation got there (the block calls)."""

    filename: str
    pos: Pos
    message: str
    notes: tuple[str, ...] = field(default=())

    @property
    def line(self) -> int:
        return self.pos.line

    @property
    def col(self) -> int:
        return self.pos.col

    def headline(self) -> str:
        return f"{self.filename}:{self.pos.line}:{self.pos.col}: {self.message}"

    def format(self, source_lines: Sequence[str]) -> str:
        lines = [self.headline()]
        if 1 <= self.pos.line <= len(source_lines):
            text = source_lines[self.pos.line - 1].rstrip("\r\n")
            # Keep the tabs of the source line, so the caret lands under the right character.
            lead = "".join(c if c == "\t" else " " for c in text[: self.pos.col - 1])
            width = max(1, min(self.pos.length, len(text) - self.pos.col + 1))
            lines += [f"    {text}", f"    {lead}{'^' * width}"]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


class DslError(ModelLoadError):
    """A model description with mistakes: every diagnostic found in one run, in source order.

    The message's first line is the first diagnostic's `file:line:col: message`; each diagnostic follows with
    its source line and caret."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: str) -> None:
        self.diagnostics = sorted(diagnostics, key=lambda d: (d.pos.line, d.pos.col))
        lines = source.splitlines()
        text = "\n".join(d.format(lines) for d in self.diagnostics)
        if len(self.diagnostics) > 1:
            text += f"\n{self.diagnostics[0].filename}: {len(self.diagnostics)} errors"
        super().__init__(text)
