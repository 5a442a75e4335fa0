"""Compile every kernel the backend generates for a graph to PTX, without a GPU: proof that each is real device
code (the simulator runs kernels as plain Python and cannot tell), and a look at what the GPU would run.

numba-cuda's `compile_ptx` needs NVVM (the `nvidia-nvvm` wheel of `numba-cuda[cu13]`) but no driver, so this runs
on any machine with the `cuda` extra installed, with the simulator off (NUMBA_ENABLE_CUDASIM unset or 0). Each
kernel is compiled with the options of its `cuda.jit` decorator, for the argument types its launches pass.

    python -m backends.numba_cuda.ptx resnet18 unet -O 0 3 --cc 8.0 9.0 --jobs 2

compiles every distinct kernel of those zoo models (all of them with no name) once per compute capability, and
prints a summary; `--json` gives every compilation. Beyond compiling, each PTX is checked for double-precision
arithmetic (a float64 slipped into a float32 kernel runs 2-64x slower) and for local memory (per-thread arrays
the compiler could not keep in registers). The exit status is 1 if any kernel failed to compile or has either.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re
import sys
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from backends.numba_cuda import argument_types, cuda_module, lower_graph
from backends.numba_cuda.kernels import KernelCache, KernelSource
from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph
from cnncomp.ops import get_op

COMPUTE_CAPABILITIES = ((8, 0), (9, 0))
# The options of a cuda.jit decorator that compile_ptx takes too.
PTX_OPTIONS = ("debug", "lineinfo", "fastmath", "opt", "forceinline", "launch_bounds")
# An f64 arithmetic or conversion instruction ("cvt.f64.f32", "fma.rn.f64", "setp.lt.f64", ...), predicated or not.
F64_INSTRUCTION = re.compile(r"^\s*(?:@!?%p\d+\s+)?[a-z]+(?:\.[a-z0-9]+)*\.f64\b", re.MULTILINE)
LOCAL_MEMORY = re.compile(r"^\s*\.local\s", re.MULTILINE)


@dataclass(frozen=True)
class Task:
    """One kernel with one argument signature: what gets compiled (once per compute capability)."""

    kernel: KernelSource
    signature: tuple[Any, ...]
    nodes: tuple[str, ...]  # where it came from, for messages


@dataclass(frozen=True)
class KernelPtx:
    """One kernel compiled for one argument signature and compute capability; `error` if it did not compile."""

    module: str
    family: str
    signature: str
    cc: str
    ptx_bytes: int = 0
    f64_instructions: int = 0
    local_memory: bool = False
    seconds: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and not self.f64_instructions and not self.local_memory


def tasks(graph: Graph, into: dict[tuple[str, str], Task] | None = None) -> dict[tuple[str, str], Task]:
    """The distinct (kernel, argument types) of the graph's launches, added to `into`."""
    into = {} if into is None else into
    for launch in lower_graph(graph).launches:
        signature = argument_types(launch.args)
        key = (launch.kernel.module_name, str(signature))
        known = into.get(key)
        nodes = (*known.nodes, f"{graph.name}:{launch.node}") if known else (f"{graph.name}:{launch.node}",)
        into[key] = Task(launch.kernel, signature, nodes[:3])
    return into


def representatives(all_tasks: Iterable[Task]) -> list[Task]:
    """One task per kernel template (code that differs in more than its constants): the one with the most
    accumulators per thread (the largest unrolled loops: where local memory would show first), then the most
    taps."""
    def weight(task: Task) -> tuple[int, int]:
        constants = dict(task.kernel.specialization)
        return (constants.get("MO", 1) * constants.get("MP", 1),
                constants.get("KH", 1) * constants.get("KW", 1))

    chosen: dict[tuple[str, str], Task] = {}
    for task in all_tasks:
        key = (task.kernel.family, task.kernel.template)
        if key not in chosen or weight(task) > weight(chosen[key]):
            chosen[key] = task
    return list(chosen.values())


def compile_task(task: Task, ccs: Iterable[tuple[int, int]], cache_dir: Path | None = None,
                 ptx_dir: Path | None = None) -> list[KernelPtx]:
    """Compile one task for each compute capability, with the options of the kernel's decorator."""
    cuda = cuda_module(require_device=False)
    if cuda.compile_ptx is None:
        raise CnnCompError("PTX compilation needs numba-cuda without the simulator: unset NUMBA_ENABLE_CUDASIM")
    kernel = task.kernel
    dispatcher = KernelCache(cache_dir).load(kernel)
    options = {key: dispatcher.targetoptions[key] for key in PTX_OPTIONS if key in dispatcher.targetoptions}
    results = []
    for cc in ccs:
        name = f"{cc[0]}.{cc[1]}"
        start = time.perf_counter()
        try:
            ptx, _ = cuda.compile_ptx(dispatcher.py_func, task.signature, cc=cc, **options)
        except Exception:  # every failure is reported, with the kernel and the nodes it serves
            error = traceback.format_exc(limit=-3)
            results.append(KernelPtx(kernel.module_name, kernel.family, str(task.signature), name,
                                     error=f"{', '.join(task.nodes)}: {error}"))
            continue
        if ptx_dir is not None:
            ptx_dir.mkdir(parents=True, exist_ok=True)
            (ptx_dir / f"{kernel.module_name}.sm{cc[0]}{cc[1]}.ptx").write_text(ptx)
        results.append(KernelPtx(kernel.module_name, kernel.family, str(task.signature), name, len(ptx),
                                 len(F64_INSTRUCTION.findall(ptx)), bool(LOCAL_MEMORY.search(ptx)),
                                 time.perf_counter() - start))
    return results


