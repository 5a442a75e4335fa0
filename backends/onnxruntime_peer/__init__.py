"""ONNX Runtime as a backend: the graph exported to ONNX (`cnncomp.onnx_export`), run by an InferenceSession on
the CPU with the same weights.

It is a benchmark peer (`cnncomp bench --peers`) and a third oracle. onnx and onnxruntime are optional
dependencies (`pip install 'cnncomp[onnx]'`), imported only when a graph is compiled for this backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph
from cnncomp.onnx_export import to_onnx
from cnncomp.runtime import check_inputs


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CnnCompError("the onnxruntime backend needs ONNX Runtime: pip install 'cnncomp[onnx]'") from None
    return onnxruntime


class OnnxRuntimeExecutable:
    """Callable: `executable({input_name: array}) -> {output_name: array}`. `model` is the exported ONNX model."""

    def __init__(self, graph: Graph, threads: int | None, optimize: bool) -> None:
        ort = _onnxruntime()
        self.graph = graph
        self.model = to_onnx(graph)
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT's warnings about our unused initializers are noise
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(self.model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.graph.outputs, check_inputs(self.graph, inputs))
        return dict(zip(self.graph.outputs, results, strict=True))


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> OnnxRuntimeExecutable:  # noqa: A001
    """options: `threads` (ONNX Runtime's intra-op threads; default: its own choice, all cores), `optimize`
    (ONNX Runtime's graph optimizations, default on: the fusions it would apply to any model it is given)."""
    options = dict(options or {})
    return OnnxRuntimeExecutable(graph, options.get("threads"), bool(options.get("optimize", True)))
