"""Opt levels as plain lists of passes, and `optimize`, which runs one: each pass timed, the graph validated after
each, op counts recorded so a user sees which pass changed what.

    -O0: nothing
    -O1: cleanup and folding
    -O2: -O1, then lowering to the kernels backends implement, and fusion
    -O3: the passes of -O2; the backend then uses what `cnncomp tune` measured on this machine (numba-cpu: each
         conv layer's fastest algorithm, from its tuning record; runtime.TUNED_LEVEL)

Memory planning is no level's: every backend plans the arena of the graph it compiles (`cnncomp.planner`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cnncomp.errors import CnnCompError, GraphError
from cnncomp.ir import Graph
from cnncomp.passes.dense_to_conv import dense_to_conv
from cnncomp.passes.eliminate_dead import eliminate_dead
from cnncomp.passes.eliminate_identity import eliminate_identity
from cnncomp.passes.fold_batch_norm import fold_batch_norm
from cnncomp.passes.fold_constants import fold_constants
from cnncomp.passes.fuse_epilogue import fuse_epilogue
from cnncomp.passes.fuse_separable import fuse_separable
from cnncomp.passes.lower_depthwise import lower_depthwise
from cnncomp.passes.lower_pointwise import lower_pointwise

Pass = Callable[[Graph], Graph]

O0: list[Pass] = []
O1: list[Pass] = [eliminate_identity, fold_constants, fold_batch_norm, eliminate_dead]
# Lowering comes before fusion so SE's gate can ride on the pointwise conv; separable fusion last, so the
# depthwise step has its bias and activation fused already.
O2: list[Pass] = [*O1, lower_depthwise, lower_pointwise, fuse_epilogue, fuse_separable, eliminate_dead]
O3: list[Pass] = [*O2]
LEVELS: list[list[Pass]] = [O0, O1, O2, O3]

# Every pass by name, the ones no level runs by default included (dense_to_conv changes output shapes).
PASSES: dict[str, Pass] = {p.__name__: p for p in [*O3, dense_to_conv]}


class PipelineError(CnnCompError):
    """An opt level, pass name or pass option that does not exist."""


@dataclass(frozen=True)
class PassRun:
    """What one pass did: its time and the op counts before and after."""

    name: str
    seconds: float
    ops_before: Counter[str]
    ops_after: Counter[str]

    @property
    def changes(self) -> str:
        """The op counts that changed, like "batch_norm -53, conv2d -53, pointwise_conv2d +36"; "" if none."""
        ops = sorted(set(self.ops_before) | set(self.ops_after))
        deltas = [(op, self.ops_after[op] - self.ops_before[op]) for op in ops]
        return ", ".join(f"{op} {delta:+d}" for op, delta in deltas if delta)

    def describe(self) -> str:
        before, after = sum(self.ops_before.values()), sum(self.ops_after.values())
        return (f"{self.name:<20} {self.seconds * 1000:8.1f} ms  nodes {before} -> {after}"
                + (f"  ({self.changes})" if self.changes else ""))


def passes_for(level: int, disable: Sequence[str] = (), fully_convolutional: bool = False) -> list[Pass]:
    """The passes `-O level` runs, without the disabled ones; dense_to_conv first if `fully_convolutional`."""
    if not 0 <= level < len(LEVELS):
        raise PipelineError(f"unknown opt level -O{level}; expected 0 to {len(LEVELS) - 1}")
    for name in disable:
        if name not in PASSES:
            raise PipelineError(f"unknown pass {name!r}; passes: {', '.join(PASSES)}")
    chosen = ([dense_to_conv] if fully_convolutional else []) + LEVELS[level]
    return [p for p in chosen if p.__name__ not in disable]


def optimize(graph: Graph, level: int = 2, disable: Sequence[str] = (), fully_convolutional: bool = False,
             after_pass: Callable[[str, Graph], None] | None = None,
             input_shapes: Mapping[str, Sequence[int]] | None = None) -> tuple[Graph, list[PassRun]]:
    """Run the pipeline of `-O level` on a copy of `graph`: returns the result and what each pass did.
    `after_pass(name, graph)` is called after each pass (for `--dump-after`). `input_shapes` ({input: full
    shape}) are the sizes to compile for: set after dense_to_conv when `fully_convolutional` (the classifier
    slides over a larger image only once it is convolutional), else before the first pass."""
    runs = []
    pending = {name: tuple(shape) for name, shape in input_shapes.items()} if input_shapes else None
    if pending and not fully_convolutional:
        graph, pending = graph.with_input_shapes(pending), None
    for opt_pass in passes_for(level, disable, fully_convolutional):
        ops_before = Counter(node.op for node in graph.nodes)
        started = time.perf_counter()
        graph = opt_pass(graph)
        if pending and opt_pass is dense_to_conv:
            graph, pending = graph.with_input_shapes(pending), None
        seconds = time.perf_counter() - started
        try:
            graph.validate()
        except GraphError as exc:
            raise GraphError(f"pass {opt_pass.__name__} left an invalid graph: {exc}") from None
        runs.append(PassRun(opt_pass.__name__, seconds, ops_before, Counter(node.op for node in graph.nodes)))
        if after_pass is not None:
            after_pass(opt_pass.__name__, graph)
    if pending:  # dense_to_conv disabled
        graph = graph.with_input_shapes(pending)
    return graph, runs
