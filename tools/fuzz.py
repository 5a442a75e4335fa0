"""The long differential fuzz run: random valid graphs on every backend at every opt level against the reference at
-O0; each failing graph shrunk and written as a `.cnn` file that reproduces it with one command.

    python tools/fuzz.py --examples 5000                        # reference, numba-cpu, torch, onnxruntime; -O0..-O3
    python tools/fuzz.py --examples 500 --backends numba-cpu --levels 2,3 --profile ci --seed 7
    python tools/fuzz.py --cuda-examples 40                     # numba-cuda in the simulator too (tiny graphs)
    python tools/fuzz.py --replay fuzz-failures/numba-cpu-O3-1a2b3c4d.cnn [--reduce]

Prints a table of graphs compared per backend and opt level, pairs skipped (a peer that cannot express the graph)
and mismatches, and the reproducer of each distinct failure (at most `--reduce-per-kind` per backend, level and
kind of failure are shrunk). Graphs come from tests/fuzz/graphs.py (`--profile wide` by default: wider attribute
ranges than the CI job); `--json` prints the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402

from cnncomp.errors import CnnCompError  # noqa: E402
from tests.fuzz.differential import (  # noqa: E402
    CUDA,
    IN_PROCESS,
    LEVELS,
    CudaRunner,
    Mismatch,
    Report,
    check,
    fragile,
)
from tests.fuzz.graphs import PROFILES, TINY, FuzzCase, fuzz_cases  # noqa: E402
from tests.fuzz.reduce import reduce  # noqa: E402
from tests.fuzz.reproduce import failures_folder, load_reproducer, replay, write_reproducer  # noqa: E402
from tests.helpers import random_inputs  # noqa: E402


class Campaign:
    """Counts of one run, and the failures found."""

    def __init__(self, backends: list[str], levels: list[int], out: Path, reduce_per_kind: int,
                 reduce_seconds: float) -> None:
        self.backends, self.levels, self.out = backends, levels, out
        self.reduce_per_kind, self.reduce_seconds = reduce_per_kind, reduce_seconds
        self.graphs = 0
        self.discarded = 0
        self.compared: Counter[tuple[str, int]] = Counter()
        self.skipped: Counter[tuple[str, int]] = Counter()
        self.mismatched: Counter[tuple[str, int]] = Counter()
        self.kinds: Counter[tuple[str, str, str]] = Counter()  # (backend, levels failing, kind) -> graphs
        self.reproducers: list[dict[str, Any]] = []

    def record(self, case: FuzzCase, report: Report, cuda: CudaRunner | None) -> None:
        self.graphs += 1
        self.compared.update(report.compared)
        self.skipped.update(report.skipped.keys())
        self.mismatched.update({(m.backend, m.level) for m in report.mismatches})
        # One failure may show at several levels: shrink it once, at the lowest, per backend and kind.
        first: dict[tuple[str, str], Mismatch] = {}
        for mismatch in sorted(report.mismatches, key=lambda m: m.level):
            first.setdefault((mismatch.backend, _kind(case, mismatch)), mismatch)
        for (backend, kind), mismatch in first.items():
            levels = "".join(sorted({str(m.level) for m in report.mismatches
                                     if m.backend == backend and _kind(case, m) == kind}))
            key = (backend, levels, kind)
            self.kinds[key] += 1
            if self.kinds[key] <= self.reduce_per_kind:
                self.reproducers.append(self.shrink(case, mismatch, cuda))

    def shrink(self, case: FuzzCase, mismatch: Mismatch, cuda: CudaRunner | None) -> dict[str, Any]:
        def fails(candidate: FuzzCase) -> bool:
            if fragile(candidate.graph, random_inputs(candidate.graph, candidate.seed), candidate.seed):
                return False
            found = check(candidate, [mismatch.backend], [mismatch.level], cuda=cuda).mismatches
            return any(_kind(candidate, m) == _kind(case, mismatch) for m in found)

        started = time.monotonic()
        small = reduce(case, fails, self.reduce_seconds)
        final = check(small, [mismatch.backend], [mismatch.level], cuda=cuda).mismatches
        path = write_reproducer(small, final[0] if final else mismatch, self.out)
        print(f"  {mismatch.describe()[:160]}\n  reduced {len(case.graph)} -> {len(small.graph)} nodes in "
              f"{time.monotonic() - started:.0f} s: {path}", flush=True)
        return {"backend": mismatch.backend, "level": mismatch.level, "detail": mismatch.detail,
                "nodes": len(small.graph), "path": str(path)}

    def table(self, cuda_levels: list[int]) -> str:
        rows = [f"{'backend':<12} {'level':>5} {'graphs':>7} {'skipped':>8} {'mismatches':>10}"]
        for backend in self.backends + ([CUDA] if cuda_levels else []):
            for level in (cuda_levels if backend == CUDA else self.levels):
                pair = (backend, level)
                rows.append(f"{backend:<12} {'-O' + str(level):>5} {self.compared[pair]:>7} {self.skipped[pair]:>8} "
                            f"{self.mismatched[pair]:>10}")
        return "\n".join(rows)

    def figures(self) -> dict[str, Any]:
        return {"graphs": self.graphs, "discarded_fragile": self.discarded,
                "pairs": [{"backend": b, "level": lv, "graphs": self.compared[(b, lv)],
                           "skipped": self.skipped[(b, lv)], "mismatches": self.mismatched[(b, lv)]}
                          for (b, lv) in sorted(set(self.compared) | set(self.skipped))],
                "kinds": [{"backend": b, "levels": lv, "kind": k, "graphs": n} for (b, lv, k), n in self.kinds.items()],
                "reproducers": self.reproducers}


def _kind(case: FuzzCase, mismatch: Mismatch) -> str:
    """What kind of failure: the exception's type, or the op computing the output that differs."""
    if not mismatch.output:
        return mismatch.detail.split(":")[0]
    return f"values of {case.graph.node(mismatch.output).op}"


