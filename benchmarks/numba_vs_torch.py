"""cnncomp numba-cpu (-O3) against PyTorch eager (and the reference backend on small models), on the zoo.

    python benchmarks/numba_vs_torch.py [--models lenet5 resnet50 ...] [--batch 1 8] [--repeat 10] [--json out.json]

All backends run in one process on the same graph and weights, interleaved (one run of each in turn), so a
slow moment of the machine hits them alike. Before each timed run: a pause of SETTLE_SECONDS, because a
library's worker threads keep spinning after its work (OpenBLAS's, behind numpy and so behind the reference
backend, about 0.1 s) and slow down whatever runs next on the two cores (ResNet-50 on numba-cpu right after a
numpy matmul: 2x slower); then one untimed run of the same backend, because after the pause its own threads and
the idle virtual cores take milliseconds to wake (LeNet-5: 11 ms instead of 0.3). Each backend is so timed as a
program that calls it in a loop sees it. Reported per model and batch: median and min latency, GFLOP/s from
the MAC count (2 FLOPs per MAC), the fraction of this machine's numpy float32 matmul rate, the ratio to PyTorch,
and numba-cpu's compile time cold (empty kernel cache) and warm (a fresh process with the cache filled), each
measured in a subprocess.

The matmul rate (2048 x 2048 on both cores) is measured at the start and again between the rounds of every
model (a 1024 x 1024 product per round, median over the rounds: column `matmul`), because a shared virtual
machine's two cores do not always deliver the same: on the project machine the rate of both cores together
drops from about 180-200 to about 125 GFLOP/s for minutes at a time while one core alone keeps its 100. `% peak`
is taken against the rate measured during the model's own rounds.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

import numpy as np
import vs_torch  # this folder's: the command line and compile times both scripts share

from cnncomp.bench import matmul_peak_gflops

MODELS = ["lenet5", "alexnet", "vgg16", "resnet18", "resnet50", "resnet152", "googlenet", "xception",
          "efficientnet_b0", "unet", "fcn8s"]
SETTLE_SECONDS = 0.25
REFERENCE_MAX_MACS = 2e9  # the numpy reference joins in on models up to this size


def measure(model: str, batch: int, repeat: int, with_compile: bool) -> list[dict]:
    import backends.numba_cpu as numba_cpu
    import backends.torch_eager as torch_eager
    from backends import reference
    from cnncomp.driver import load_model
    from cnncomp.pipeline import optimize
    from cnncomp.summary import summarize

    graph = load_model(model, batch=batch)
    macs = summarize(graph)["macs"]
    optimized, _ = optimize(graph, 3)
    runners = {"numba-cpu": numba_cpu.compile(optimized, {"progress": False}), "torch": torch_eager.compile(graph)}
    if macs <= REFERENCE_MAX_MACS * batch:
        runners["reference"] = reference.compile(graph)
    inputs = {n.name: np.random.default_rng(0).standard_normal(n.shape).astype(np.float32) for n in graph.inputs}
    times: dict[str, list[float]] = {name: [] for name in runners}
    matmul_rates = []
    for _ in range(repeat):
        for name, run in runners.items():
            time.sleep(SETTLE_SECONDS)
            run(inputs)
            start = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - start)
        time.sleep(SETTLE_SECONDS)
        matmul_rates.append(matmul_peak_gflops(1024, 1))
    matmul_rate = statistics.median(matmul_rates)
    cold, warm = vs_torch.compile_seconds("numba-cpu", model, batch) if with_compile else (None, None)
    torch_median = statistics.median(times["torch"])
    records = []
    for name, samples in times.items():
        median = statistics.median(samples)
        gflops = 2 * macs / median / 1e9
        records.append({
            "model": model, "backend": name, "batch": batch,
            "median_ms": median * 1e3, "min_ms": min(samples) * 1e3, "images_per_s": batch / median,
            "gflops": gflops, "matmul_gflops": matmul_rate, "peak_fraction": gflops / matmul_rate,
            "vs_torch": torch_median / median,
            "compile_cold_s": cold if name == "numba-cpu" else None,
            "compile_warm_s": warm if name == "numba-cpu" else None,
        })
    return records


def table(records: list[dict]) -> str:
    header = (f"{'model':<16}{'batch':>6}  {'backend':<10}{'median ms':>10}{'min ms':>9}{'img/s':>8}{'GFLOP/s':>9}"
              f"{'matmul':>7}{'% peak':>7}{'x torch':>8}{'cold s':>8}{'warm s':>8}")
    lines = [header, "-" * len(header)]
    for r in records:
        cold = f"{r['compile_cold_s']:.1f}" if r["compile_cold_s"] is not None else ""
        warm = f"{r['compile_warm_s']:.1f}" if r["compile_warm_s"] is not None else ""
        lines.append(f"{r['model']:<16}{r['batch']:>6}  {r['backend']:<10}{r['median_ms']:>10.1f}{r['min_ms']:>9.1f}"
                     f"{r['images_per_s']:>8.1f}{r['gflops']:>9.1f}{r['matmul_gflops']:>7.0f}"
                     f"{100 * r['peak_fraction']:>6.0f}%"
                     f"{r['vs_torch']:>8.2f}{cold:>8}{warm:>8}")
    return "\n".join(lines)


def markdown(records: list[dict]) -> str:
    """The records as the Markdown table benchmarks/README.md publishes."""
    lines = ["| model | batch | backend | median ms | min ms | GFLOP/s | matmul GFLOP/s | % peak | x torch | "
             "compile cold s | warm s |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in records:
        cold = f"{r['compile_cold_s']:.1f}" if r["compile_cold_s"] is not None else ""
        warm = f"{r['compile_warm_s']:.1f}" if r["compile_warm_s"] is not None else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['backend']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{r['gflops']:.1f} | {r['matmul_gflops']:.0f} | {100 * r['peak_fraction']:.0f}% | "
                     f"{r['vs_torch']:.2f} | {cold} | {warm} |")
    return "\n".join(lines)


def main() -> None:
    parser = vs_torch.parser(__doc__.splitlines()[0], MODELS, batches=[1, 8], repeat=10)
    parser.add_argument("--markdown", action="store_true", help="also print the table in Markdown")
    args = parser.parse_args()
    peak = matmul_peak_gflops()
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} cores, numpy matmul peak {peak:.0f} GFLOP/s")
    records = []
    for model in args.models:
        for batch in args.batch:
            records += measure(model, batch, args.repeat, with_compile=batch == args.batch[0]
                               and not args.no_compile_times)
            print(table([r for r in records if r["model"] == model and r["batch"] == batch]).split("\n", 2)[-1],
                  flush=True)
    print()
    print(table(records))
    if args.markdown:
        print()
        print(markdown(records))
    if args.json:
        args.json.write_text(json.dumps({"peak_gflops": peak, "records": records}, indent=1))


if __name__ == "__main__":
    main()
