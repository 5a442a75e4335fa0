"""From graph nodes to kernel calls: for each op, which template, specialized how, and with what arguments.

Arguments are prepared here once, at compile time: arena views of activations (in the shapes each kernel
wants), weights in the layout its algorithm wants (Winograd-transformed, transposed, grouped), and scratch
placeholders that the executable lays out in one shared region.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from backends.numba_common import lowering_of, lowering_table
from backends.numba_cpu import gemm, resolve
from backends.numba_cpu.kernels import KernelSource
from backends.numba_cpu.templates import conv, layers, pool, tensor
from backends.numba_cpu.templates.common import (
    EMPTY,
    THREAD_GAP,
    KernelCall,
    Scratch,
    epilogue_args,
)
from cnncomp.errors import GraphError
from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from cnncomp.ops.pool import adaptive_bins
from cnncomp.ops.resize import interpolation_taps

# Target size of the per-thread working set of a tiled kernel (im2col columns, Winograd tiles): about half of a
# core's L2 cache on the machines we measured.
TILE_BYTES = 1 << 19
# Fewest output pixels (im2col) or tiles (Winograd) a GEMM call computes, whatever its operands take (measured
# on AlexNet's conv2 and VGG-16's first convs).
MIN_IM2COL_PIXELS = 256
# Fewest output channels per thread for which splitting a 1x1 conv's GEMM by output channels beats pixel tiles
# (ResNet-50 at batch 1, both tilings in one process: 66.6 -> 62.1 ms; ResNet-152 169.7 -> 151.5 ms; pixel
# tiles stay better for 64 filters over 56x56 maps).
MIN_GEMM_SHARE_ROWS = 64
# But maps of at least this many pixels split 1x1 convs by pixel tiles whatever their channels: each thread then
# reads only its pixels of the input, written by the layer before, and of the residual (own GEMM, ResNet-50 at
# batch 1, alternating runs: layer1's 64 -> 256 convs on 56x56 maps 0.80 -> 0.67 ms, layer2's 512 -> 128 on 28x28
# 0.43 -> 0.37; layer3's 14x14 maps were slower so: 0.40 -> 0.43).
MIN_PIXEL_SPLIT_PIXELS = 512
# An image's whole im2col matrix, gathered once and shared by the threads, while it takes at most this.
IM2COL_WHOLE_BYTES = 8 << 20
MIN_WINOGRAD_TILES = 128
# Winograd over all tiles at once while its transformed input and output fit in this (above: bands of tiles).
WINOGRAD_WHOLE_BYTES = 16 << 20
WINOGRAD_WIDE_CHANNELS = 160
WINOGRAD_WIDE_WHOLE_BYTES = 128 << 20
# Below this much work (MACs, or values written), a node's kernel runs on the calling thread alone: the TBB
# parallel region costs about 20 us (LeNet-5 at batch 1: 0.26 -> 0.165 ms; GoogLeNet, EfficientNet-B0 and
# ResNet-50 unchanged within noise; at 1 << 18 LeNet's first conv ran slower on one thread).
SERIAL_WORK = 1 << 16
# Ops that compute MACs run on one thread up to this many, if they write fewer than SERIAL_WORK values (LeNet-5's
# convs of 117K and 240K MACs: 0.016 -> 0.014 ms each; alternating runs: LeNet-5 0.066 -> 0.058 ms, GoogLeNet
# 15.3 -> 14.3, EfficientNet-B0 and MobileNetV2 within noise). SERIAL_WORK at 1 << 18 for every op instead made
# GoogLeNet slower (16.8 -> 18.2 ms).
SERIAL_MACS = 1 << 18
EMPTY3 = np.zeros((0, 0, 0), np.float32)
EMPTY4 = np.zeros((0, 0, 0, 0), np.float32)


def view_as(array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`array` seen with another shape, never copied: kernels write through these views into the arena, and
    numpy's reshape would silently hand them a copy where the strides do not allow a view."""
    view = array.view()
    view.shape = shape
    return view


