"""From graph nodes to kernel launches: for each op, which template, specialized how, launched with what grid and
block, and with what arguments.

Everything is decided here once, at compile time and without a device: the place of every value in the arena
(element offsets), weights in the layout each kernel reads (as host arrays; the executable copies each to the
device once), launch shapes from the node's shapes. No launch shape assumes square maps or sizes that divide a
tile: every kernel guards its loads and stores.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from backends.numba_common import lowering_of, lowering_table
from backends.numba_cuda import resolve
from backends.numba_cuda.templates import conv, layers, pool, tensor
from backends.numba_cuda.templates.common import (
    MAX_BLOCKS,
    UNUSED,
    WARP,
    Arena,
    Launch,
    Status,
    elementwise_launch,
    epilogue_args,
    next_power_of_two,
)
from cnncomp.ir import Graph, Node
from cnncomp.ops.pool import adaptive_bins
from cnncomp.ops.resize import interpolation_taps

# Largest block of the reducing kernels (global average pool, softmax): a power of two.
REDUCE_THREADS = 256
# Global average pooling sums planes of up to SMALL_PLANE pixels (the maps at the end of a network) in one thread
# each; larger ones in a block, at least POOL_PIXELS_PER_THREAD pixels per thread (256 threads from 2048 pixels).
SMALL_PLANE = 256
POOL_PIXELS_PER_THREAD = 8


@dataclass(frozen=True)
class Slot:
    """Where a value lives in the arena, in elements of its dtype: sample n starts at `at + n * batch`, and holds
    the value's per-sample elements contiguously (C, H, W order)."""

    at: int
    batch: int
    shape: tuple[int, ...]
    dtype: str

    @property
    def arena(self) -> Arena:
        return Arena.INT if self.dtype == "int64" else Arena.FLOAT

    @property
    def per_sample(self) -> int:
        return int(np.prod(self.shape[1:]))

    @property
    def contiguous(self) -> bool:
        return self.batch == self.per_sample or self.shape[0] == 1


class LoweringContext:
    """What a lowering function reads: the graph, the arena slot of every value, parameters, the memory plan."""

    def __init__(self, graph: Graph, slots: Mapping[str, Slot], plan: Mapping[str, Any]) -> None:
        self.graph = graph
        self.slots = slots
        self.plan = plan
        self.status_slots = 0

    def tensor(self, name: str) -> tuple[Arena, int, int]:
        """The kernel arguments of a value: the arena (as float32 or int64), its offset, its batch stride."""
        slot = self.slots[name]
        return slot.arena, slot.at, slot.batch

    def shape(self, name: str) -> tuple[int, ...]:
        return self.graph.node(name).shape

    def params(self, node: Node) -> dict[str, np.ndarray]:
        return self.graph.node_params(node.name)

    def written_in_place(self, operand: str, concat: str) -> bool:
        """Whether the memory plan put `operand` inside `concat`'s output, so its producer already wrote it."""
        slot = self.plan["tensors"].get(operand)
        return slot is not None and slot["view_of"] == concat

    def viewed_in_place(self, node: Node) -> bool:
        """Whether the memory plan made `node` (a channel slice) a view of its input, so there is nothing to copy."""
        return self.plan["tensors"][node.name]["view_of"] == node.inputs[0]

    def new_status_slot(self) -> int:
        self.status_slots += 1
        return self.status_slots - 1


def _residual(ctx: LoweringContext, node: Node, operand: int = 1) -> tuple[Any, int, int]:
    return ctx.tensor(node.inputs[operand]) if node.attrs.get("residual") else (Arena.FLOAT, 0, 0)


def _pixels(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape[2:]))


def _elementwise(node: Node, kernel, args: tuple[Any, ...], total: int) -> list[Launch]:
    grid, block = elementwise_launch(total)
    return [Launch(kernel, grid, block, args, node.name)]


