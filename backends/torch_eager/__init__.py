"""PyTorch eager as a backend: runs a graph op by op with torch.nn.functional on the same weights.

It is the benchmark peer (`cnncomp bench --peers`) and a second, independent oracle for tests. PyTorch is a
development dependency (`pip install cnncomp[dev]`), never a runtime one: this module imports torch only when
a graph is compiled for it. A call keeps its tensors to itself and changes no PyTorch setting, so any number of
threads may call one executable at once.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from cnncomp.errors import CnnCompError, GraphError
from cnncomp.ir import Graph, Node
from cnncomp.ops.activation import ACTIVATIONS, DEFAULT_LEAKY_ALPHA
from cnncomp.runtime import OperationByOperation, ProfileRow, check_inputs, positive_count


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise CnnCompError("the torch backend needs PyTorch: pip install 'cnncomp[dev]'") from None
    return torch


def _pads(attrs: Mapping[str, Any]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) as F.pad wants it: (left, right, top, bottom)."""
    top, bottom, left, right = attrs["padding"] if "padding" in attrs else attrs["pads"]
    return (left, right, top, bottom)


def _symmetric(attrs: Mapping[str, Any]) -> tuple[int, int] | None:
    top, bottom, left, right = attrs["padding"]
    return (top, left) if (top, left) == (bottom, right) else None


class TorchExecutable(OperationByOperation):
    """The executable contract (`cnncomp.runtime.Executable`) for PyTorch eager."""

    def __init__(self, graph: Graph) -> None:
        graph.validate()
        self.torch = _torch()
        self.F = self.torch.nn.functional
        self.graph = graph
        self.order = [node for node in graph.nodes if node.op != "input"]
        self.params = {name: {k: self.torch.from_numpy(v) for k, v in graph.node_params(name).items()}
                       for name in (node.name for node in graph.nodes)}

    @property
    def stats(self) -> dict[str, Any]:
        """`threads`: PyTorch's intra-op threads, which every call uses (a process-wide setting)."""
        return {"threads": self.torch.get_num_threads()}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = self._values(inputs, None)
        return {name: values[name].numpy().copy() for name in self.graph.outputs}

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[ProfileRow]:
        """Each node's median time over `repeat` runs, in execution order; the kernel is the torch function that
        does the node's work."""
        times = np.zeros((repeat, len(self.order)))
        for run in range(repeat):
            self._values(inputs, times[run])
        medians = np.median(times, axis=0)
        return [{"node": node.name, "kernel": RULES[node.op][0], "seconds": float(seconds)}
                for node, seconds in zip(self.order, medians, strict=True)]

    def _values(self, inputs: Mapping[str, np.ndarray], times: np.ndarray | None) -> dict[str, Any]:
        """Every node's tensor, computed in order; each step's time goes into `times` if given."""
        with self.torch.inference_mode():
            values = {name: self.torch.from_numpy(array) for name, array in check_inputs(self.graph, inputs).items()}
            for step, node in enumerate(self.order):
                start = time.perf_counter()
                values[node.name] = self._run(node, [values[i] for i in node.inputs])
                if times is not None:
                    times[step] = time.perf_counter() - start
            return values

    def _run(self, node: Node, operands: list[Any]) -> Any:
        try:
            _, rule = RULES[node.op]
        except KeyError:
            raise GraphError(f"{node.describe()}: the torch backend has no rule for op {node.op!r}") from None
        return rule(self, node, operands, self.params[node.name])

    # ----- helpers the rules share ---------------------------------------------------------------------------
    def conv(self, x: Any, weight: Any, bias: Any, attrs: Mapping[str, Any], groups: int) -> Any:
        padding = _symmetric(attrs)
        if padding is None:
            x, padding = self.F.pad(x, _pads(attrs)), 0
        return self.F.conv2d(x, weight, bias, attrs["stride"], padding, attrs["dilation"], groups)

    def activation(self, x: Any, name: str | None, alpha: float) -> Any:
        """The activation `name` (None: none) as its registry entry spells it in PyTorch."""
        if name is None:
            return x
        spelling = ACTIVATIONS[name].torch
        return torch_function(spelling.name)(x, **spelling.arguments({"alpha": alpha}))

    def epilogue(self, y: Any, attrs: Mapping[str, Any], params: Mapping[str, Any], residual: Any) -> Any:
        if attrs.get("affine"):
            shape = (1, -1) + (1,) * (y.dim() - 2)
            y = y * params["scale"].view(shape) + params["shift"].view(shape)
        if attrs.get("residual"):
            y = y + residual
        return self.activation(y, attrs.get("act"), attrs.get("alpha", DEFAULT_LEAKY_ALPHA))


