"""docs/guarantees.md names a test beside every claim: each bullet names at least one, and each named test (and
case, for a parametrized test) exists."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "guarantees.md"
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)(?:::(\w+)(?:\[([^\]]+)\])?)?`")


def bullets(text: str) -> list[str]:
    """The bullets of the document, each with its continuation lines."""
    items: list[str] = []
    in_bullet = False
    for line in text.splitlines():
        if line.startswith("- "):
            items.append(line)
            in_bullet = True
        elif in_bullet and line.startswith("  "):
            items[-1] += " " + line.strip()
        else:
            in_bullet = False
    return items


def test_every_claim_names_a_test():
    claims = bullets(DOC.read_text())
    assert len(claims) >= 30
    unbacked = [claim[:80] for claim in claims if not REFERENCE.search(claim)]
    assert unbacked == []


def test_every_named_test_and_case_exists():
    missing = []
    for path, name, case in REFERENCE.findall(DOC.read_text()):
        source = ROOT / path
        if not source.is_file():
            missing.append(path)
            continue
        text = source.read_text()
        functions = {node.name for node in ast.walk(ast.parse(text)) if isinstance(node, ast.FunctionDef)}
        if name and name not in functions:
            missing.append(f"{path}::{name}")
        if case and f'"{case}"' not in text:
            missing.append(f"{path}::{name}[{case}]")
    assert missing == []
