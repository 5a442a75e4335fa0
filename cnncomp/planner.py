"""The memory planner, a library the backends call: place every activation in one arena, reusing the memory of
dead tensors, with concat operands written straight into their slice of the concat's output and channel slices
read straight from their input.

    plan = memory_plan(graph)  # the graph's own plan if it still fits the graph, else one made now

Not a pass: every backend that runs the graph over an arena plans it the same way, so no opt level needs to.
`plan_memory` attaches a plan to a copy of the graph (saved with it), `plan_of` reads it back checked."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.limits import over_limit

PLAN_KEY = "memory_plan"
PLAN_VERSION = 2  # 2: channel slices are views of their input (`channel_slice_views`)
ALIGNMENT = 64  # bytes: a cache line, and what vector loads like (AVX-512 vectors); every arena and scratch region


def aligned(size: int) -> int:
    """`size` bytes rounded up to a whole number of ALIGNMENT blocks."""
    return -(-size // ALIGNMENT) * ALIGNMENT


@dataclass
class Buffer:
    """A block of the arena: one tensor, or a concat output together with the operands written into it, or a
    tensor together with the channel slices that are views of it."""

    name: str
    size: int
    start: int  # the first step at which the block holds data
    end: int  # the last step at which it is read
    offset: int = 0


def _slice_views(graph: Graph, planned: set[str]) -> dict[str, tuple[str, int]]:
    """channel_slice -> (its input, element offset of its first channel within one sample of the input): the
    slice's channels are one contiguous block of each sample of its input, so it reads them where they are."""
    views: dict[str, tuple[str, int]] = {}
    for node in graph.nodes:
        if node.op == "channel_slice" and node.inputs[0] in planned:
            x = graph.node(node.inputs[0]).type
            views[node.name] = (node.inputs[0], node.attrs["start"] * (x.size // x.batch // x.channels))
    return views


def _in_place_operands(graph: Graph, planned: set[str], slice_views: dict[str, tuple[str, int]]
                       ) -> dict[str, tuple[str, int]]:
    """operand -> (concat, element offset of its slice within one sample of the concat's output), for concats
    along axis 1 (a slice there is one contiguous block per sample). An operand read by more than one concat
    slot keeps its own buffer (the concats copy it), and so does a channel slice that is a view of its input (it
    cannot live in two places)."""
    slots: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "concat":
            for operand in node.inputs:
                slots[operand] = slots.get(operand, 0) + 1
    views: dict[str, tuple[str, int]] = {}
    for node in graph.nodes:
        if node.op != "concat" or node.attrs["axis"] != 1:
            continue
        offset = 0
        for operand in node.inputs:
            operand_type = graph.node(operand).type
            if operand in planned and slots[operand] == 1 and operand not in slice_views:
                views[operand] = (node.name, offset)
            offset += operand_type.size // operand_type.batch
    return views


def _place(buffers: list[Buffer]) -> int:
    """Greedy by size: largest block first, each at the lowest offset clear of the blocks already placed whose
    lifetimes overlap its own. Returns the arena size."""
    placed: list[Buffer] = []
    arena = 0
    for buffer in sorted(buffers, key=lambda b: (-b.size, b.start, b.name)):
        busy = sorted((b.offset, b.offset + b.size) for b in placed if b.start <= buffer.end and buffer.start <= b.end)
        offset = 0
        for low, high in busy:
            if offset + buffer.size <= low:
                break
            offset = max(offset, high)
        buffer.offset = offset
        placed.append(buffer)
        arena = max(arena, offset + buffer.size)
    return arena


def plan_memory(graph: Graph) -> Graph:
    """A copy of the graph with its memory plan attached: each activation (every value but constants, which live
    in the parameters) gets a byte offset in one arena; tensors whose lifetimes do not overlap share memory.

        lifetime(v) = [step of v's producer, last step reading v]  (graph outputs: to the last step)
        offset(v)   = lowest aligned offset clear of every placed tensor whose lifetime meets v's, largest first
        concat(a, b) along channels: a and b live inside the concat's block, at their channel offsets, so their
        producers write straight into it and the concat copies nothing
        channel_slice(x, start, stop): lives inside x's block at channel `start`, so it copies nothing (a slice
        that is a concat operand stays a view; that concat copies it)

    The plan is `graph.meta["memory_plan"]`, plain JSON data saved with the graph (see `plan_of`). A tensor's
    element (n, i) (i: its flat index within one sample) lives at byte
    `offset + (n * batch_stride + i) * itemsize`; `batch_stride` is the per-sample size for tensors of their
    own and the concat's per-sample size for views (`view_of`: the concat they are a slice of, or for a channel
    slice the input it is a view of; the block's owner gives `batch_stride` either way). Steps are the
    positions in `order`, which backends must follow. Preconditions: the graph is final (a rewrite after
    planning invalidates the plan; `check_plan` tells) and every concat operand slot is read by that concat only
    once. Reports `arena_bytes` against `total_bytes` (every tensor its own memory) and `lower_bound_bytes`
    (the most bytes live at one step; no arena can be smaller).
    """
    graph = graph.copy()
    order = graph.nodes
    step = {node.name: index for index, node in enumerate(order)}
    planned = {node.name for node in order if node.op != "constant"}
    last = len(order) - 1
    end = {}
    for node in order:
        if node.name in planned:
            readers = [step[c.name] for c in graph.consumers(node.name)]
            end[node.name] = last if node.name in graph.outputs else max(readers, default=step[node.name])

    slice_views = _slice_views(graph, planned)
    views = {**_in_place_operands(graph, planned, slice_views), **slice_views}

    def root(name: str) -> tuple[str, int]:
        offset = 0
        while name in views:
            name, slot = views[name]
            offset += slot
        return name, offset

    buffers: dict[str, Buffer] = {}
    for node in order:
        if node.name not in planned:
            continue
        owner, _ = root(node.name)
        buffer = buffers.setdefault(owner, Buffer(owner, aligned(graph.node(owner).type.nbytes), step[node.name],
                                                  end[node.name]))
        buffer.start, buffer.end = min(buffer.start, step[node.name]), max(buffer.end, end[node.name])
    arena = _place(list(buffers.values()))
    _check_arena(graph, arena)

    tensors: dict[str, dict[str, Any]] = {}
    for node in order:
        if node.name not in planned:
            continue
        owner, element_offset = root(node.name)
        owner_type = graph.node(owner).type
        itemsize = np.dtype(node.type.dtype).itemsize
        tensors[node.name] = {
            "offset": buffers[owner].offset + element_offset * itemsize,
            "batch_stride": owner_type.size // owner_type.batch,
            "bytes": node.type.nbytes,
            "view_of": views[node.name][0] if node.name in views else None,
        }
    in_place = [node.name for node in order
                if node.op == "concat" and all(tensors.get(o, {}).get("view_of") == node.name for o in node.inputs)]
    graph.meta[PLAN_KEY] = {
        "version": PLAN_VERSION,
        "alignment": ALIGNMENT,
        "order": [node.name for node in order],
        "arena_bytes": arena,
        "total_bytes": sum(graph.node(name).type.nbytes for name in tensors),
        "lower_bound_bytes": _lower_bound(list(buffers.values()), graph, len(order)),
        "in_place_concats": in_place,
        "channel_slice_views": list(slice_views),
        "tensors": tensors,
    }
    return graph


def _check_arena(graph: Graph, arena_bytes: int) -> None:
    reason = over_limit(f"graph {graph.name!r}: the arena of its activations", arena_bytes)
    if reason is not None:
        raise GraphError(reason)


def _lower_bound(buffers: list[Buffer], graph: Graph, steps: int) -> int:
    live = [0] * (steps + 1)
    for buffer in buffers:
        size = graph.node(buffer.name).type.nbytes
        live[buffer.start] += size
        live[buffer.end + 1] -= size
    return int(max(np.cumsum(live[:-1]), default=0))


def memory_plan(graph: Graph) -> dict[str, Any]:
    """The plan a backend lays its arena out by: the one saved with the graph while it still fits the graph, else
    one made now."""
    try:
        return plan_of(graph)
    except GraphError:
        return plan_of(plan_memory(graph))


def plan_of(graph: Graph) -> dict[str, Any]:
    """The graph's memory plan, checked against the graph; GraphError if there is none or it is stale."""
    check_plan(graph)
    return graph.meta[PLAN_KEY]


def check_plan(graph: Graph) -> None:
    """The plan covers this graph as it is now: the same nodes in the same order, each tensor's size as planned,
    every slot inside the arena."""
    plan = graph.meta.get(PLAN_KEY)
    if plan is None:
        raise GraphError(f"graph {graph.name!r} has no memory plan; make one with plan_memory")
    _check_arena(graph, plan["arena_bytes"])
    if plan["order"] != [node.name for node in graph.nodes]:
        raise GraphError(f"graph {graph.name!r}: the memory plan was made for another node order; "
                         "the graph changed after plan_memory")
    for node in graph.nodes:
        slot = plan["tensors"].get(node.name)
        if slot is None:
            if node.op != "constant":
                raise GraphError(f"{node.describe()} has no place in the memory plan")
            continue
        if slot["bytes"] != node.type.nbytes:
            raise GraphError(f"{node.describe()}: planned for {slot['bytes']} bytes, but {node.type} needs "
                             f"{node.type.nbytes}")
        itemsize = np.dtype(node.type.dtype).itemsize
        per_sample = node.type.size // node.type.batch * itemsize
        last_byte = slot["offset"] + (node.type.batch - 1) * slot["batch_stride"] * itemsize + per_sample
        if slot["offset"] < 0 or last_byte > plan["arena_bytes"]:
            raise GraphError(f"{node.describe()}: its slot ends at byte {last_byte}, past the arena's "
                             f"{plan['arena_bytes']}")


def describe_plan(plan: dict[str, Any]) -> str:
    """One line: the arena against every tensor on its own and against the lower bound."""
    arena, total, bound = plan["arena_bytes"], plan["total_bytes"], plan["lower_bound_bytes"]
    mib = 1 << 20
    return (f"arena {arena / mib:.2f} MiB = {arena / bound:.3f}x the lower bound {bound / mib:.2f} MiB "
            f"(most bytes live at once); every tensor on its own: {total / mib:.2f} MiB; "
            f"{len(plan['in_place_concats'])} concat(s) in place, "
            f"{len(plan['channel_slice_views'])} channel slice(s) as views")

