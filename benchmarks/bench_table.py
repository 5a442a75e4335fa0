"""The README's benchmark table, made with `cnncomp bench`.

    python benchmarks/bench_table.py                       # resnet18 and lenet5 at batch 1, with the peers
    python benchmarks/bench_table.py --models resnet50 --batch 1,8 --json results.json

Runs `cnncomp bench MODELS --peers --json` (each model, backend and batch in fresh processes: see
`cnncomp bench --help`) and prints the records as a Markdown table, with the machine and the ratio of every row to
each peer (the peer's median latency over the row's: above 1, the row is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
PEERS = ("torch", "onnxruntime")


def markdown(records: list[dict]) -> str:
    peers = [p for p in PEERS if any(r["backend"] == p for r in records)]
    median = {(r["model"], r["backend"], r["batch"]): r["median_ms"] for r in records}
    header = ["model", "backend", "batch", "min ms", "median ms", "max ms", "img/s", "GFLOP/s", "% peak",
              *(f"x {p}" for p in peers), "compile cold s", "warm s", "peak MB"]
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
                 f"{r['compile_cold_s']:.1f}", f"{r['compile_warm_s']:.2f}", f"{r['peak_rss_mb']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "lenet5"])
    parser.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the records here")
    args = parser.parse_args()
    command = [sys.executable, "-m", "cnncomp", "bench", *args.models, "--peers", "--batch", args.batch,
               "--repeat", str(args.repeat), "--json"]
    done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        sys.exit(done.returncode)
    records = json.loads(done.stdout)
    peak = records[0]["gflops"] / records[0]["peak_fraction"] if records else float("nan")
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, numpy float32 matmul "
          f"{peak:.0f} GFLOP/s; `cnncomp bench {' '.join(args.models)} --peers --batch {args.batch} "
          f"--repeat {args.repeat}`\n")
    print(markdown(records))
    if args.json:
        args.json.write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
