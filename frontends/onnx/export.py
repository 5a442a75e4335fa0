"""Export a graph as an ONNX model (opset 17), weights as initializers, so ONNX Runtime or any other ONNX tool
runs exactly our model.

Every registry op has a standard ONNX form computing the same function: lowered ops become the convolutions they
stand for (depthwise as a grouped Conv, pointwise as a 1x1 Conv, separable as two Convs, strided_slice as a
Slice), a fused epilogue becomes the Mul/Add/activation nodes it absorbed, and the ops whose ONNX counterpart
differs are spelled out exactly: crop as a Slice with static starts, max_pool2d_indices (PyTorch's per-plane
indices h*W + w) as MaxPool's flat indices modulo the plane size, max_unpool2d as MaxUnpool on flat indices,
LRN of even size (whose window ONNX centers the other way) as a band convolution of the squares, non-uniform
adaptive pooling as two averaging matrices. Activations are written as their registry entries spell them in
ONNX (relu6 as Clip(0, 6)); one whose operator is newer than opset 17 as x * gate(x) where the entry says so
(silu as x * Sigmoid(x)), otherwise at the opset that defines it (the model's opset is then that one).

Names: an ONNX value (and the node producing it) is named like our node, so graph inputs and outputs keep their
names; each parameter is an initializer named by its key (`conv1.weight`); the intermediate values of a node
spelled out as several ONNX nodes are `name/step`. Shapes are static, as in the graph.

onnx is an optional dependency (`pip install 'cnncomp[onnx]'`), imported only when a graph is exported. The
CLI (`cnncomp export`) and the onnxruntime backend reach this module through the plugin registry
(`cnncomp.plugins.exporter("onnx")`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp.errors import CnnCompError, GraphError
from cnncomp.ir import Graph, Node
from cnncomp.ops.activation import ACTIVATIONS
from cnncomp.ops.pool import adaptive_bins

OPSET = 17
PRODUCER = "cnncomp"


def onnx_module() -> Any:
    """The onnx package, or a one-line error saying how to install it."""
    try:
        import onnx
    except ImportError:
        raise CnnCompError("ONNX support needs the onnx package: pip install 'cnncomp[onnx]'") from None
    return onnx


def to_onnx(graph: Graph) -> Any:
    """The graph as an `onnx.ModelProto` (checked with `onnx.checker.check_model(full_check=True)`)."""
    onnx = onnx_module()
    graph.validate()
    writer = _Writer(graph, onnx)
    for node in graph.nodes:
        if node.op != "input":
            try:
                rule = RULES[node.op]
            except KeyError:
                raise GraphError(f"{node.describe()}: no ONNX form for op {node.op!r}") from None
            rule(writer, node)
    model = writer.model()
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraphError(f"graph {graph.name!r}: the exported ONNX model fails onnx.checker: {first}") from None
    return model


def export(graph: Graph, path: str | Path) -> Any:
    """Write the graph as an ONNX file; returns the model."""
    model = to_onnx(graph)
    try:
        Path(path).write_bytes(model.SerializeToString())
    except OSError as exc:
        raise CnnCompError(f"{path}: cannot write the ONNX model: {exc.strerror or exc}") from None
    return model


class _Writer:
    """Collects ONNX nodes and initializers for one graph; hands out value names no node of the graph uses."""

    def __init__(self, graph: Graph, onnx: Any) -> None:
        self.graph = graph
        self.onnx = onnx
        self.helper = onnx.helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.used: set[str] = {node.name for node in graph.nodes}
        self.pools = _IndexedPools(graph)
        self.opset = OPSET  # raised by an activation whose ONNX operator is newer

    def fresh(self, name: str) -> str:
        """`name`, or `name_1`, `name_2`, ... if a value of the graph or of the export already has it."""
        candidate, index = name, 0
        while candidate in self.used:
            index += 1
            candidate = f"{name}_{index}"
        self.used.add(candidate)
        return candidate

    # ----- building blocks ------------------------------------------------------------------------------
    def step(self, node: str, label: str) -> str:
        """A fresh name for an intermediate value of `node`'s ONNX form."""
        return self.fresh(f"{node}/{label}")

    def emit(self, op_type: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        """One ONNX node named like its output (a node of the graph, or a `step`); returns the output's name."""
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output

    def constant(self, name: str, value: np.ndarray) -> str:
        """An initializer holding `value`; returns its (fresh) name."""
        name = self.fresh(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.array(value, order="C"), name))
        return name

    def param(self, node: Node, key: str, shape: tuple[int, ...] | None = None) -> str:
        """Parameter `key` of `node` as an initializer named by its key, `node.key` (reshaped to `shape`)."""
        array = self.graph.params[f"{node.name}.{key}"]
        return self.constant(f"{node.name}.{key}", array if shape is None else array.reshape(shape))

    def ints(self, name: str, values: Sequence[int]) -> str:
        return self.constant(name, np.asarray(values, dtype=np.int64))

    def floats(self, name: str, values: Sequence[float]) -> str:
        return self.constant(name, np.asarray(values, dtype=np.float32))

    def scalar(self, name: str, value: float) -> str:
        return self.constant(name, np.asarray(value, dtype=np.float32))

    # ----- shared spellings -----------------------------------------------------------------------------
    def activation(self, x: str, act: str, alpha: float, output: str) -> str:
        """The activation as its registry entry spells it in ONNX."""
        op = ACTIVATIONS[act]
        spelling = op.onnx
        if spelling.since > OPSET and op.self_gated_by is not None:
            gate = self.activation(x, op.self_gated_by, alpha, self.step(output, op.self_gated_by))
            return self.emit("Mul", [x, gate], output)
        self.opset = max(self.opset, spelling.since)
        constants = [self.scalar(f"{output}/{name}", value) for name, value in spelling.inputs]
        return self.emit(spelling.name, [x, *constants], output, **spelling.arguments({"alpha": alpha}))

    def epilogue(self, node: Node, layer: Callable[[str], str], y: str, residual: str | None) -> None:
        """`y = layer(x) + bias` is emitted by `layer` (a function of its output name); the epilogue
        act(affine(y) + residual) follows as Mul, Add, Add and the activation; the last value is `node.name`."""
        attrs = node.attrs
        steps: list[tuple[str, Callable[[str, str], str]]] = []
        if attrs["affine"]:
            shape = per_channel_shape(node)
            scale, shift = self.param(node, "scale", shape), self.param(node, "shift", shape)
            steps.append(("scaled", lambda v, out: self.emit("Mul", [v, scale], out)))
            steps.append(("shifted", lambda v, out: self.emit("Add", [v, shift], out)))
        if attrs["residual"]:
            steps.append(("residual", lambda v, out: self.emit("Add", [v, residual], out)))
        if attrs["act"] is not None:
            steps.append(("act", lambda v, out: self.activation(v, attrs["act"], attrs["alpha"], out)))
        value = layer(self.step(node.name, y) if steps else node.name)
        for index, (label, step) in enumerate(steps):
            value = step(value, node.name if index == len(steps) - 1 else self.step(node.name, label))

    def model(self) -> Any:
        helper = self.helper
        graph = self.graph

        def info(name: str) -> Any:
            node = graph.node(name)
            return helper.make_tensor_value_info(name, _elem_type(self.onnx, node.type.dtype), node.shape)

        body = helper.make_graph(self.nodes, graph.name, [info(n.name) for n in graph.inputs],
                                 [info(name) for name in graph.outputs], self.initializers)
        model = helper.make_model(body, producer_name=PRODUCER, opset_imports=[helper.make_opsetid("", self.opset)])
        from cnncomp import __version__

        model.producer_version = __version__
        return model


