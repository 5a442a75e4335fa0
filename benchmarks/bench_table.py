"""The README's benchmark tables, made with `cnncomp bench`.

    python benchmarks/bench_table.py                       # the zoo of issue 17 at batch 1 and 8, with the peers
    python benchmarks/bench_table.py --models resnet50 --batch 1 --json results.json
    python benchmarks/bench_table.py --models resnet18 --batch 1 --tuned   # tuned (-O3) and untuned (-O2) rows

Runs `cnncomp bench MODEL --peers --batch B --json` for each batch size (all models at the first, then the next)
and each model (each model, backend and batch in fresh processes: see `cnncomp bench --help`), so a run stopped
early keeps the rows it measured: `--json` is rewritten after each model. Prints the records as a Markdown table,
with the machine, the commit, the ratio of every row to each peer (the peer's median latency over the row's: above
1, the row is faster) and, for our backends, issue 17's goal: at most 1.0x ONNX Runtime's median latency, 0.85x on
the depthwise-heavy models.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PEERS = ("torch", "onnxruntime")
# Issue 17's zoo, the cheapest first so that a run stopped early has the most rows.
MODELS = ["lenet5", "mobilenet_v2", "efficientnet_b0", "resnet18", "alexnet", "googlenet", "resnet50", "xception",
          "resnet152", "vgg16", "fcn8s", "unet"]
# Issue 17: our median latency over ONNX Runtime's at most this; ONNX Runtime is weakest on depthwise convolutions.
GOAL = 1.0
DEPTHWISE_GOAL = 0.85
DEPTHWISE_HEAVY = ("efficientnet_b0", "mobilenet_v2", "xception")


def goal(record: dict, ort_ms: float | None) -> str:
    """Our row's median over ONNX Runtime's against the issue's bound: `0.93 <= 1.0 met`."""
    if record["backend"] in PEERS or ort_ms is None:
        return ""
    bound = DEPTHWISE_GOAL if record["model"] in DEPTHWISE_HEAVY else GOAL
    ratio = record["median_ms"] / ort_ms
    return f"{ratio:.2f} <= {bound}: met" if ratio <= bound else f"{ratio:.2f} > {bound}: not met"


def markdown(records: list[dict]) -> str:
    peers = [p for p in PEERS if any(r["backend"] == p for r in records)]
    median = {(r["model"], r["backend"], r["batch"]): r["median_ms"] for r in records}
    header = ["model", "backend", "batch", "min ms", "median ms", "max ms", "img/s", "GFLOP/s", "% peak",
              *(f"x {p}" for p in peers), "/ onnxruntime: goal", "compile cold s", "warm s", "peak MB"]
    numeric = [False, False, *[True] * (len(header) - 2)]
    lines = ["| " + " | ".join(header) + " |",
             "| " + " | ".join("---:" if right else "---" for right in numeric) + " |"]
    for r in records:
        ratios = []
        for peer in peers:
            peer_ms = median.get((r["model"], peer, r["batch"]))
            ratios.append(f"{peer_ms / r['median_ms']:.2f}" if peer_ms else "")
        cells = [r["model"], r["backend"], str(r["batch"]), f"{r['min_ms']:.2f}", f"{r['median_ms']:.2f}",
                 f"{r['max_ms']:.2f}",
                 f"{r['images_per_s']:.1f}", f"{r['gflops']:.1f}", f"{100 * r['peak_fraction']:.1f}", *ratios,
                 goal(r, median.get((r["model"], "onnxruntime", r["batch"]))),
                 f"{r['compile_cold_s']:.1f}", f"{r['compile_warm_s']:.2f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def bench(model: str, batch: str, repeat: int, *options: str) -> list[dict]:
    command = [sys.executable, "-m", "cnncomp", "bench", model, *options, "--batch", batch, "--repeat", str(repeat),
               "--json"]
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(done.returncode)
    return json.loads(done.stdout)


def tune(model: str, batch: str) -> None:
    """`cnncomp tune`: this machine's fastest algorithm for each layer, in the tuning record -O3 reads."""
    done = subprocess.run([sys.executable, "-m", "cnncomp", "tune", model, "--batch", batch], cwd=ROOT,
                          stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(done.returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch", default="1,8", help="batch sizes, comma-separated (default 1,8)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("--tuned", action="store_true",
                        help="tune each model on this machine first (`cnncomp tune`), so numba-cpu's rows (-O3) run "
                             "the tuned algorithms, and add a `numba-cpu untuned` row: -O2, the same passes with "
                             "resolve's default algorithms")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True).stdout.strip()
    records: list[dict] = []
    for batch in args.batch.split(","):
        for model in args.models:
            if args.tuned:
                tune(model, batch)
            records += bench(model, batch, args.repeat, "--peers")
            if args.tuned:
                records += [{**r, "backend": "numba-cpu untuned"} for r in bench(model, batch, args.repeat, "-O", "2")]
            if args.json:
                args.json.write_text(json.dumps(records, indent=1) + "\n")
    peaks = [r["gflops"] / r["peak_fraction"] for r in records]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy float32 matmul "
          f"{min(peaks):.0f} to {max(peaks):.0f} GFLOP/s; {datetime.date.today()}, commit {commit}; "
          f"`cnncomp bench MODEL --peers --batch B --repeat {args.repeat}` for each of {' '.join(args.models)} "
          f"at batch {args.batch}\n")
    print(markdown(records))


if __name__ == "__main__":
    main()