def _compile_in_worker(job: tuple[Task, list[tuple[int, int]], Path | None, Path | None]) -> list[KernelPtx]:
    return compile_task(*job)


def compile_all(all_tasks: Iterable[Task], ccs: Sequence[tuple[int, int]] = COMPUTE_CAPABILITIES,
                jobs: int = 1, cache_dir: Path | None = None, ptx_dir: Path | None = None) -> list[KernelPtx]:
    """Compile every task, in `jobs` worker processes (NVVM is single-threaded)."""
    work = [(task, list(ccs), cache_dir, ptx_dir) for task in all_tasks]
    if jobs <= 1:
        return [result for job in work for result in _compile_in_worker(job)]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        return [result for results in pool.imap_unordered(_compile_in_worker, work) for result in results]


def zero_weights(graph: Graph) -> Graph:
    """Give every parameter the graph lacks zeros: kernels depend on shapes, never on weight values, and zeros
    cost nothing to make (VGG-16's 138M random weights take seconds)."""
    for node in graph.nodes:
        specs = get_op(node.op).params(node.attrs, [graph.node(name).type for name in node.inputs])
        missing = {key: np.zeros(spec.shape, np.float32) for key, spec in specs.items()
                   if f"{node.name}.{key}" not in graph.params}
        if missing:
            graph.set_node_params(node.name, missing)
    return graph


def zoo_graph(name: str, level: int, batch: int = 1) -> Graph:
    """A zoo model (structure, zero weights) after the `-O level` pipeline, through the public API as any user
    would get it (compiled for the reference backend, which generates nothing)."""
    import cnncomp

    graph = zero_weights(cnncomp.load_model(name, batch=batch, structure_only=True))
    return cnncomp.compile(graph, backend="reference", opt_level=level, batch=None).graph


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backends.numba_cuda.ptx", description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="*", help="zoo models (default: all)")
    parser.add_argument("-O", dest="levels", type=int, nargs="+", default=[0, 3], help="opt levels (default 0 3)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes (default 1)")
    parser.add_argument("--cc", nargs="+", default=["8.0", "9.0"], help="compute capabilities (default 8.0 9.0)")
    parser.add_argument("--jobs", type=int, default=1, help="compiler processes (default 1)")
    parser.add_argument("--representatives", action="store_true",
                        help="one kernel per template (see `representatives`), not every kernel")
    parser.add_argument("--cache-dir", type=Path, help="kernel cache (default: as the backend)")
    parser.add_argument("--ptx-dir", type=Path, help="write each PTX there")
    parser.add_argument("--json", action="store_true", help="every compilation as JSON on stdout")
    args = parser.parse_args(argv)
    from cnncomp.driver import zoo_models

    names = args.models or sorted(zoo_models())
    ccs = [tuple(int(part) for part in cc.split(".")) for cc in args.cc]
    start = time.perf_counter()
    found: dict[tuple[str, str], Task] = {}
    for name in names:
        for level in args.levels:
            for batch in args.batch:
                tasks(zoo_graph(name, level, batch), found)
    lowered = time.perf_counter() - start
    chosen = representatives(found.values()) if args.representatives else list(found.values())
    results = compile_all(chosen, ccs, args.jobs, args.cache_dir, args.ptx_dir)
    failed = [result for result in results if not result.ok]
    if args.json:
        json.dump([asdict(result) for result in results], sys.stdout)
    for result in failed:
        problem = result.error or (f"{result.f64_instructions} f64 instructions" if result.f64_instructions
                                   else "local memory")
        print(f"{result.module} (sm_{result.cc.replace('.', '')}): {problem}", file=sys.stderr)
    targets = ", ".join(f"sm_{major}{minor}" for major, minor in ccs)
    print(f"{len(names)} model(s) at -O {' '.join(map(str, args.levels))}, batch {' '.join(map(str, args.batch))}: "
          f"{len(found)} distinct kernels, {len(chosen)} compiled, {len(results)} compilations to PTX ({targets}), "
          f"{len(failed)} failed; lowering {lowered:.1f}s, total {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