def _elem_type(onnx: Any, dtype: str) -> int:
    return onnx.TensorProto.FLOAT if dtype == "float32" else onnx.TensorProto.INT64


def per_channel_shape(node: Node) -> tuple[int, ...]:
    """A per-channel vector's shape broadcasting over node's output: (C, 1, 1) for NCHW, (C,) for N x C."""
    return (node.type.channels,) + (1,) * (node.type.rank - 2)


def onnx_pads(pads: tuple[int, int, int, int]) -> list[int]:
    """(top, bottom, left, right) as ONNX's [top, left, bottom, right]."""
    top, bottom, left, right = pads
    return [top, left, bottom, right]


def window_attrs(attrs: dict[str, Any] | Any, dilation: bool = True) -> dict[str, Any]:
    result = {"kernel_shape": list(attrs["kernel"]), "strides": list(attrs["stride"]),
              "pads": onnx_pads(attrs["padding"])}
    if dilation:
        result["dilations"] = list(attrs["dilation"])
    return result


# ----- max pooling with indices and unpooling --------------------------------------------------------------
class _IndexedPools:
    """ONNX's MaxPool indices count over the whole tensor, ((n*C + c)*H + h)*W + w; ours (PyTorch's) within the
    plane, h*W + w, which is the flat index modulo H*W. A max_pool2d_indices node and a max_pool2d of the same
    input and attributes share one MaxPool with two outputs. MaxUnpool reads flat indices over its output, so an
    unpooling to planes of the pooled input's size reads the MaxPool's flat indices as they are; any other reader
    gets the per-plane indices (the Mod)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.twin: dict[str, str] = {}  # max_pool2d_indices node -> max_pool2d node, and back
        for node in graph.nodes:
            if node.op == "max_pool2d_indices":
                twin = next((c for c in graph.consumers(node.inputs[0])
                             if c.op == "max_pool2d" and c.attrs == node.attrs), None)
                if twin is not None:
                    self.twin[node.name], self.twin[twin.name] = twin.name, node.name
        self.flat: dict[str, str] = {}  # max_pool2d_indices node -> its MaxPool's flat indices

    def reads_flat(self, unpool: Node) -> bool:
        pool_input = self.graph.node(self.graph.node(unpool.inputs[1]).inputs[0])
        return (pool_input.shape[2] * pool_input.shape[3] == unpool.shape[2] * unpool.shape[3]
                and not below_max_unpool_size(self.graph, unpool))

    def needs_plane_indices(self, indices: Node) -> bool:
        return indices.name in self.graph.outputs or any(
            c.op != "max_unpool2d" or not self.reads_flat(c) for c in self.graph.consumers(indices.name))

    def emit(self, w: _Writer, indices: Node) -> None:
        """The MaxPool with both outputs, once per pair."""
        if indices.name in self.flat:
            return
        values = self.twin.get(indices.name) or w.step(indices.name, "values")
        flat = w.step(indices.name, "flat")
        self.flat[indices.name] = flat
        x = self.graph.node(indices.inputs[0])
        attrs = window_attrs(indices.attrs)
        ceil_mode = int(indices.attrs["ceil_mode"])
        if extra_ceil_window(indices, x):
            attrs["pads"], ceil_mode = ceil_mode_pads(indices, x), 0
        if pads_reach_kernel(attrs):
            # Padding the input first would shift the indices MaxPool counts.
            raise GraphError(f"{indices.describe()}: no ONNX form for op {indices.op!r} with padding {attrs['pads']} "
                             f"not below the kernel {attrs['kernel_shape']} (ONNX Runtime refuses such a MaxPool)")
        w.nodes.append(w.helper.make_node("MaxPool", [x.name], [values, flat], name=values, ceil_mode=ceil_mode,
                                          **attrs))


def _max_pool(w: _Writer, node: Node) -> None:
    if node.name in w.pools.twin:
        w.pools.emit(w, w.graph.node(w.pools.twin[node.name]))
        return
    _pool(w, node, "MaxPool", window_attrs(node.attrs))


def _pool(w: _Writer, node: Node, op_type: str, attrs: dict[str, Any]) -> None:
    """A MaxPool or AveragePool. In ceil mode PyTorch (and we) drop a last window that would start in the
    bottom/right padding; ONNX keeps it (and ONNX Runtime's kernels drop it while its shape inference keeps it),
    so such a pool is written in floor mode with end pads that hold exactly our windows (`ceil_mode_pads`); an
    average that counts the padding pads with real zeros first, so its divisor never counts the overhang."""
    x = w.graph.node(node.inputs[0])
    ceil_mode = int(node.attrs["ceil_mode"])
    if not extra_ceil_window(node, x):
        _pool_within_kernel_pads(w, node, op_type, x.name, {**attrs, "ceil_mode": ceil_mode})
        return
    pads = ceil_mode_pads(node, x)
    if op_type == "AveragePool" and attrs["count_include_pad"]:
        top, bottom, left, right = node.attrs["padding"]
        padded = w.emit("Pad", [x.name, w.ints(f"{node.name}/pads", [0, 0, top, left, 0, 0, bottom, right])],
                        w.step(node.name, "padded"))
        w.emit(op_type, [padded], node.name, **{**attrs, "count_include_pad": 0,
                                                "pads": [0, 0, pads[2] - bottom, pads[3] - right]})
        return
    _pool_within_kernel_pads(w, node, op_type, x.name, {**attrs, "pads": pads})


def pads_reach_kernel(attrs: dict[str, Any]) -> bool:
    kernel = attrs["kernel_shape"]
    return any(pad >= kernel[axis % 2] for axis, pad in enumerate(attrs["pads"]))


def _pool_within_kernel_pads(w: _Writer, node: Node, op_type: str, x: str, attrs: dict[str, Any]) -> None:
    """The pool, with padding that ONNX Runtime refuses (a pad not below the kernel, which dilation allows) done
    by a Pad of -inf first: every max-pool window reads at least one input pixel (`WindowPool.infer`)."""
    if not pads_reach_kernel(attrs):
        w.emit(op_type, [x], node.name, **attrs)
        return
    if op_type != "MaxPool":
        raise GraphError(f"{node.describe()}: no ONNX form for op {node.op!r} with padding {attrs['pads']} not below "
                         f"the kernel {attrs['kernel_shape']}")
    top, left, bottom, right = attrs["pads"]
    padded = w.emit("Pad", [x, w.ints(f"{node.name}/pads", [0, 0, top, left, 0, 0, bottom, right]),
                            w.scalar(f"{node.name}/minus_infinity", -np.inf)], w.step(node.name, "padded"))
    w.emit(op_type, [padded], node.name, **{**attrs, "pads": [0, 0, 0, 0]})


def extra_ceil_window(node: Node, x: Node) -> bool:
    """Whether ONNX's ceil-mode output, ceil((N + P - D*(K-1) - 1) / S) + 1, exceeds the node's output."""
    if not node.attrs["ceil_mode"]:
        return False
    top, bottom, left, right = node.attrs["padding"]
    dilation = node.attrs.get("dilation", (1, 1))
    sizes = zip(x.type.spatial, (top + bottom, left + right), node.attrs["kernel"], node.attrs["stride"], dilation,
                node.type.spatial, strict=True)
    return any(-(-(n + p - d * (k - 1) - 1) // s) + 1 > out for n, p, k, s, d, out in sizes)


def ceil_mode_pads(node: Node, x: Node) -> list[int]:
    """ONNX pads [top, left, bottom, right] with which a floor-mode pool has exactly the node's ceil-mode windows:
    the end pads grow until the last window fits."""
    top, bottom, left, right = node.attrs["padding"]
    dilation = node.attrs.get("dilation", (1, 1))
    sizes = zip(x.type.spatial, (top, left), (bottom, right), node.attrs["kernel"], node.attrs["stride"], dilation,
                node.type.spatial, strict=True)
    return [top, left, *(max(end, (out - 1) * s + d * (k - 1) + 1 - n - begin)
                         for n, begin, end, k, s, d, out in sizes)]


def _max_pool_indices(w: _Writer, node: Node) -> None:
    w.pools.emit(w, node)
    if w.pools.needs_plane_indices(node):
        x = w.graph.node(node.inputs[0])
        plane = w.constant(f"{node.name}/plane", np.asarray(x.shape[2] * x.shape[3], np.int64))
        w.emit("Mod", [w.pools.flat[node.name], plane], node.name)


def below_max_unpool_size(graph: Graph, unpool: Node) -> bool:
    """Whether the unpooling's output is smaller than ONNX's MaxUnpool output, (H-1)*S - P + K, in an axis, or that
    size is not positive (padding beyond the kernel on a 1-pixel input): ONNX Runtime refuses such an
    output_shape, which the op allows (a pool in ceil mode or with stride above kernel)."""
    top, bottom, left, right = unpool.attrs["padding"]
    sizes = zip(graph.node(unpool.inputs[0]).type.spatial, unpool.attrs["stride"], unpool.attrs["kernel"],
                (top + bottom, left + right), unpool.type.spatial, strict=True)
    return any(out < (n - 1) * s - p + k or (n - 1) * s - p + k <= 0 for n, s, k, p, out in sizes)


def _max_unpool(w: _Writer, node: Node) -> None:
    x, indices = node.inputs
    n, c, oh, ow = node.shape
    if below_max_unpool_size(w.graph, node):  # each value scattered into its plane, as the op is defined
        planes = w.ints(f"{node.name}/planes", [n, c, -1])
        zeros = w.emit("ConstantOfShape", [w.ints(f"{node.name}/planes_shape", [n, c, oh * ow])],
                       w.step(node.name, "zeros"))
        flat_values = w.emit("Reshape", [x, planes], w.step(node.name, "values"))
        flat_indices = w.emit("Reshape", [indices, planes], w.step(node.name, "indices"))
        scattered = w.emit("ScatterElements", [zeros, flat_indices, flat_values], w.step(node.name, "scattered"),
                           axis=2)
        w.emit("Reshape", [scattered, w.ints(f"{node.name}/shape", node.shape)], node.name)
        return
    if w.pools.reads_flat(node):
        flat = w.pools.flat[indices]
    else:
        offsets = (np.arange(n * c, dtype=np.int64) * (oh * ow)).reshape(n, c, 1, 1)
        flat = w.emit("Add", [indices, w.constant(f"{node.name}/plane_offsets", offsets)], w.step(node.name, "flat"))
    attrs = node.attrs
    w.emit("MaxUnpool", [x, flat, w.ints(f"{node.name}/output_shape", node.shape)], node.name,
           kernel_shape=list(attrs["kernel"]), strides=list(attrs["stride"]), pads=onnx_pads(attrs["padding"]))


# ----- rules: one per op -------------------------------------------------------------------------------------
def _conv(w: _Writer, node: Node, x: str, weight: str, bias: str | None, groups: int, output: str) -> str:
    inputs = [x, weight] + ([bias] if bias else [])
    return w.emit("Conv", inputs, output, group=groups, **window_attrs(node.attrs))


def _residual(node: Node) -> str | None:
    return node.inputs[-1] if node.attrs["residual"] else None


def _conv2d(w: _Writer, node: Node) -> None:
    weight, bias = w.param(node, "weight"), w.param(node, "bias") if node.attrs["bias"] else None
    w.epilogue(node, lambda out: _conv(w, node, node.inputs[0], weight, bias, node.attrs["groups"], out), "conv",
               _residual(node))


def _depthwise(w: _Writer, node: Node) -> None:
    weight, bias = w.param(node, "weight"), w.param(node, "bias") if node.attrs["bias"] else None
    channels = w.graph.node(node.inputs[0]).type.channels
    w.epilogue(node, lambda out: _conv(w, node, node.inputs[0], weight, bias, channels, out), "conv",
               _residual(node))


def _pointwise_conv(w: _Writer, node: Node, x: str, key: str, output: str) -> str:
    weight = w.graph.params[f"{node.name}.{key}"]
    inputs = [x, w.param(node, key, (*weight.shape, 1, 1))]
    if node.attrs["bias"]:
        inputs.append(w.param(node, "bias"))
    return w.emit("Conv", inputs, output, kernel_shape=[1, 1])


def _pointwise(w: _Writer, node: Node) -> None:
    x = node.inputs[0]
    if node.attrs["gate"]:
        x = w.emit("Mul", [x, node.inputs[1]], w.step(node.name, "gated"))
    w.epilogue(node, lambda out: _pointwise_conv(w, node, x, "weight", out), "conv", _residual(node))


def _separable(w: _Writer, node: Node) -> None:
    attrs = node.attrs
    channels = w.graph.node(node.inputs[0]).type.channels
    mid_bias = w.param(node, "mid_bias") if attrs["mid_bias"] else None
    mid = _conv(w, node, node.inputs[0], w.param(node, "depthwise_weight"), mid_bias, channels,
                w.step(node.name, "depthwise"))
    if attrs["mid_act"] is not None:
        mid = w.activation(mid, attrs["mid_act"], attrs["mid_alpha"], w.step(node.name, "mid_act"))
    w.epilogue(node, lambda out: _pointwise_conv(w, node, mid, "pointwise_weight", out), "pointwise",
               _residual(node))


def _conv_transpose(w: _Writer, node: Node) -> None:
    attrs = node.attrs
    inputs = [node.inputs[0], w.param(node, "weight")]
    if all(op < s for op, s in zip(attrs["output_padding"], attrs["stride"], strict=True)):
        inputs += [w.param(node, "bias")] if attrs["bias"] else []
        w.emit("ConvTranspose", inputs, node.name, group=attrs["groups"], output_padding=list(attrs["output_padding"]),
               **window_attrs(attrs))
        return
    # ONNX Runtime refuses output_padding >= stride, which the op (as PyTorch) allows below the dilation: the full
    # transposed conv, zero rows after it where output_padding reaches past the end padding, the output's window
    # of that, then the bias.
    top, bottom, left, right = attrs["padding"]
    (oph, opw), (oh, ow) = attrs["output_padding"], node.type.spatial
    y = w.emit("ConvTranspose", inputs, w.step(node.name, "full"), group=attrs["groups"],
               **window_attrs({**attrs, "padding": (0, 0, 0, 0)}))
    extra = [max(0, oph - bottom), max(0, opw - right)]
    y = w.emit("Pad", [y, w.ints(f"{node.name}/pads", [0, 0, 0, 0, 0, 0, *extra])], w.step(node.name, "extended"))
    last = not attrs["bias"]
    window = [w.ints(f"{node.name}/starts", [top, left]), w.ints(f"{node.name}/ends", [top + oh, left + ow]),
              w.ints(f"{node.name}/axes", [2, 3])]
    y = w.emit("Slice", [y, *window], node.name if last else w.step(node.name, "window"))
    if not last:
        w.emit("Add", [y, w.param(node, "bias", per_channel_shape(node))], node.name)


def _dense(w: _Writer, node: Node) -> None:
    inputs = [node.inputs[0], w.param(node, "weight")] + ([w.param(node, "bias")] if node.attrs["bias"] else [])
    w.epilogue(node, lambda out: w.emit("Gemm", inputs, out, transB=1), "gemm", _residual(node))


def _avg_pool(w: _Writer, node: Node) -> None:
    attrs = node.attrs
    _pool(w, node, "AveragePool", {"count_include_pad": int(attrs["count_include_pad"]),
                                   **window_attrs(attrs, dilation=False)})


def _adaptive_avg_pool(w: _Writer, node: Node) -> None:
    """Uniform bins are an AveragePool; others are separable averages: y = A_h @ x @ A_w^T per plane."""
    (h, wd), (oh, ow) = w.graph.node(node.inputs[0]).type.spatial, node.attrs["output_size"]
    if h % oh == 0 and wd % ow == 0:
        kernel = [h // oh, wd // ow]
        w.emit("AveragePool", [node.inputs[0]], node.name, kernel_shape=kernel, strides=kernel)
        return
    rows = w.constant(f"{node.name}/rows", _averaging_matrix(h, oh))
    cols = w.constant(f"{node.name}/cols", np.ascontiguousarray(_averaging_matrix(wd, ow).T))
    by_cols = w.emit("MatMul", [node.inputs[0], cols], w.step(node.name, "cols_mean"))
    w.emit("MatMul", [rows, by_cols], node.name)


def _averaging_matrix(size: int, out: int) -> np.ndarray:
    """(out, size): row i averages the inputs of PyTorch's adaptive bin i."""
    starts, ends = adaptive_bins(size, out)
    matrix = np.zeros((out, size), np.float32)
    for i, (start, end) in enumerate(zip(starts, ends, strict=True)):
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _batch_norm(w: _Writer, node: Node) -> None:
    keys = ("weight", "bias", "running_mean", "running_var")
    w.emit("BatchNormalization", [node.inputs[0], *(w.param(node, k) for k in keys)], node.name,
           epsilon=float(node.attrs["eps"]))


def _lrn(w: _Writer, node: Node) -> None:
    """ONNX's LRN sums the squares of channels [c - (size-1)//2, c + size//2]; ours (PyTorch's) those of
    [c - size//2, c + (size-1)//2]. Equal for odd sizes; an even size is spelled out with a band convolution."""
    a = node.attrs
    if a["size"] % 2:
        w.emit("LRN", [node.inputs[0]], node.name, size=a["size"], alpha=float(a["alpha"]), beta=float(a["beta"]),
               bias=float(a["k"]))
        return
    channels = node.type.channels
    band = np.zeros((channels, channels, 1, 1), np.float32)
    for c in range(channels):
        band[c, max(0, c - a["size"] // 2): c + (a["size"] - 1) // 2 + 1] = 1.0
    x = node.inputs[0]
    squares = w.emit("Mul", [x, x], w.step(node.name, "squares"))
    sums = w.emit("Conv", [squares, w.constant(f"{node.name}/band", band)], w.step(node.name, "sums"),
                  kernel_shape=[1, 1])
    scaled = w.emit("Mul", [sums, w.scalar(f"{node.name}/alpha_over_size", a["alpha"] / a["size"])],
                    w.step(node.name, "scaled"))
    base = w.emit("Add", [scaled, w.scalar(f"{node.name}/k", a["k"])], w.step(node.name, "base"))
    denominator = w.emit("Pow", [base, w.scalar(f"{node.name}/beta", a["beta"])], w.step(node.name, "denominator"))
    w.emit("Div", [x, denominator], node.name)


RESIZE_MODES = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic"}


def _upsample(w: _Writer, node: Node) -> None:
    """Our upsample computes PyTorch's interpolate: nearest is ONNX's asymmetric + floor, bilinear and bicubic
    (A = -0.75, no exclusion) are half_pixel or align_corners; scales or sizes as given."""
    a = node.attrs
    coordinate = "asymmetric" if a["mode"] == "nearest" else "align_corners" if a["align_corners"] else "half_pixel"
    if a["scale"] is not None:
        inputs = [node.inputs[0], "", w.floats(f"{node.name}/scales", [1.0, 1.0, *a["scale"]])]
    else:
        inputs = [node.inputs[0], "", "", w.ints(f"{node.name}/sizes", node.shape)]
    w.emit("Resize", inputs, node.name, mode=RESIZE_MODES[a["mode"]], coordinate_transformation_mode=coordinate,
           nearest_mode="floor", cubic_coeff_a=-0.75, exclude_outside=0)


def _pad(w: _Writer, node: Node) -> None:
    top, bottom, left, right = node.attrs["pads"]
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "edge"}[node.attrs["mode"]]
    w.emit("Pad", [node.inputs[0], w.ints(f"{node.name}/pads", [0, 0, top, left, 0, 0, bottom, right])], node.name,
           mode=mode)


def _crop(w: _Writer, node: Node) -> None:
    """crop's center as the op computes it: the extra row/column of an odd margin at the bottom/right."""
    (h, wd), (rh, rw) = w.graph.node(node.inputs[0]).type.spatial, node.type.spatial
    top, left = (h - rh) // 2, (wd - rw) // 2
    w.emit("Slice", [node.inputs[0], w.ints(f"{node.name}/starts", [top, left]),
                     w.ints(f"{node.name}/ends", [top + rh, left + rw]), w.ints(f"{node.name}/axes", [2, 3])],
           node.name)


def _channel_slice(w: _Writer, node: Node) -> None:
    w.emit("Slice", [node.inputs[0], w.ints(f"{node.name}/starts", [node.attrs["start"]]),
                     w.ints(f"{node.name}/ends", [node.attrs["stop"]]), w.ints(f"{node.name}/axes", [1])], node.name)


def _strided_slice(w: _Writer, node: Node) -> None:
    h, wd = w.graph.node(node.inputs[0]).type.spatial
    w.emit("Slice", [node.inputs[0], w.ints(f"{node.name}/starts", [0, 0]), w.ints(f"{node.name}/ends", [h, wd]),
                     w.ints(f"{node.name}/axes", [2, 3]), w.ints(f"{node.name}/steps", node.attrs["stride"])],
           node.name)


def _dropout(w: _Writer, node: Node) -> None:
    if node.type.dtype != "float32":  # ONNX's Dropout takes floats only; at inference it is the identity
        w.emit("Identity", [node.inputs[0]], node.name)
        return
    w.emit("Dropout", [node.inputs[0], w.scalar(f"{node.name}/ratio", node.attrs["rate"])], node.name)


def _constant(w: _Writer, node: Node) -> None:
    w.emit("Identity", [w.param(node, "value")], node.name)


def _same(op_type: str, **fixed: Any) -> Callable[[_Writer, Node], None]:
    """An op whose ONNX form is one node over the same operands (attributes from `fixed` or the node's)."""

    def rule(w: _Writer, node: Node) -> None:
        w.emit(op_type, list(node.inputs), node.name, **{k: v(node) if callable(v) else v for k, v in fixed.items()})

    return rule


def _activation(name: str) -> Callable[[_Writer, Node], None]:
    def rule(w: _Writer, node: Node) -> None:
        w.activation(node.inputs[0], name, node.attrs.get("alpha", 0.0), node.name)

    return rule


RULES: dict[str, Callable[[_Writer, Node], None]] = {
    "conv2d": _conv2d,
    "depthwise_conv2d": _depthwise,
    "pointwise_conv2d": _pointwise,
    "separable_conv2d": _separable,
    "conv_transpose2d": _conv_transpose,
    "dense": _dense,
    "max_pool2d": _max_pool,
    "max_pool2d_indices": _max_pool_indices,
    "max_unpool2d": _max_unpool,
    "avg_pool2d": _avg_pool,
    "global_avg_pool": _same("GlobalAveragePool"),
    "adaptive_avg_pool2d": _adaptive_avg_pool,
    "batch_norm": _batch_norm,
    "lrn": _lrn,
    "softmax": _same("Softmax", axis=lambda node: node.attrs["axis"]),
    "add": _same("Add"),
    "mul": _same("Mul"),
    "concat": _same("Concat", axis=lambda node: node.attrs["axis"]),
    "flatten": _same("Flatten", axis=1),
    "identity": _same("Identity"),
    "dropout": _dropout,
    "upsample": _upsample,
    "pad": _pad,
    "crop": _crop,
    "channel_slice": _channel_slice,
    "strided_slice": _strided_slice,
    "constant": _constant,
    **{name: _activation(name) for name in ACTIVATIONS},
}