class LoweringContext:
    """What a lowering function reads: the graph, arena views of every value, parameters, thread count."""

    def __init__(self, graph: Graph, views: Mapping[str, np.ndarray], threads: int,
                 plan: Mapping[str, Any], conv2d_algorithms: Mapping[str, str]) -> None:
        self.graph = graph
        self.views = views
        self.threads = threads
        self.plan = plan
        self.conv2d_algorithms = conv2d_algorithms

    def written_in_place(self, operand: str, concat: str) -> bool:
        """Whether the memory plan put `operand` inside `concat`'s output, so its producer already wrote it."""
        slot = self.plan["tensors"].get(operand)
        return slot is not None and slot["view_of"] == concat

    def viewed_in_place(self, node: Node) -> bool:
        """Whether the memory plan made `node` (a channel slice) a view of its input, so there is nothing to copy."""
        return self.plan["tensors"][node.name]["view_of"] == node.inputs[0]

    def on_one_thread(self) -> LoweringContext:
        """The same context for kernels lowered to run on the calling thread alone."""
        return LoweringContext(self.graph, self.views, 1, self.plan, self.conv2d_algorithms)

    def value(self, name: str) -> np.ndarray:
        return self.views[name]

    def rows(self, name: str) -> np.ndarray:
        """The value viewed (N, C, pixels): (N, features, 1) for flat tensors."""
        view = self.views[name]
        return view_as(view, (view.shape[0], view.shape[1], -1))

    def params(self, node: Node) -> dict[str, np.ndarray]:
        return self.graph.node_params(node.name)


def _residual(ctx: LoweringContext, node: Node, rows: bool) -> np.ndarray:
    if not node.attrs.get("residual"):
        return EMPTY3 if rows else EMPTY4
    return ctx.rows(node.inputs[1]) if rows else ctx.value(node.inputs[1])