def _gemm(node: Node, ctx: LoweringContext, variant: str, weight: np.ndarray, extra: tuple[Any, ...],
          depth: int, groups: int, in_hw: tuple[int, int], mid: Mapping[str, Any] | None = None,
          residual_operand: int = 1) -> list[Launch]:
    n, o, oh, ow = node.shape
    c = ctx.shape(node.inputs[0])[1]
    tile = conv.gemm_tile(o // groups, n * oh * ow, groups)
    kernel = conv.gemm(variant, node.attrs, tile, mid)
    args = (*ctx.tensor(node.inputs[0]), *extra, np.ascontiguousarray(weight.reshape(o, depth)),
            *epilogue_args(ctx.params(node), node.attrs), *_residual(ctx, node, residual_operand),
            *ctx.tensor(node.name), n, c, *in_hw, o, oh, ow, groups, depth)
    return [Launch(kernel, tile.grid(n * oh * ow, o // groups, groups), (tile.lanes_p, tile.lanes_o), args,
                   node.name)]


def _depthwise(node: Node, ctx: LoweringContext, weight: np.ndarray) -> list[Launch]:
    n, channels, oh, ow = node.shape
    c, h, w = ctx.shape(node.inputs[0])[1:]
    tile = conv.plane_tile(oh, ow)
    grid, block = tile.launch(oh, ow, n * channels)
    args = (*ctx.tensor(node.inputs[0]), np.ascontiguousarray(weight.reshape(channels, -1)),
            *epilogue_args(ctx.params(node), node.attrs), *_residual(ctx, node), *ctx.tensor(node.name),
            n, c, h, w, oh, ow)
    return [Launch(conv.depthwise(node.attrs, tile), grid, block, args, node.name)]


def lower_conv2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    """The kernel of the algorithm `resolve` chooses."""
    weight = ctx.params(node)["weight"]
    c, h, w = ctx.shape(node.inputs[0])[1:]
    algorithm = resolve.conv2d_algorithm(node.attrs, ctx.graph.node(node.inputs[0]).type)
    if algorithm == "depthwise":
        return _depthwise(node, ctx, weight)
    if algorithm == "pointwise":
        return _gemm(node, ctx, "pointwise", weight, (), c, 1, (h, w))
    return _gemm(node, ctx, "conv", weight, (), weight[0].size, node.attrs["groups"], (h, w))


def lower_depthwise_conv2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    return _depthwise(node, ctx, ctx.params(node)["weight"])


def lower_pointwise_conv2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    c, h, w = ctx.shape(node.inputs[0])[1:]
    weight = ctx.params(node)["weight"]
    if node.attrs["gate"]:
        return _gemm(node, ctx, "gated", weight, ctx.tensor(node.inputs[1]), c, 1, (h, w), residual_operand=2)
    return _gemm(node, ctx, "pointwise", weight, (), c, 1, (h, w))


def lower_separable_conv2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    params, attrs = ctx.params(node), node.attrs
    c, h, w = ctx.shape(node.inputs[0])[1:]
    depthwise_weight = params["depthwise_weight"]
    mid_channels = depthwise_weight.shape[0]
    extra = (np.ascontiguousarray(depthwise_weight.reshape(mid_channels, -1)), params.get("mid_bias", UNUSED))
    return _gemm(node, ctx, "separable", params["pointwise_weight"], extra, mid_channels, 1, (h, w), mid=attrs)


def lower_conv_transpose2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    params, attrs = ctx.params(node), node.attrs
    weight = params["weight"]  # (C, O/groups, KH, KW)
    n, o, oh, ow = node.shape
    c, h, w = ctx.shape(node.inputs[0])[1:]
    args = (*ctx.tensor(node.inputs[0]), np.ascontiguousarray(weight.reshape(c, -1)), params.get("bias", UNUSED),
            *ctx.tensor(node.name), n, c, h, w, o, oh, ow, attrs["groups"])
    return _elementwise(node, layers.conv_transpose(attrs), args, n * o * oh * ow)


def lower_dense(node: Node, ctx: LoweringContext) -> list[Launch]:
    params, attrs = ctx.params(node), node.attrs
    n, o = node.shape
    k = ctx.shape(node.inputs[0])[1]
    warps = layers.DENSE_THREADS // WARP
    grid = (min(-(-o // warps), MAX_BLOCKS),)
    args = (*ctx.tensor(node.inputs[0]), params["weight"], *epilogue_args(params, attrs), *_residual(ctx, node),
            *ctx.tensor(node.name), n, k, o)
    return [Launch(layers.dense(attrs, n), grid, (layers.DENSE_THREADS,), args, node.name)]


def _window_pool(node: Node, ctx: LoweringContext, kernel) -> list[Launch]:
    n, c, oh, ow = node.shape
    h, w = ctx.shape(node.inputs[0])[2:]
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, c, h, w, oh, ow)
    return _elementwise(node, kernel, args, n * c * oh * ow)


def lower_max_pool2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    return _window_pool(node, ctx, pool.max_pool(node.attrs))


def lower_max_pool2d_indices(node: Node, ctx: LoweringContext) -> list[Launch]:
    return _window_pool(node, ctx, pool.max_pool_indices(node.attrs))


def lower_avg_pool2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    return _window_pool(node, ctx, pool.avg_pool(node.attrs))


def lower_max_unpool2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c = node.shape[:2]
    out_pixels, pixels = _pixels(node.shape), _pixels(ctx.shape(node.inputs[0]))
    slot = ctx.new_status_slot()
    out = ctx.tensor(node.name)
    clear = _elementwise(node, pool.unpool_clear(), (*out, n, c * out_pixels, Status.ARRAY, slot),
                         n * c * out_pixels)
    scatter_args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.inputs[1]), *out, n, c, pixels, out_pixels,
                    Status.ARRAY, slot)
    return clear + _elementwise(node, pool.unpool_scatter(), scatter_args, n * c * pixels)


def lower_global_avg_pool(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c = node.shape[:2]
    pixels = _pixels(ctx.shape(node.inputs[0]))
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, c, pixels)
    if pixels <= SMALL_PLANE:
        block = min(128, -(-n * c // WARP) * WARP)
        return [Launch(pool.global_avg_pool_small(), (-(-n * c // block),), (block,), args, node.name)]
    threads = min(REDUCE_THREADS, max(WARP, next_power_of_two(pixels // POOL_PIXELS_PER_THREAD)))
    return [Launch(pool.global_avg_pool(threads), (min(n * c, MAX_BLOCKS),), (threads,), args, node.name)]


def lower_adaptive_avg_pool2d(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c, oh, ow = node.shape
    h, w = ctx.shape(node.inputs[0])[2:]
    (row_start, row_end), (col_start, col_end) = adaptive_bins(h, oh), adaptive_bins(w, ow)
    tables = tuple(np.ascontiguousarray(t, dtype=np.int64) for t in (row_start, row_end, col_start, col_end))
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, c, h, w, oh, ow, *tables)
    return _elementwise(node, pool.adaptive_avg_pool(), args, n * c * oh * ow)


def _rows(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(N, C, pixels) of a value: (N, features, 1) for flat ones."""
    return shape[0], shape[1], _pixels(shape)


def lower_activation(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c, pixels = _rows(node.shape)
    args = (*ctx.tensor(node.inputs[0]), UNUSED, UNUSED, *ctx.tensor(node.name), n, c, pixels)
    return _elementwise(node, tensor.unary(node.op, dict(node.attrs)), args, n * c * pixels)


def lower_batch_norm(node: Node, ctx: LoweringContext) -> list[Launch]:
    params = ctx.params(node)
    scale = params["weight"] / np.sqrt(params["running_var"] + np.float32(node.attrs["eps"]))
    shift = params["bias"] - params["running_mean"] * scale
    n, c, pixels = _rows(node.shape)
    args = (*ctx.tensor(node.inputs[0]), scale.astype(np.float32), shift.astype(np.float32), *ctx.tensor(node.name),
            n, c, pixels)
    return _elementwise(node, tensor.unary("affine", {}), args, n * c * pixels)


def lower_binary(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c, pixels = _rows(node.shape)
    a, b = (ctx.shape(name) for name in node.inputs)
    kernel = tensor.binary(node.op, _pixels(a) < pixels, _pixels(b) < pixels)
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.inputs[1]), *ctx.tensor(node.name), n, c, pixels)
    return _elementwise(node, kernel, args, n * c * pixels)


def _box(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """A value's shape as four axes (N, C, H, W), flat values as (N, features, 1, 1)."""
    return tuple(shape) + (1,) * (4 - len(shape))


def _strides(slot: Slot, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Element strides of the (N, C, H, W) axes of a value in its arena slot."""
    return slot.batch, box[2] * box[3], box[3], 1


def _copy(node: Node, ctx: LoweringContext, source: str, target: str, box: tuple[int, ...],
          source_offset: tuple[int, ...] = (0, 0, 0, 0), target_offset: tuple[int, ...] = (0, 0, 0, 0),
          step: tuple[int, ...] = (1, 1, 1, 1)) -> list[Launch]:
    """Copy the `box` (four axes) of `source` starting at `source_offset`, every `step`-th element, into `target`
    at `target_offset`."""
    source_slot, target_slot = ctx.slots[source], ctx.slots[target]
    x_strides = _strides(source_slot, _box(source_slot.shape))
    out_strides = _strides(target_slot, _box(target_slot.shape))
    x_at = source_slot.at + sum(o * s for o, s in zip(source_offset, x_strides, strict=True))
    out_at = target_slot.at + sum(o * s for o, s in zip(target_offset, out_strides, strict=True))
    args = (source_slot.arena, x_at, *(s * k for s, k in zip(x_strides, step, strict=True)), target_slot.arena,
            out_at, *out_strides, *box)
    return _elementwise(node, tensor.strided_copy(), args, int(np.prod(box)))


def lower_copy(node: Node, ctx: LoweringContext) -> list[Launch]:
    """identity, dropout, flatten: the data unchanged (flatten reads the same elements in the same order)."""
    n = node.shape[0]
    per_sample = int(np.prod(node.shape[1:]))
    # Both sides as (N, per-sample elements, 1, 1): flatten's two shapes list the same elements in order.
    source, target = ctx.slots[node.inputs[0]], ctx.slots[node.name]
    args = (source.arena, source.at, source.batch, 1, 1, 1, target.arena, target.at, target.batch, 1, 1, 1,
            n, per_sample, 1, 1)
    return _elementwise(node, tensor.strided_copy(), args, n * per_sample)


def lower_concat(node: Node, ctx: LoweringContext) -> list[Launch]:
    axis = node.attrs["axis"]
    launches, start = [], 0
    for name in node.inputs:
        box = _box(ctx.shape(name))
        target_offset = [0, 0, 0, 0]
        target_offset[axis] = start
        start += box[axis]
        if ctx.written_in_place(name, node.name):
            continue
        launches += _copy(node, ctx, name, node.name, box, target_offset=tuple(target_offset))
    return launches


def lower_channel_slice(node: Node, ctx: LoweringContext) -> list[Launch]:
    """Nothing where the memory plan made the slice a view of its input; else a copy of its channels."""
    if ctx.viewed_in_place(node):
        return []
    return _copy(node, ctx, node.inputs[0], node.name, _box(node.shape), source_offset=(0, node.attrs["start"], 0, 0))


def lower_strided_slice(node: Node, ctx: LoweringContext) -> list[Launch]:
    sh, sw = node.attrs["stride"]
    return _copy(node, ctx, node.inputs[0], node.name, node.shape, step=(1, 1, sh, sw))


def lower_crop(node: Node, ctx: LoweringContext) -> list[Launch]:
    h, w = ctx.shape(node.inputs[0])[2:]
    top, left = (h - node.shape[2]) // 2, (w - node.shape[3]) // 2
    return _copy(node, ctx, node.inputs[0], node.name, node.shape, source_offset=(0, 0, top, left))


def lower_pad(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c, oh, ow = node.shape
    h, w = ctx.shape(node.inputs[0])[2:]
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, c, h, w, oh, ow)
    return _elementwise(node, tensor.pad(dict(node.attrs)), args, n * c * oh * ow)


def lower_lrn(node: Node, ctx: LoweringContext) -> list[Launch]:
    n, c, pixels = _rows(node.shape)
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, c, pixels)
    return _elementwise(node, layers.lrn(node.attrs), args, n * c * pixels)


def lower_softmax(node: Node, ctx: LoweringContext) -> list[Launch]:
    axis, shape = node.attrs["axis"], node.shape
    n, size = shape[0], shape[axis]
    outer, inner = int(np.prod(shape[1:axis])), int(np.prod(shape[axis + 1:]))
    if inner > 1:
        args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, outer, size, inner)
        return _elementwise(node, layers.softmax_columns(), args, n * outer * inner)
    threads = min(REDUCE_THREADS, max(WARP, next_power_of_two(size)))
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, outer, size)
    return [Launch(layers.softmax_rows(threads), (min(n * outer, MAX_BLOCKS),), (threads,), args, node.name)]


def lower_upsample(node: Node, ctx: LoweringContext) -> list[Launch]:
    attrs = node.attrs
    n, c, oh, ow = node.shape
    h, w = ctx.shape(node.inputs[0])[2:]
    scales = attrs["scale"] or (None, None)
    rows = interpolation_taps(h, oh, attrs["mode"], scales[0], attrs["align_corners"])
    cols = interpolation_taps(w, ow, attrs["mode"], scales[1], attrs["align_corners"])
    tables = (np.ascontiguousarray(rows[0], dtype=np.int64), rows[1].astype(np.float32),
              np.ascontiguousarray(cols[0], dtype=np.int64), cols[1].astype(np.float32))
    args = (*ctx.tensor(node.inputs[0]), *ctx.tensor(node.name), n, c, h, w, oh, ow, *tables)
    return _elementwise(node, layers.upsample(attrs["mode"], rows[0].shape[1]), args, n * c * oh * ow)


LOWERINGS = lowering_table(globals())
# Ops that need no launch: graph inputs are copied in, constants are copied to the device once at compile time.
NO_LAUNCH = ("input", "constant")


def lower(node: Node, ctx: LoweringContext) -> list[Launch]:
    return lowering_of(LOWERINGS, node, "numba-cuda")(node, ctx)
