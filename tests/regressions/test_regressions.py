"""One regression test per bug the fuzzer found: each `.cnn` file here is the minimized graph of one bug, named
after it, with the seed of its weights and inputs and the backend and level where it failed in its header
(`tests/fuzz/reproduce.py`). Each is run on every in-process backend at every opt level (numba-cuda ones in the
simulator), against the reference at -O0. `python tools/fuzz.py --replay FILE` runs one by hand."""

from pathlib import Path

import pytest

from tests.fuzz.differential import CUDA, IN_PROCESS, LEVELS, CudaRunner, check
from tests.fuzz.reproduce import load_reproducer

FILES = sorted(Path(__file__).parent.glob("*.cnn"))


def test_every_reproducer_names_the_bug_it_guards():
    assert FILES, "no regression graphs"
    for path in FILES:
        case, backend, level = load_reproducer(path)
        assert len(path.stem) > 20 and path.stem.count("-") >= 3, f"{path.name}: name it after the bug"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_regression(path):
    case, backend, level = load_reproducer(path)
    if backend == CUDA:
        runner = CudaRunner()
        try:
            report = check(case, [CUDA], LEVELS, cuda=runner)
        finally:
            runner.close()
    else:
        report = check(case, IN_PROCESS, LEVELS)
    assert (backend, level) in report.compared
    assert not report.mismatches, "\n".join(m.describe() for m in report.mismatches)
