"""Latency of the numpy reference backend on the example models (the oracle must stay fast enough to test
whole networks: VGG-16 at 224x224, batch 1, well under 10 s).

    python benchmarks/reference_speed.py [--repeat N] [--json OUT.json]

Prints a table and, with --json, writes the records.
"""

from __future__ import annotations

import argparse
import json
import platform
import runpy
import statistics
import time
from pathlib import Path

import numpy as np

from backends import reference
from cnncomp.summary import summarize

EXAMPLES = Path(__file__).parents[1] / "examples"
MODELS = ["lenet5", "vgg16"]


def measure(model: str, repeat: int) -> dict:
    graph = runpy.run_path(str(EXAMPLES / f"{model}.py"))["build"]()
    executable = reference.compile(graph)
    inputs = {
        node.name: np.random.default_rng(0).standard_normal(node.shape).astype(np.float32) for node in graph.inputs
    }
    executable(inputs)  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        executable(inputs)
        times.append(time.perf_counter() - start)
    macs = summarize(graph)["macs"]
    median = statistics.median(times)
    return {
        "model": model,
        "backend": "reference",
        "batch": graph.inputs[0].shape[0],
        "median_ms": median * 1e3,
        "min_ms": min(times) * 1e3,
        "gflops": 2 * macs / median / 1e9,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the records to this file")
    args = parser.parse_args()
    records = [measure(model, args.repeat) for model in MODELS]
    print(f"machine: {platform.processor() or platform.machine()}, numpy {np.__version__}")
    print(f"{'model':<8} {'backend':<10} {'batch':>5} {'median ms':>10} {'min ms':>9} {'GFLOP/s':>8}")
    for r in records:
        print(f"{r['model']:<8} {r['backend']:<10} {r['batch']:>5} {r['median_ms']:>10.1f} {r['min_ms']:>9.1f} "
              f"{r['gflops']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
