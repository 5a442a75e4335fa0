"""ONNX Runtime as a backend: the graph exported to ONNX (the ONNX frontend's exporter, `frontends.onnx.export`,
found through the plugin registry: a backend imports no frontend), run by an InferenceSession on
the CPU with the same weights.

It is a benchmark peer (`cnncomp bench --peers`) and a third oracle. onnx and onnxruntime are optional
dependencies (`pip install 'cnncomp[onnx]'`), imported only when a graph is compiled for this backend. ONNX
Runtime's `InferenceSession.run` may be called from any number of threads at once, and so may an executable.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cnncomp import plugins
from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph
from cnncomp.runtime import OperationByOperation, ProfileRow, check_inputs, positive_count

KERNEL_EVENT = "_kernel_time"  # ONNX Runtime's trace names a node's run `<node name>_kernel_time`


def _onnx_export() -> ModuleType:
    return plugins.exporter("onnx")


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise CnnCompError("the onnxruntime backend needs ONNX Runtime: pip install 'cnncomp[onnx]'") from None
    return onnxruntime


class OnnxRuntimeExecutable(OperationByOperation):
    """The executable contract (`cnncomp.runtime.Executable`) for ONNX Runtime. `model` is the exported ONNX
    model, `session` the InferenceSession running it."""

    def __init__(self, graph: Graph, threads: int | None, optimize: bool) -> None:
        self.ort = _onnxruntime()
        self.graph = graph
        self.threads = threads
        self.optimize = optimize
        self.model = _onnx_export().to_onnx(graph)
        self.session = self._session(self._options())

    @property
    def stats(self) -> dict[str, Any]:
        """`threads`: ONNX Runtime's intra-op threads (None: its own choice, all cores); `optimize`: whether its
        graph optimizations are on."""
        return {"threads": self.threads, "optimize": self.optimize}

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self.graph.outputs, check_inputs(self.graph, inputs))
        return dict(zip(self.graph.outputs, results, strict=True))

    def profile(self, inputs: Mapping[str, np.ndarray], repeat: int = 1) -> list[ProfileRow]:
        """Each node's median time over `repeat` runs, in execution order, from ONNX Runtime's own profiler.

        A profiling session (ONNX Runtime profiles a session from its start to its one `end_profiling`) runs the
        model `repeat` times. Each of its nodes is charged to one of ours (`_owners`); a node of ours that became
        several is the sum of them, and `kernel` names their ONNX op types. A node ONNX Runtime folded away or
        fused into another has no row."""
        feeds = check_inputs(self.graph, inputs)
        with tempfile.TemporaryDirectory(prefix="cnncomp-onnxruntime-profile-") as folder:
            options = self._options()
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(folder) / "trace")
            # The graph it runs after its own rewrites: their node names are the trace's.
            options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
            session = self._session(options)
            for _ in range(repeat):
                session.run(self.graph.outputs, feeds)
            trace = json.loads(Path(session.end_profiling()).read_text())
            optimized = _onnx_export().onnx_module().load(options.optimized_model_filepath)
            owners = _owners(self.graph, self.model, optimized)
        seconds: dict[str, np.ndarray] = {}
        kernels: dict[str, list[str]] = {}
        runs: dict[str, int] = {}  # how many runs of each ONNX Runtime node the trace has shown so far
        for event in trace:
            if event.get("cat") != "Node" or not event["name"].endswith(KERNEL_EVENT):
                continue
            name = event["name"][: -len(KERNEL_EVENT)]
            owner, run = owners[name], runs.get(name, 0)
            runs[name] = run + 1
            seconds.setdefault(owner, np.zeros(repeat))[run] += event["dur"] * 1e-6  # microseconds
            op_types = kernels.setdefault(owner, [])
            if event["args"]["op_name"] not in op_types:
                op_types.append(event["args"]["op_name"])
        return [{"node": node.name, "kernel": "+".join(kernels[node.name]),
                 "seconds": float(np.median(seconds[node.name]))}
                for node in self.graph.nodes if node.name in seconds]

    def _options(self) -> Any:
        options = self.ort.SessionOptions()
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: ORT's warnings about our unused initializers are noise
        if not self.optimize:
            options.graph_optimization_level = self.ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return options

    def _session(self, options: Any) -> Any:
        return self.ort.InferenceSession(self.model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _owners(graph: Graph, exported: Any, optimized: Any) -> dict[str, str]:
    """Our node for each node of `optimized`, the model ONNX Runtime runs after rewriting `exported`.

    An exported node is named like our node, or `node/step` for the steps of its ONNX form, and so is the value
    it computes. ONNX Runtime keeps a value's name where it still computes that value, and names a node it
    rewrote (fused, or changed to its blocked NCHWc layout) after one of the nodes it replaces, with a suffix
    (`relu_1_nchwc`). So a node is charged to the owner of the value it computes, else to the exported node its
    name starts with (the longest such name), else (a layout conversion ONNX Runtime added) to whichever node
    reads its result.
    """
    ours = {node.name for node in graph.nodes}

    def our_node(exported_name: str) -> str:
        parts = exported_name.split("/")
        return next(name for name in ("/".join(parts[:end]) for end in range(len(parts), 0, -1)) if name in ours)

    exported_owner = {node.name: our_node(node.name) for node in exported.graph.node}
    value_owner = {value: exported_owner[node.name] for node in exported.graph.node for value in node.output}
    readers: dict[str, list[Any]] = {}
    for node in optimized.graph.node:
        for value in node.input:
            readers.setdefault(value, []).append(node)
    owners: dict[str, str] = {}
    for node in optimized.graph.node:
        by_value = [value_owner[value] for value in node.output if value in value_owner]
        by_name = [name for name in exported_owner if node.name.startswith(name)]
        if by_value:
            owners[node.name] = by_value[0]
        elif by_name:
            owners[node.name] = exported_owner[max(by_name, key=len)]

    def owner(node: Any) -> str:
        if node.name not in owners:
            owners[node.name] = owner(next(reader for value in node.output for reader in readers.get(value, ())))
        return owners[node.name]

    for node in optimized.graph.node:
        owner(node)
    return owners


def compile(graph: Graph, options: Mapping[str, Any] | None = None) -> OnnxRuntimeExecutable:  # noqa: A001
    """options: `threads` (ONNX Runtime's intra-op threads; default: its own choice, all cores), `optimize`
    (ONNX Runtime's graph optimizations, default on: the fusions it would apply to any model it is given)."""
    options = dict(options or {})
    threads = options.get("threads")
    if threads is not None:
        positive_count("threads", threads, "threads")
    return OnnxRuntimeExecutable(graph, threads, bool(options.get("optimize", True)))