def band_rows(rows: int, target: int, threads: int) -> int:
    """Rows per band: about `target`, but with the band count a multiple of the thread count (equal shares)."""
    bands = -(-rows // max(1, target))
    bands = min(rows, -(-bands // threads) * threads)
    return -(-rows // bands)


def channel_share(m: int, threads: int) -> int:
    """Output channels per thread when the threads split m of them: a multiple of 16, at least 16."""
    return max(16, -(-m // (16 * threads)) * 16)


def gemm_tiles(k: int, m: int, pixels: int, threads: int) -> tuple[int, int]:
    """(pixels, output channels) per job of the (m x k) @ (k x pixels) product of each image. Where the map is
    under 128 pixels, or under MIN_PIXEL_SPLIT_PIXELS with each thread's share of the output channels at least
    MIN_GEMM_SHARE_ROWS rows, the threads split the output channels (each streams its share of the weights once,
    over every pixel); otherwise pixel tiles whose operand and result take about half a core's L2 cache, as many
    per image as a multiple of the thread count (equal shares), starts aligned to 16 floats."""
    share = channel_share(m, threads)
    if pixels < 128 or (share >= MIN_GEMM_SHARE_ROWS and pixels < MIN_PIXEL_SPLIT_PIXELS):
        return pixels, share
    tiles = -(-pixels // max(64, TILE_BYTES // (4 * (k + m))))
    tiles = -(-tiles // threads) * threads
    return -(-pixels // (16 * tiles)) * 16, m


def lower_conv2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """The kernel of the algorithm `resolve` chooses (or the `conv2d_algorithms` option names)."""
    x_type = ctx.graph.node(node.inputs[0]).type
    algorithm = ctx.conv2d_algorithms.get(node.name) or resolve.conv2d_algorithm(node.attrs, x_type, node.type)
    if algorithm not in resolve.supported_algorithms(node.attrs, x_type):
        raise GraphError(f"{node.describe()}: algorithm {algorithm!r} cannot compute this convolution; "
                         f"possible: {', '.join(resolve.supported_algorithms(node.attrs, x_type))}")
    if algorithm == "direct":
        return _conv2d_direct(node, ctx)
    if algorithm == "pointwise":
        return _conv2d_pointwise(node, ctx)
    if algorithm.startswith("winograd"):
        return _conv2d_winograd(node, ctx, resolve.WINOGRAD_TILE[algorithm])
    return _conv2d_im2col(node, ctx)


def _conv2d_direct(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    params, attrs = ctx.params(node), node.attrs
    weight = params["weight"]
    if weight.shape[1] == 1:
        return _depthwise(node, ctx)
    args = (ctx.value(node.inputs[0]), weight, *epilogue_args(params, attrs), _residual(ctx, node, False),
            ctx.value(node.name), direct_planes(ctx, node, weight.shape[1]))
    return [KernelCall(conv.direct(attrs, weight.shape[1]), args, node.name)]


def _conv2d_pointwise(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    params, attrs = ctx.params(node), node.attrs
    _, o, oh, ow = node.shape
    channels = ctx.graph.node(node.inputs[0]).shape[1]
    pixels_per_tile, channels_per_tile = gemm_tiles(channels, o, oh * ow, ctx.threads)
    args = (ctx.rows(node.inputs[0]), gemm.pack(params["weight"].reshape(o, -1)), *epilogue_args(params, attrs),
            _residual(ctx, node, True), ctx.rows(node.name), pixels_per_tile, channels_per_tile, ctx.threads)
    return [KernelCall(conv.pointwise(attrs), args, node.name)]


def _conv2d_winograd(node: Node, ctx: LoweringContext, m: int) -> list[KernelCall]:
    """Winograd F(m x m, 3x3): over all tiles at once where the transformed tiles fit, else in bands of tile
    rows."""
    params, attrs = ctx.params(node), node.attrs
    n, o, oh, ow = node.shape
    points, c = (m + 2) ** 2, ctx.graph.node(node.inputs[0]).shape[1]
    tiles_high, tiles_wide = -(-oh // m), -(-ow // m)
    u = gemm.pack(conv.winograd_weights(params["weight"], m))
    common = (ctx.value(node.inputs[0]), u, *epilogue_args(params, attrs), _residual(ctx, node, False),
              ctx.value(node.name))
    whole_bytes = points * 4 * (c + o) * n * tiles_high * tiles_wide
    # Wide layers do more arithmetic per byte of transformed tiles (o*c/(o+c)), so their whole transform is
    # worth its memory traffic, and their bands would make GEMMs too narrow for the weights they read.
    wide = o * c // (o + c) >= WINOGRAD_WIDE_CHANNELS
    if whole_bytes <= WINOGRAD_WHOLE_BYTES or (wide and whole_bytes <= WINOGRAD_WIDE_WHOLE_BYTES):
        padded = Scratch((n, c, m * tiles_high + 2, m * tiles_wide + 2))
        tiles = n * tiles_high * tiles_wide
        args = (*common, padded, Scratch((points, c, tiles)), Scratch((points, o, tiles)))
        return [KernelCall(conv.winograd(attrs, m, whole=True), args, node.name)]
    # Bands of tile rows that fit TILE_BYTES, but with tiles enough per GEMM to pay for reading u, and
    # bands enough to keep every thread busy (a thread takes whole bands of one image).
    tile_rows = max(1, min(-(-tiles_high // ctx.threads),
                           max(TILE_BYTES // (points * 4 * (c + o) * tiles_wide),
                               -(-MIN_WINOGRAD_TILES // tiles_wide))))
    per_thread = tile_rows * tiles_wide
    padded = Scratch((1, c, m * tiles_high + 2, m * tiles_wide + 2))
    args = (*common, padded, Scratch((ctx.threads, points, c, per_thread)),
            Scratch((ctx.threads, points, o, per_thread)), tile_rows)
    return [KernelCall(conv.winograd(attrs, m, whole=False), args, node.name)]


def _conv2d_im2col(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """im2col + GEMM: one matrix per image shared by all threads where the batch leaves threads idle, else
    tiles of output rows, each thread gathering its own."""
    params, attrs = ctx.params(node), node.attrs
    x, weight = ctx.value(node.inputs[0]), params["weight"]
    n, o, oh, ow = node.shape
    epilogue = epilogue_args(params, attrs)
    groups = attrs["groups"]
    k = weight.shape[1] * weight.shape[2] * weight.shape[3]
    if _whole_map(attrs, x.shape):
        # The window covers the whole unpadded input once (LeNet-5's c5): a dense layer, whose kernels stream the
        # weight once; as a GEMM it would be a single column (0.018 against 0.007 ms).
        residual = view_as(ctx.value(node.inputs[1]), (n, o)) if attrs["residual"] else np.zeros((0, 0), np.float32)
        return _dense(node, ctx, view_as(x, (n, k)), weight.reshape(o, k), residual,
                      view_as(ctx.value(node.name), (n, o)))
    weight_rows = gemm.pack(weight.reshape(groups, o // groups, k))
    # A batch that leaves threads idle on a map too small to give each thread a tile of MIN_IM2COL_PIXELS, with
    # output channels enough to split between them instead (as 1x1 convs do): one matrix per image, gathered by
    # all threads (ResNet-50's layer4.0.conv2 at batch 1: 2.13 -> 1.72 ms).
    channels_per_tile = channel_share(o // groups, ctx.threads)
    if (n * groups < ctx.threads and oh * ow < ctx.threads * MIN_IM2COL_PIXELS
            and channels_per_tile >= MIN_GEMM_SHARE_ROWS and 4 * k * oh * ow <= IM2COL_WHOLE_BYTES):
        args = (x, weight_rows, *epilogue, _residual(ctx, node, True), ctx.rows(node.name), Scratch((k, oh * ow)),
                channels_per_tile, ctx.threads, oh, ow)
        return [KernelCall(conv.im2col(attrs, whole=True), args, node.name)]
    # Each GEMM reads (and BLAS packs) the whole weight, so a tile needs enough pixels to pay for that even where
    # its columns outgrow TILE_BYTES (FCN's fc6: K = 25088 on a 7x7 map took 7 pixels a call, 6x slower).
    rows_per_tile = min(oh, max(1, TILE_BYTES // (4 * k * ow), -(-MIN_IM2COL_PIXELS // ow)))
    # But with an image's tiles a multiple of the threads it takes to keep every thread busy (ResNet's stride-2
    # convs at batch 1 made one job and left a core idle).
    share = -(-ctx.threads // (n * groups))
    tiles = -(-oh // rows_per_tile)
    tiles = -(-tiles // share) * share
    rows_per_tile = -(-oh // min(tiles, oh))
    args = (x, weight_rows, *epilogue, _residual(ctx, node, True), ctx.rows(node.name),
            Scratch((ctx.threads, k, rows_per_tile * ow)), rows_per_tile, oh, ow)
    return [KernelCall(conv.im2col(attrs), args, node.name)]


def _whole_map(attrs: Mapping[str, Any], x_shape: tuple[int, ...]) -> bool:
    """Whether a conv2d's one window is its whole unpadded input: one group, no dilation, kernel = map."""
    return (attrs["groups"] == 1 and attrs["dilation"] == (1, 1) and not any(attrs["padding"])
            and tuple(attrs["kernel"]) == tuple(x_shape[2:]))


def padded_plane(ctx: LoweringContext, node: Node) -> tuple[int, int]:
    """Height and width of an input plane padded so that every tap of every output window lies inside it."""
    (kh, kw), (sh, sw) = node.attrs["kernel"], node.attrs["stride"]
    dh, dw = node.attrs.get("dilation", (1, 1))
    top, _, left, _ = node.attrs["padding"]
    h, w = ctx.graph.node(node.inputs[0]).shape[2:]
    oh, ow = node.shape[2:]
    return max(top + h, (oh - 1) * sh + dh * (kh - 1) + 1), max(left + w, (ow - 1) * sw + dw * (kw - 1) + 1)


def direct_planes(ctx: LoweringContext, node: Node, channels_per_group: int) -> Scratch:
    """Per thread, a padded plane per channel of a group."""
    return Scratch((ctx.threads, channels_per_group, *padded_plane(ctx, node)))


def lower_depthwise_conv2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """depthwise_conv2d's weight (C*M, 1, KH, KW) is conv2d's for groups = C."""
    return _depthwise(node, ctx)


def _depthwise(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """One input channel per group: the vectorized depthwise kernel (`conv.depthwise`)."""
    params, attrs = ctx.params(node), node.attrs
    args = (ctx.value(node.inputs[0]), params["weight"], *epilogue_args(params, attrs), _residual(ctx, node, False),
            ctx.value(node.name), Scratch((ctx.threads, node.shape[2] * node.shape[3] + THREAD_GAP)))
    return [KernelCall(conv.depthwise(attrs), args, node.name)]


def lower_pointwise_conv2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    params, attrs = ctx.params(node), node.attrs
    o, pixels = node.shape[1], node.shape[2] * node.shape[3]
    residual = ctx.rows(node.inputs[-1]) if attrs["residual"] else EMPTY3
    epilogue = epilogue_args(params, attrs)
    channels = ctx.graph.node(node.inputs[0]).shape[1]
    pixels_per_tile, channels_per_tile = gemm_tiles(channels, o, pixels, ctx.threads)
    if attrs["gate"]:
        weight = gemm.pack(params["weight"])
        args = (ctx.rows(node.inputs[0]), ctx.rows(node.inputs[1]), weight, *epilogue, residual,
                ctx.rows(node.name), Scratch(weight.shape), pixels_per_tile, channels_per_tile, ctx.threads)
        return [KernelCall(conv.gated_pointwise(attrs), args, node.name)]
    args = (ctx.rows(node.inputs[0]), gemm.pack(params["weight"]), *epilogue, residual, ctx.rows(node.name),
            pixels_per_tile, channels_per_tile, ctx.threads)
    return [KernelCall(conv.pointwise(attrs), args, node.name)]


def lower_separable_conv2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    params, attrs = ctx.params(node), node.attrs
    _, o, oh, ow = node.shape
    mid_channels = params["depthwise_weight"].shape[0]
    # Bands of at least 256 pixels (thin products are slow); fewer bands than two per thread: the whole map at
    # once, its depthwise step split by channel and its product as the pointwise kernel splits it.
    rows_per_tile = band_rows(oh, max(TILE_BYTES // (4 * (mid_channels + o) * ow), -(-256 // ow)), ctx.threads)
    shared = -(-oh // rows_per_tile) * node.shape[0] < 2 * ctx.threads
    if shared:
        rows_per_tile = oh
    args = (ctx.value(node.inputs[0]), params["depthwise_weight"], params.get("mid_bias", EMPTY),
            gemm.pack(params["pointwise_weight"]), *epilogue_args(params, attrs), _residual(ctx, node, True),
            ctx.rows(node.name))
    if shared:
        args += (Scratch((mid_channels, oh * ow)), ctx.threads, *gemm_tiles(mid_channels, o, oh * ow, ctx.threads),
                 oh, ow)
    else:
        args += (Scratch((ctx.threads, mid_channels, rows_per_tile * ow)), rows_per_tile, oh, ow)
    return [KernelCall(conv.separable(attrs, shared), args, node.name)]


def lower_conv_transpose2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    params, attrs = ctx.params(node), node.attrs
    weight = params["weight"]  # (C, O/groups, KH, KW)
    c, og, kh, kw = weight.shape
    groups = attrs["groups"]
    taps = weight.reshape(groups, c // groups, og * kh * kw).transpose(0, 2, 1)
    h, w = ctx.graph.node(node.inputs[0]).shape[2:]
    args = (ctx.rows(node.inputs[0]), np.ascontiguousarray(taps), params.get("bias", EMPTY), ctx.value(node.name),
            Scratch((og * kh * kw, h * w)), h, w, ctx.threads)
    return [KernelCall(layers.conv_transpose(attrs), args, node.name)]


# Up to this many images a dense layer streams its weight row by row (bound by memory); above, BLAS, whose
# packing reads a large weight more than once (AlexNet's fc6, 9216 -> 4096, BLAS against rows: batch 8 32.9
# against 13.9 ms, batch 16 34.6 against 24.2, batch 32 35.1 against 46.6).
DENSE_ROWS_MAX_BATCH = 16


def lower_dense(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    residual = ctx.value(node.inputs[1]) if node.attrs["residual"] else np.zeros((0, 0), np.float32)
    return _dense(node, ctx, ctx.value(node.inputs[0]), ctx.params(node)["weight"], residual, ctx.value(node.name))


def _dense(node: Node, ctx: LoweringContext, x: np.ndarray, weight: np.ndarray, residual: np.ndarray,
           out: np.ndarray) -> list[KernelCall]:
    """out (N, O) = epilogue(x (N, K) @ weight (O, K)^T), with the node's epilogue attributes and parameters."""
    params, attrs = ctx.params(node), node.attrs
    batch, out_features = out.shape
    common = (*epilogue_args(params, attrs), residual, out)
    if batch <= DENSE_ROWS_MAX_BATCH:
        rows_per_job = max(8, -(-out_features // (8 * ctx.threads)))
        args = (x, weight, *common, rows_per_job, ctx.threads)
        return [KernelCall(layers.dense_rows(attrs), args, node.name)]
    columns = max(64, -(-out_features // ctx.threads))
    args = (x, np.ascontiguousarray(weight.T), *common, columns, ctx.threads)
    return [KernelCall(layers.dense(attrs), args, node.name)]


def lower_max_pool2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    args = (ctx.value(node.inputs[0]), ctx.value(node.name), ctx.threads)
    return [KernelCall(pool.max_pool(node.attrs), args, node.name)]


def lower_max_pool2d_indices(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    return [KernelCall(pool.max_pool_indices(node.attrs), (ctx.value(node.inputs[0]), ctx.value(node.name)),
                       node.name)]


def lower_avg_pool2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """One window over the whole unpadded input (GoogLeNet's last pool): the global average's kernel, which sums
    the plane in one vector loop, not a row at a time. Otherwise the window kernel."""
    h, w = ctx.graph.node(node.inputs[0]).shape[2:]
    if node.attrs["kernel"] == (h, w) and node.shape[2:] == (1, 1) and not any(node.attrs["padding"]):
        return lower_global_avg_pool(node, ctx)
    divisors = get_op(node.op).divisors(node.attrs, (h, w), node.shape[2:])
    args = (ctx.value(node.inputs[0]), divisors, ctx.value(node.name), ctx.threads)
    return [KernelCall(pool.avg_pool(node.attrs), args, node.name)]


def lower_max_unpool2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    args = (ctx.rows(node.inputs[0]), ctx.rows(node.inputs[1]), ctx.rows(node.name))
    return [KernelCall(pool.unpool(), args, node.name)]


def lower_global_avg_pool(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    return [KernelCall(pool.global_avg_pool(), (ctx.rows(node.inputs[0]), ctx.rows(node.name)), node.name)]


def lower_adaptive_avg_pool2d(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    h, w = ctx.graph.node(node.inputs[0]).shape[2:]
    (row_start, row_end), (col_start, col_end) = (adaptive_bins(h, node.shape[2]), adaptive_bins(w, node.shape[3]))
    args = (ctx.value(node.inputs[0]), ctx.value(node.name), row_start, row_end, col_start, col_end)
    return [KernelCall(pool.adaptive_avg_pool(), args, node.name)]


def lower_activation(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    args = (ctx.rows(node.inputs[0]), EMPTY, EMPTY, ctx.rows(node.name))
    return [KernelCall(tensor.unary(node.op, dict(node.attrs)), args, node.name)]


def lower_copy(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """identity, dropout, flatten: the data unchanged (flatten only changes the view)."""
    out = ctx.value(node.name)
    source = view_as(ctx.value(node.inputs[0]), out.shape)
    args = (view_as(source, (source.shape[0], source.shape[1], -1)), EMPTY, EMPTY,
            view_as(out, (out.shape[0], out.shape[1], -1)))
    return [KernelCall(tensor.unary("copy", {}), args, node.name)]


def lower_batch_norm(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    params = ctx.params(node)
    scale = params["weight"] / np.sqrt(params["running_var"] + np.float32(node.attrs["eps"]))
    shift = params["bias"] - params["running_mean"] * scale
    args = (ctx.rows(node.inputs[0]), scale.astype(np.float32), shift.astype(np.float32), ctx.rows(node.name))
    return [KernelCall(tensor.unary("affine", {}), args, node.name)]


def lower_binary(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    a, b = (ctx.rows(name) for name in node.inputs)
    out = ctx.rows(node.name)
    kernel = tensor.binary(node.op, a.shape[2] < out.shape[2], b.shape[2] < out.shape[2])
    return [KernelCall(kernel, (a, b, out), node.name)]


def lower_concat(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    out = ctx.value(node.name)
    axis = node.attrs["axis"]
    calls, start = [], 0
    for name in node.inputs:
        source = ctx.value(name)
        index = [slice(None)] * out.ndim
        index[axis] = slice(start, start + source.shape[axis])
        start += source.shape[axis]
        if ctx.written_in_place(name, node.name):
            continue
        target = out[tuple(index)]
        if axis == 1:
            source_rows, target_rows = ctx.rows(name), view_as(target, (target.shape[0], target.shape[1], -1))
        else:
            # Along a spatial axis: one (N*C, rows, columns) copy job per plane.
            source_rows = view_as(source, (-1, source.shape[2], source.shape[3] if source.ndim == 4 else 1))
            target_rows = view_as(target, (-1, target.shape[2], target.shape[3] if target.ndim == 4 else 1))
        calls.append(KernelCall(tensor.unary("copy", {}), (source_rows, EMPTY, EMPTY, target_rows), node.name))
    return calls


def lower_channel_slice(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """Nothing where the memory plan made the slice a view of its input; else a copy of its channels."""
    if ctx.viewed_in_place(node):
        return []
    source = ctx.rows(node.inputs[0])[:, node.attrs["start"]: node.attrs["stop"]]
    return [KernelCall(tensor.unary("copy", {}), (source, EMPTY, EMPTY, ctx.rows(node.name)), node.name)]


def lower_strided_slice(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    args = (ctx.value(node.inputs[0]), ctx.value(node.name))
    return [KernelCall(tensor.strided_slice(dict(node.attrs)), args, node.name)]


def lower_pad(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    return [KernelCall(tensor.pad(dict(node.attrs)), (ctx.value(node.inputs[0]), ctx.value(node.name)), node.name)]


def lower_crop(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    h, w = ctx.graph.node(node.inputs[0]).shape[2:]
    top, left = (h - node.shape[2]) // 2, (w - node.shape[3]) // 2
    return [KernelCall(tensor.window_copy(), (ctx.value(node.inputs[0]), ctx.value(node.name), top, left),
                       node.name)]


def lower_lrn(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    pixels = node.shape[2] * node.shape[3]
    args = (ctx.rows(node.inputs[0]), ctx.rows(node.name), Scratch((ctx.threads, pixels)))
    return [KernelCall(layers.lrn(node.attrs), args, node.name)]


def lower_softmax(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    axis = node.attrs["axis"]
    shape = node.shape
    outer, inner = int(np.prod(shape[1:axis])), int(np.prod(shape[axis + 1:]))
    view = (outer, shape[axis], inner)
    # One call per sample: a sample's values are contiguous, but not the batch of a tensor inside a concat.
    x, out = ctx.value(node.inputs[0]), ctx.value(node.name)
    return [KernelCall(layers.softmax(), (view_as(x[n], view), view_as(out[n], view)), node.name)
            for n in range(shape[0])]


def lower_upsample(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    attrs = node.attrs
    h, w = ctx.graph.node(node.inputs[0]).shape[2:]
    scales = attrs["scale"] or (None, None)
    rows = interpolation_taps(h, node.shape[2], attrs["mode"], scales[0], attrs["align_corners"])
    cols = interpolation_taps(w, node.shape[3], attrs["mode"], scales[1], attrs["align_corners"])
    args = (ctx.value(node.inputs[0]), ctx.value(node.name), rows[0], rows[1].astype(np.float32), cols[0],
            cols[1].astype(np.float32))
    return [KernelCall(layers.upsample(), args, node.name)]


LOWERINGS = lowering_table(globals())


def runs_serial(node: Node, graph: Graph) -> bool:
    """Whether a node has too little work for a parallel region: fewer MACs (the op registry's count) than
    SERIAL_MACS and fewer values written than SERIAL_WORK."""
    inputs = [graph.node(name).type for name in node.inputs]
    return get_op(node.op).macs(node.attrs, inputs, node.type) < SERIAL_MACS and node.type.size < SERIAL_WORK


def serial(kernel: KernelSource) -> KernelSource:
    """The kernel compiled without `parallel`: its prange loops run as plain loops on the calling thread."""
    return dataclasses.replace(kernel, source=kernel.source.replace("@njit(parallel=True, ", "@njit("))


def lower(node: Node, ctx: LoweringContext) -> list[KernelCall]:
    """The node's kernel calls. A node with little work (`runs_serial`) runs on the calling thread alone: a
    parallel region costs more than it saves there, and never waits for a descheduled thread."""
    lowering = lowering_of(LOWERINGS, node, "numba-cpu")
    if ctx.threads == 1 or not runs_serial(node, ctx.graph):
        return lowering(node, ctx)
    return [KernelCall(serial(call.kernel), call.args, call.node) for call in lowering(node, ctx.on_one_thread())]