def run(campaign: Campaign, examples: int, profile_name: str, seed: int, cuda: CudaRunner | None,
        backends: list[str], levels: list[int], progress_every: int = 50) -> None:
    started = time.monotonic()

    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @hypothesis_seed(seed)
    @given(fuzz_cases(PROFILES[profile_name]))
    def one(case: FuzzCase) -> None:
        if fragile(case.graph, random_inputs(case.graph, case.seed), case.seed):
            campaign.discarded += 1
            return
        campaign.record(case, check(case, backends, levels, cuda=cuda), cuda)
        if campaign.graphs % progress_every == 0:
            print(f"{campaign.graphs} graphs ({profile_name}), {sum(campaign.mismatched.values())} mismatches, "
                  f"{time.monotonic() - started:.0f} s", flush=True)

    one()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=5000, help="graphs for the in-process backends")
    parser.add_argument("--backends", default=",".join(IN_PROCESS), help=f"comma-separated, from {IN_PROCESS}")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--profile", default="wide", choices=sorted(PROFILES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cuda-examples", type=int, default=0,
                        help="graphs (the tiny profile) for numba-cuda in the simulator")
    parser.add_argument("--out", type=Path, default=None, help="folder for reproducers (default: see reproduce.py)")
    parser.add_argument("--reduce-per-kind", type=int, default=2)
    parser.add_argument("--reduce-seconds", type=float, default=180.0)
    parser.add_argument("--replay", type=Path, help="run one reproducer file again")
    parser.add_argument("--reduce", action="store_true", help="with --replay: shrink it further, write the result")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    if args.replay is not None:
        return _replay(args.replay, args.reduce, args.out or args.replay.parent)

    backends = [b for b in args.backends.split(",") if b]
    levels = [int(level) for level in args.levels.split(",") if level]
    out = args.out or failures_folder()
    campaign = Campaign(backends, levels, out, args.reduce_per_kind, args.reduce_seconds)
    started = time.monotonic()
    cuda_levels: list[int] = []
    # Interrupted (Ctrl-C, or SIGTERM from a time limit), a run still reports what it tried.
    signal.signal(signal.SIGTERM, _interrupt)
    interrupted = False
    try:
        if args.examples:
            run(campaign, args.examples, args.profile, args.seed, None, [b for b in backends if b != CUDA], levels)
        if args.cuda_examples:
            cuda_levels = levels
            runner = CudaRunner()
            try:
                run(campaign, args.cuda_examples, TINY.name, args.seed, runner, [CUDA], levels, progress_every=5)
            finally:
                runner.close()
    except KeyboardInterrupt:
        interrupted = True
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({**campaign.figures(), "seconds": round(seconds), "interrupted": interrupted}, indent=1))
    else:
        print(campaign.table(cuda_levels))
        print(f"{campaign.graphs} graphs in {seconds:.0f} s ({campaign.discarded} discarded as fragile near-ties); "
              f"{len(campaign.reproducers)} reproducers in {out}" + (" (interrupted)" if interrupted else ""))
    return 1 if campaign.reproducers else 0


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _replay(path: Path, shrink: bool, out: Path) -> int:
    try:
        case, backend, level = load_reproducer(path)
    except (OSError, CnnCompError) as error:
        print(f"fuzz: error: {error}", file=sys.stderr)
        return 2
    report = replay(path)
    for mismatch in report.mismatches:
        print(mismatch.describe())
    if not report.mismatches:
        print(f"{path}: {backend} -O{level} agrees with the reference at -O0")
        return 0
    if shrink:
        cuda = CudaRunner() if backend == CUDA else None
        campaign = Campaign([backend], [level], out, 1, 600.0)
        try:
            campaign.shrink(case, report.mismatches[0], cuda)
        finally:
            if cuda is not None:
                cuda.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
