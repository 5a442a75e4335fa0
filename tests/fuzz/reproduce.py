"""Fuzz failures as files: a `.cnn` description of the failing graph (`frontends.dsl.writer`) whose first lines say
how it failed and what reproduces it; weights and inputs are drawn again from the seed in its header.

    # fuzz: seed=1234 batch=2 backend=numba-cpu level=3
    # numba-cpu -O3: output 'n4': 3 of 24 values off; ...
    # reproduce: python tools/fuzz.py --replay fuzz-failures/numba-cpu-O3-1a2b3c4d.cnn
    model fuzz
    input x0: 3x5x5
    ...

`replay(path)` compares that backend at that level with the reference at -O0 again; tests/regressions/ keeps one
such file per bug fixed, each replayed by its test.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

from cnncomp.errors import CnnCompError
from frontends.dsl import build_from_source
from frontends.dsl.writer import write
from tests.fuzz.differential import CUDA, CudaRunner, Mismatch, Report, check
from tests.fuzz.graphs import FuzzCase
from tests.helpers import randomize

HEADER = re.compile(r"# fuzz: seed=(\d+) batch=(\d+) backend=(\S+) level=(\d)")
FAILURES_ENV = "CNNCOMP_FUZZ_FAILURES"


def failures_folder() -> Path:
    """Where failing graphs are written: $CNNCOMP_FUZZ_FAILURES, else a folder in the temporary directory."""
    return Path(os.environ.get(FAILURES_ENV) or Path(tempfile.gettempdir()) / "cnncomp-fuzz-failures")


def describe(case: FuzzCase, mismatch: Mismatch, path: Path | str) -> list[str]:
    return [f"fuzz: seed={case.seed} batch={case.batch} backend={mismatch.backend} level={mismatch.level}",
            mismatch.describe(), f"reproduce: python tools/fuzz.py --replay {path}"]


def write_reproducer(case: FuzzCase, mismatch: Mismatch, folder: Path | None = None, name: str | None = None) -> Path:
    """Write the case as a `.cnn` file, named `name` or after the backend, level and its text; returns the path."""
    folder = folder or failures_folder()
    folder.mkdir(parents=True, exist_ok=True)
    body = write(case.graph)
    digest = hashlib.sha256(f"{case.seed} {case.batch} {mismatch.backend} {mismatch.level}\n{body}".encode())
    path = folder / f"{name or f'{mismatch.backend}-O{mismatch.level}-{digest.hexdigest()[:8]}'}.cnn"
    path.write_text(write(case.graph, describe(case, mismatch, path)))
    return path


def load_reproducer(path: Path | str) -> tuple[FuzzCase, str, int]:
    """The case of a reproducer file (its graph with weights drawn from the seed), its backend and level."""
    text = Path(path).read_text()
    found = HEADER.search(text)
    if found is None:
        raise CnnCompError(f"{path}: no `# fuzz: seed=... batch=... backend=... level=...` line; not a reproducer")
    seed, batch, backend, level = int(found[1]), int(found[2]), found[3], int(found[4])
    graph = build_from_source(text, str(path), initialize=False, batch=batch)
    return FuzzCase(randomize(graph, seed, shared_constants=True), seed), backend, level


def replay(path: Path | str) -> Report:
    """Run the reproducer's backend at its level against the reference at -O0."""
    case, backend, level = load_reproducer(path)
    if backend != CUDA:
        return check(case, [backend], [level])
    runner = CudaRunner()
    try:
        return check(case, [backend], [level], cuda=runner)
    finally:
        runner.close()
