"""cnncomp numba-cuda (-O3) against PyTorch on the same GPU, on the zoo. Run it on a machine with an NVIDIA GPU.

    python benchmarks/cuda_vs_torch.py [--models resnet18 resnet50 ...] [--batch 1 32] [--repeat 20] [--json out.json]

Both run in one process on the same graph and weights, interleaved (one call of each in turn). A call is what a
user sees: host arrays in, host arrays out (numba-cuda: one copy in, the launches, one copy out). PyTorch runs the
graph as written (-O0) op by op with torch.nn.functional on CUDA tensors (the torch backend's rules, cuDNN
convolutions in float32: PyTorch's default TF32 convolutions are turned off). Reported per model and batch: median
and min latency, images/s, GFLOP/s from the MAC count (2 FLOPs per MAC), the ratio to PyTorch, the largest
difference between the two outputs, and numba-cuda's compile time with an empty kernel cache and again with it
filled (each in a fresh process).

Without a GPU it stops with the backend's message. Under NUMBA_ENABLE_CUDASIM=1 it runs numba-cuda in the
simulator (0.5-2 ms per simulated thread: tiny models only, to check this script) and leaves PyTorch out.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import numpy as np
import vs_torch  # this folder's: the command line and compile times both scripts share

MODELS = ["resnet18", "resnet50", "vgg16", "efficientnet_b0", "unet"]


def torch_cuda(graph: Any) -> Any | None:
    """The torch backend's executable with its weights on the GPU and a call that moves inputs there and outputs
    back; None without a CUDA build of PyTorch or a GPU."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from backends.torch_eager import TorchExecutable

    class TorchCuda(TorchExecutable):
        def __init__(self, graph: Any) -> None:
            super().__init__(graph)
            self.params = {name: {key: value.cuda() for key, value in params.items()}
                           for name, params in self.params.items()}

        def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            with torch.inference_mode():
                values = {name: torch.from_numpy(array).cuda() for name, array in inputs.items()}
                for node in self.graph.nodes:
                    if node.op != "input":
                        values[node.name] = self._run(node, [values[i] for i in node.inputs])
                return {name: values[name].cpu().numpy() for name in self.graph.outputs}

    torch.backends.cudnn.benchmark = True
    # PyTorch computes convolutions in TF32 by default (a 10-bit mantissa); both sides compute in float32 here.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    return TorchCuda(graph)


def measure(model: str, batch: int, repeat: int, with_compile: bool) -> list[dict[str, Any]]:
    import backends.numba_cuda as numba_cuda
    from cnncomp.driver import load_model
    from cnncomp.pipeline import optimize
    from cnncomp.summary import summarize

    graph = load_model(model, batch=batch)
    macs = summarize(graph)["macs"]
    optimized, _ = optimize(graph, 3)
    runners = {"numba-cuda": numba_cuda.compile(optimized, {"progress": False})}
    if not numba_cuda.simulating() and (peer := torch_cuda(graph)) is not None:
        runners["torch-cuda"] = peer
    inputs = {n.name: np.random.default_rng(0).standard_normal(n.shape).astype(np.float32) for n in graph.inputs}
    outputs = {name: run(inputs) for name, run in runners.items()}  # also the warm-up
    difference = None
    if "torch-cuda" in outputs:
        difference = max(float(np.abs(outputs["numba-cuda"][name] - outputs["torch-cuda"][name]).max())
                         for name in graph.outputs)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeat):
        for name, run in runners.items():
            start = time.perf_counter()
            run(inputs)
            times[name].append(time.perf_counter() - start)
    cold, warm = vs_torch.compile_seconds("numba-cuda", model, batch) if with_compile else (None, None)
    peer_median = statistics.median(times["torch-cuda"]) if "torch-cuda" in times else None
    records = []
    for name, samples in times.items():
        median = statistics.median(samples)
        records.append({
            "model": model, "backend": name, "batch": batch, "median_ms": median * 1e3, "min_ms": min(samples) * 1e3,
            "images_per_s": batch / median, "gflops": 2 * macs / median / 1e9,
            "vs_torch": peer_median / median if peer_median else None, "max_difference": difference,
            "compile_cold_s": cold if name == "numba-cuda" else None,
            "compile_warm_s": warm if name == "numba-cuda" else None,
        })
    return records


def table(records: list[dict[str, Any]]) -> str:
    header = (f"{'model':<16}{'batch':>6}  {'backend':<11}{'median ms':>10}{'min ms':>9}{'img/s':>9}{'GFLOP/s':>9}"
              f"{'x torch':>8}{'max diff':>10}{'cold s':>8}{'warm s':>8}")
    lines = [header, "-" * len(header)]

    def optional(value: float | None, form: str) -> str:
        return "" if value is None else format(value, form)

    for r in records:
        lines.append(f"{r['model']:<16}{r['batch']:>6}  {r['backend']:<11}{r['median_ms']:>10.2f}{r['min_ms']:>9.2f}"
                     f"{r['images_per_s']:>9.1f}{r['gflops']:>9.1f}{optional(r['vs_torch'], '.2f'):>8}"
                     f"{optional(r['max_difference'], '.1e'):>10}{optional(r['compile_cold_s'], '.1f'):>8}"
                     f"{optional(r['compile_warm_s'], '.1f'):>8}")
    return "\n".join(lines)


def main() -> None:
    args = vs_torch.parser(__doc__.splitlines()[0], MODELS, batches=[1, 32], repeat=20).parse_args()
    import backends.numba_cuda as numba_cuda
    from cnncomp.errors import CnnCompError

    try:
        cuda = numba_cuda.cuda_module()
    except CnnCompError as exc:
        sys.exit(f"benchmarks/cuda_vs_torch.py: {exc}")
    device = "the simulator" if numba_cuda.simulating() else cuda.get_current_device().name
    print(f"device: {device if isinstance(device, str) else device.decode()}")
    records = []
    for model in args.models:
        for batch in args.batch:
            try:
                records += measure(model, batch, args.repeat, batch == args.batch[0] and not args.no_compile_times)
            except CnnCompError as exc:  # too big for the memory limit, say: the other rows still run
                print(f"{model} at batch {batch}: {exc}", flush=True)
                continue
            print(table([r for r in records if r["model"] == model and r["batch"] == batch]).split("\n", 2)[-1],
                  flush=True)
            if args.json:  # after each row, so that a run stopped early still leaves what it measured
                args.json.write_text(json.dumps({"device": str(device), "records": records}, indent=1))
    print()
    print(table(records))


if __name__ == "__main__":
    main()
