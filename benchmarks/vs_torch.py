"""What numba_vs_torch.py and cuda_vs_torch.py share: their command line, and a backend's compile time for a zoo
model at -O3 with an empty kernel cache, then with it filled, each in a fresh process (so nothing compiled or
imported before is reused but the cache)."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]

COMPILE_SCRIPT = """
import sys, time
from cnncomp import plugins
from cnncomp.driver import load_model
from cnncomp.pipeline import optimize
backend, model, batch, cache = sys.argv[1:]
compiler = plugins.backend(backend)
graph, _ = optimize(load_model(model, batch=int(batch)), 3)
start = time.perf_counter()
compiler.compile(graph, {"cache_dir": cache, "progress": False})
print(time.perf_counter() - start)
"""


def parser(description: str, models: list[str], batches: list[int], repeat: int) -> argparse.ArgumentParser:
    """The options both scripts take, with their defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models", nargs="+", default=models)
    parser.add_argument("--batch", nargs="+", type=int, default=batches)
    parser.add_argument("--repeat", type=int, default=repeat)
    parser.add_argument("--no-compile-times", action="store_true", help="skip the cold/warm compile subprocesses")
    parser.add_argument("--json", type=Path, help="also write the records here")
    return parser


def compile_seconds(backend: str, model: str, batch: int) -> tuple[float, float]:
    """`backend`'s (a registry name: "numba-cpu", "numba-cuda") compile time of `model` at `batch` with an empty
    kernel cache, then again in a fresh process with it filled."""
    with tempfile.TemporaryDirectory() as cache:
        results = []
        for _ in range(2):
            done = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, backend, model, str(batch), cache],
                                  capture_output=True, text=True, cwd=ROOT, check=True)
            results.append(float(done.stdout.strip().splitlines()[-1]))
    return results[0], results[1]