def torch_function(dotted: str) -> Callable[..., Any]:
    """A torch function by its dotted name, `torch.nn.functional.relu6`."""
    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _conv2d(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    y = e.conv(ops[0], p["weight"], p.get("bias"), node.attrs, node.attrs["groups"])
    return e.epilogue(y, node.attrs, p, ops[1] if node.attrs["residual"] else None)


def _depthwise(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    y = e.conv(ops[0], p["weight"], p.get("bias"), node.attrs, ops[0].shape[1])
    return e.epilogue(y, node.attrs, p, ops[1] if node.attrs["residual"] else None)


def _pointwise(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    x = ops[0] * ops[1] if node.attrs["gate"] else ops[0]
    weight = p["weight"]
    y = e.F.conv2d(x, weight.view(*weight.shape, 1, 1), p.get("bias"))
    return e.epilogue(y, node.attrs, p, ops[-1] if node.attrs["residual"] else None)


def _separable(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    attrs = node.attrs
    mid = e.conv(ops[0], p["depthwise_weight"], p.get("mid_bias"), attrs, ops[0].shape[1])
    mid = e.activation(mid, attrs["mid_act"], attrs["mid_alpha"])
    weight = p["pointwise_weight"]
    y = e.F.conv2d(mid, weight.view(*weight.shape, 1, 1), p.get("bias"))
    return e.epilogue(y, attrs, p, ops[1] if attrs["residual"] else None)


def _conv_transpose(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    a = node.attrs
    top, _, left, _ = a["padding"]
    y = e.F.conv_transpose2d(ops[0], p["weight"], None, a["stride"], 0, 0, a["groups"], a["dilation"])
    # Explicit (possibly uneven) padding crops the full output; output_padding extends it at the end.
    oh, ow = node.shape[2:]
    y = e.F.pad(y, (0, max(0, left + ow - y.shape[3]), 0, max(0, top + oh - y.shape[2])))
    y = y[:, :, top: top + oh, left: left + ow]
    return y + p["bias"].view(1, -1, 1, 1) if "bias" in p else y


def _dense(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    y = e.F.linear(ops[0], p["weight"], p.get("bias"))
    return e.epilogue(y, node.attrs, p, ops[1] if node.attrs["residual"] else None)


def _max_pool(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any], indices: bool = False) -> Any:
    a = node.attrs
    padding = _symmetric(a)
    if padding is None:
        raise GraphError(f"{node.describe()}: the torch backend needs symmetric pooling padding")
    result = e.F.max_pool2d(ops[0], a["kernel"], a["stride"], padding, a["dilation"], a["ceil_mode"],
                            return_indices=indices)
    return result[1] if indices else result


def _avg_pool(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    a = node.attrs
    padding = _symmetric(a)
    if padding is None:
        raise GraphError(f"{node.describe()}: the torch backend needs symmetric pooling padding")
    return e.F.avg_pool2d(ops[0], a["kernel"], a["stride"], padding, a["ceil_mode"], a["count_include_pad"])


def _unpool(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    # A scatter into each output plane, as the op is defined: F.max_unpool2d refuses output sizes more than a
    # stride away from its default, which the op allows (a pool in ceil mode, or one whose stride is not its kernel).
    x, indices = ops
    n, c, oh, ow = node.shape
    out = e.torch.zeros((n, c, oh * ow), dtype=x.dtype)
    return out.scatter_(2, indices.reshape(n, c, -1), x.reshape(n, c, -1)).reshape(n, c, oh, ow)


def _batch_norm(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    return e.F.batch_norm(ops[0], p["running_mean"], p["running_var"], p["weight"], p["bias"], False,
                          eps=node.attrs["eps"])


def _lrn(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    a = node.attrs
    return e.F.local_response_norm(ops[0], a["size"], a["alpha"], a["beta"], a["k"])


def _upsample(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    a = node.attrs
    align = a["align_corners"] if a["mode"] != "nearest" else None
    if a["size"] is not None:
        return e.F.interpolate(ops[0], size=a["size"], mode=a["mode"], align_corners=align)
    return e.F.interpolate(ops[0], scale_factor=a["scale"], mode=a["mode"], align_corners=align)


def _crop(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    (h, w), (rh, rw) = ops[0].shape[2:], node.shape[2:]
    top, left = (h - rh) // 2, (w - rw) // 2
    return ops[0][:, :, top: top + rh, left: left + rw]


def _pad(e: TorchExecutable, node: Node, ops: list[Any], p: Mapping[str, Any]) -> Any:
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate"}[node.attrs["mode"]]
    return e.F.pad(ops[0], _pads(node.attrs), mode=mode)


Rule = Callable[[TorchExecutable, Node, list[Any], Mapping[str, Any]], Any]


def _activation_rule(name: str) -> Rule:
    return lambda e, node, ops, p: e.activation(ops[0], name, node.attrs.get("alpha", DEFAULT_LEAKY_ALPHA))


# Each op's rule, with the torch function that does its work (the kernel a profile names; "none" for an op that
# passes a tensor through).
RULES: dict[str, tuple[str, Rule]] = {
    "conv2d": ("conv2d", _conv2d),
    "depthwise_conv2d": ("conv2d", _depthwise),
    "pointwise_conv2d": ("conv2d", _pointwise),
    "separable_conv2d": ("conv2d", _separable),
    "conv_transpose2d": ("conv_transpose2d", _conv_transpose),
    "dense": ("linear", _dense),
    "max_pool2d": ("max_pool2d", _max_pool),
    "max_pool2d_indices": ("max_pool2d", lambda e, n, ops, p: _max_pool(e, n, ops, p, indices=True)),
    "avg_pool2d": ("avg_pool2d", _avg_pool),
    "max_unpool2d": ("scatter_", _unpool),
    "global_avg_pool": ("adaptive_avg_pool2d", lambda e, n, ops, p: e.F.adaptive_avg_pool2d(ops[0], 1)),
    "adaptive_avg_pool2d": ("adaptive_avg_pool2d",
                            lambda e, n, ops, p: e.F.adaptive_avg_pool2d(ops[0], n.attrs["output_size"])),
    "batch_norm": ("batch_norm", _batch_norm),
    "lrn": ("local_response_norm", _lrn),
    "softmax": ("softmax", lambda e, n, ops, p: e.F.softmax(ops[0], n.attrs["axis"])),
    "add": ("add", lambda e, n, ops, p: ops[0] + ops[1]),
    "mul": ("mul", lambda e, n, ops, p: ops[0] * ops[1]),
    "concat": ("cat", lambda e, n, ops, p: e.torch.cat(ops, n.attrs["axis"])),
    "channel_slice": ("slice", lambda e, n, ops, p: ops[0][:, n.attrs["start"]: n.attrs["stop"]]),
    "flatten": ("flatten", lambda e, n, ops, p: e.torch.flatten(ops[0], 1)),
    "identity": ("none", lambda e, n, ops, p: ops[0]),
    "dropout": ("none", lambda e, n, ops, p: ops[0]),
    "upsample": ("interpolate", _upsample),
    "pad": ("pad", _pad),
    "crop": ("slice", _crop),
    "strided_slice": ("slice", lambda e, n, ops, p: ops[0][:, :, :: n.attrs["stride"][0], :: n.attrs["stride"][1]]),
    "constant": ("none", lambda e, n, ops, p: p["value"]),
    **{name: (op.torch.name.rpartition(".")[2], _activation_rule(name)) for name, op in ACTIVATIONS.items()},
}


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> TorchExecutable:  # noqa: A001
    """options: `threads`, PyTorch's intra-op threads (default None: PyTorch's own setting, left alone). Given, it
    is set here, once, with `torch.set_num_threads`: a process-wide PyTorch setting, which every PyTorch user in
    the process (other executables included) then runs with; calls never change it."""
    executable = TorchExecutable(graph)
    threads = (options or {}).get("threads")
    if threads is not None:
        executable.torch.set_num_threads(positive_count("threads", threads, "threads"))
    return executable
