"""The ONNX importer: reads a model, binds its inputs and initializers, converts its nodes in order (folding
what is constant, converting the rest with the op table of `converters`), checks every shape against ONNX's own
shape inference, and reports every node it cannot express in one error."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnncomp.errors import CnnCompError, ModelLoadError
from cnncomp.ir import Graph, TensorType
from frontends.onnx.converters import find_converter, first_opset
from frontends.onnx.folding import FOLDERS
from frontends.onnx.graph import OnnxNode, Overhanging, PendingSlice, Unsupported, Value

MIN_OPSET = 7
# Initializers up to this many elements take part in ONNX's shape inference (shapes, scales, pads); larger ones
# (weights) are given to it as inputs of their shape, so it never copies them.
SHAPE_INFERENCE_MAX_ELEMENTS = 4096
# How many node names an error lists per op type before "and N more".
NAMES_SHOWN = 3


def onnx_module() -> Any:
    try:
        import onnx
    except ImportError:
        raise ModelLoadError("reading ONNX models needs the onnx package: pip install 'cnncomp[onnx]'") from None
    return onnx


def read_model(path: str | Path) -> Any:
    """The ModelProto in `path`, or a one-line ModelLoadError naming the file."""
    onnx = onnx_module()
    path = Path(path)
    try:
        model = onnx.load(str(path))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read the ONNX model: {exc.strerror or exc}") from None
    except Exception as exc:  # protobuf's DecodeError and friends: a truncated or non-ONNX file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path}: not a readable ONNX model (truncated or another format): {reason}") from None
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.output:
        raise ModelLoadError(f"{path}: not an ONNX model (no IR version, graph or outputs): truncated or another "
                             "format")
    return model


@dataclass(frozen=True)
class Problem:
    """A node that cannot be imported: `reason` is None when no converter exists for its op type."""

    node: OnnxNode
    reason: str | None


class Importer:
    """Converts one ModelProto. Converters (see `converters`) call the methods of the "converter interface"."""

    def __init__(self, model: Any, name: str, source: str, input_shapes: Mapping[str, Sequence[int]] | None,
                 onnx: Any, input_values: Mapping[str, np.ndarray] | None = None) -> None:
        self.onnx = onnx
        self.model = model
        self.source = source
        self.opset = _default_opset(model, source)
        self.graph = Graph(name)
        self.values: dict[str, Value] = {}
        self.producers: dict[str, OnnxNode] = {}
        self.problems: list[Problem] = []
        self.unchecked = 0  # nodes reading what an unsupported node produces
        self.poisoned: set[str] = set()
        body = model.graph
        self.output_names = [o.name for o in body.output]
        self.readers: Counter[str] = Counter(name for node in body.node for name in node.input if name)
        self.readers.update(self.output_names)
        # Values of graph inputs given at import (a model taking its weights as inputs, as ONNX's node tests do):
        # those that cannot be a graph input of ours (not float32, or fewer than two axes: shapes, scales, biases)
        # are constants; the others stay inputs, and a converter needing a constant there reads the value.
        self.input_values = {name: np.asarray(value) for name, value in (input_values or {}).items()}
        self.constant_inputs = {name: value for name, value in self.input_values.items()
                                if value.dtype != np.float32 or value.ndim < 2}
        unknown = sorted(set(self.input_values) - {vi.name for vi in body.input})
        if unknown:
            raise ModelLoadError(f"{source}: a value is given for {unknown[0]!r}, which is no input of the model")
        initializers = {t.name for t in body.initializer} | set(self.constant_inputs)
        self.input_infos = [vi for vi in body.input if vi.name not in initializers]
        self.reserved = {vi.name for vi in self.input_infos} | set(self.output_names)
        self.blocks = scope_blocks([node.name for node in body.node])
        given_shapes = {name: value.shape for name, value in self.input_values.items()
                        if name not in self.constant_inputs}
        self.input_shapes = self._input_shapes({**given_shapes, **(input_shapes or {})})
        # Values of x * hard_sigmoid(x) patterns: the HardSigmoid's value -> (its input, alpha, beta).
        self.hard_sigmoids: dict[str, tuple[str, float, float]] = {}

    # ----- the whole import ------------------------------------------------------------------------------------
    def run(self) -> Graph:
        for name, shape in self.input_shapes.items():
            self.values[name] = self.graph.add_node(name, "input", attrs={"shape": shape}).name
        for tensor in self.model.graph.initializer:
            self.values[tensor.name] = self._malformed_is_one_line(f"initializer {tensor.name!r}",
                                                                   self.onnx.numpy_helper.to_array, tensor)
        self.values.update(self.constant_inputs)
        nodes = [self._malformed_is_one_line(f"node {proto.name or proto.op_type!r}", OnnxNode.from_proto, proto,
                                             self.onnx) for proto in self.model.graph.node]
        for node in nodes:
            self._convert(node)
        if not self.problems:
            self._check_shapes()
        if self.problems:
            raise ModelLoadError(self.report(len(nodes)))
        self._bind_outputs()
        self._remove_dead()
        self.graph.validate()
        return self.graph

    def _malformed_is_one_line(self, what: str, read: Any, *args: Any) -> Any:
        """`read(*args)`, a malformed tensor (dimensions that disagree with its data, an unknown element type) a
        one-line ModelLoadError naming `what`."""
        try:
            return read(*args)
        except (ValueError, TypeError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"{self.source}: {what} is malformed: {reason}") from None

    def _input_shapes(self, given: dict[str, Sequence[int]]) -> dict[str, tuple[int, ...]]:
        """Every graph input's shape: from `given`, else the model's, a symbolic batch axis read as 1."""
        names = [vi.name for vi in self.input_infos]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ModelLoadError(f"{self.source}: no input {unknown[0]!r}; the model's inputs: "
                                 f"{', '.join(map(repr, names))}")
        shapes = {}
        for vi in self.input_infos:
            tensor = vi.type.tensor_type
            if not vi.type.HasField("tensor_type"):
                raise ModelLoadError(f"{self.source}: input {vi.name!r} is not a tensor")
            if tensor.elem_type != self.onnx.TensorProto.FLOAT:
                dtype = self.onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
                raise ModelLoadError(f"{self.source}: input {vi.name!r} is {dtype}; cnncomp computes float32")
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or "?")
                    for d in tensor.shape.dim]
            if vi.name in given:
                shape = tuple(int(d) for d in given[vi.name])
                if len(shape) != len(dims):
                    raise ModelLoadError(f"{self.source}: input {vi.name!r} has rank {len(dims)} "
                                         f"({'x'.join(map(str, dims))}), got the shape {'x'.join(map(str, shape))}")
            else:
                symbolic = [(axis, d) for axis, d in enumerate(dims) if isinstance(d, str) and axis > 0]
                if symbolic:
                    named = ", ".join(f"{d!r} (axis {axis})" for axis, d in symbolic)
                    example = "x".join("1" if i == 0 and isinstance(d, str) else str(d).upper() if isinstance(d, str)
                                       else str(d) for i, d in enumerate(dims))
                    raise ModelLoadError(f"{self.source}: input {vi.name!r} has symbolic dimensions {named}; give "
                                         f"its shape with --input-shape {vi.name}={example}")
                shape = tuple(1 if isinstance(d, str) else d for d in dims)
            if len(shape) < 2 or min(shape) <= 0:
                raise ModelLoadError(f"{self.source}: input {vi.name!r} has shape {'x'.join(map(str, shape))}; "
                                     "cnncomp needs a batch axis and at least one more, all positive")
            shapes[vi.name] = shape
        return shapes

    def _convert(self, node: OnnxNode) -> None:
        for output in node.outputs:
            if output:
                self.producers[output] = node
        present = [name for name in node.inputs if name]
        if any(name in self.poisoned for name in present):
            # What an unsupported node feeds cannot be converted; its op type can still be checked.
            if node.domain or (find_converter(node.op_type, self.opset) is None and node.op_type not in FOLDERS):
                return self._fail(node, None)
            self.unchecked += 1
            self.poisoned.update(node.outputs)
            return
        try:
            results = self._results(node, present)
        except Unsupported as exc:
            return self._fail(node, str(exc))
        except CnnCompError as exc:
            return self._fail(node, str(exc))
        except (ValueError, TypeError, IndexError, KeyError) as exc:  # a malformed node (wrong arity, attribute)
            return self._fail(node, f"malformed node: {type(exc).__name__}: {exc}")
        if results is None:  # another domain's op, or an op type with no converter: listed by type
            return self._fail(node, None)
        self._bind(node, list(results) if isinstance(results, (list, tuple)) else [results])

    def _results(self, node: OnnxNode, present: list[str]) -> Any:
        """What the node computes: folded arrays where every input is a constant and a folder exists, else what
        its converter emits; None where nothing converts it."""
        missing = [name for name in present if name not in self.values]
        if missing:
            raise Unsupported(f"reads {missing[0]!r}, which no node before it produces (the graph is not in "
                              "topological order, or refers to an undefined value)")
        if node.domain:
            return None
        arrays = [self.values.get(name) if name else None for name in node.inputs]
        if node.op_type in FOLDERS and all(isinstance(a, np.ndarray) for a in arrays if a is not None) \
                and (present or not node.inputs):
            return [np.asarray(r) for r in FOLDERS[node.op_type](node, arrays, self.opset)]
        convert = find_converter(node.op_type, self.opset)
        if convert is None:
            if node.op_type in FOLDERS:
                raise Unsupported(f"{node.op_type} of a computed tensor (only constants, such as shape "
                                  "computations, are folded)")
            return None
        return convert(self, node)

    def _bind(self, node: OnnxNode, results: list[Any]) -> None:
        """The node's outputs bound to what it computed; an output read later but not computed is its failure."""
        for index, output in enumerate(node.outputs):
            if not output:
                continue
            if index < len(results) and results[index] is not None:
                self.values[output] = results[index]
            elif self.readers[output]:
                return self._fail(node, f"its output {index} ({output!r}) is read, but cnncomp computes only "
                                        f"output{'s' if len(results) > 1 else ''} "
                                        f"{', '.join(str(i) for i in range(len(results)))}")
        return None

    def _fail(self, node: OnnxNode, reason: str | None) -> None:
        self.problems.append(Problem(node, reason))
        self.poisoned.update(node.outputs)

    # ----- the converter interface -----------------------------------------------------------------------------
    def raw(self, node: OnnxNode, index: int) -> Value | None:
        """What input `index` is bound to; None when it is omitted."""
        name = node.input(index)
        return self.values[name] if name else None

    def value(self, node: OnnxNode, index: int) -> str:
        """Input `index` as a graph value (our node's name)."""
        bound = self.raw(node, index)
        if isinstance(bound, str):
            return bound
        if bound is None:
            raise Unsupported(f"input {index} is missing")
        if node.input(index) in self.constant_inputs:
            raise Unsupported(f"input {index} ({node.input(index)!r}) is a graph input of {bound.dtype} and shape "
                              f"{list(bound.shape)}; cnncomp computes on float32 tensors with a batch axis and at "
                              "least one more")
        raise Unsupported(f"input {index} ({node.input(index)!r}) is {_not_a_tensor(bound)}")

    def const(self, node: OnnxNode, index: int, required: bool = True) -> np.ndarray | None:
        """Input `index` as a constant array (None when omitted and not required)."""
        bound = self.raw(node, index)
        if bound is None:
            if required:
                raise Unsupported(f"input {index} is missing")
            return None
        if isinstance(bound, str) and bound in self.input_shapes and bound in self.input_values:
            return self.input_values[bound]  # a graph input whose value was given (a weight)
        if not isinstance(bound, np.ndarray):
            raise Unsupported(f"input {index} ({node.input(index)!r}) is computed; cnncomp needs a constant there")
        return bound

    def type(self, value: str) -> TensorType:
        return self.graph.node(value).type

    def used(self, node: OnnxNode, index: int) -> bool:
        """Whether output `index` exists and something reads it (a node or the graph's outputs)."""
        return index < len(node.outputs) and bool(node.outputs[index]) and self.readers[node.outputs[index]] > 0

    def sole_reader(self, value_name: str) -> bool:
        """Whether exactly one node reads the ONNX value and it is not a graph output."""
        return self.readers[value_name] == 1 and value_name not in self.output_names

    def emit(self, node: OnnxNode, op: str, inputs: Sequence[str], attrs: Mapping[str, Any] | None = None,
             params: Mapping[str, np.ndarray] | None = None, output: int = 0, step: str | None = None) -> str:
        """Add one node of ours for `node`. Without `step` it computes ONNX output `output` and is named after
        it: the output's name if it is a graph output, else the ONNX node's name (first output) or the output's;
        with `step` it is an intermediate value named `<that>_<step>`. Returns the node's name."""
        base = self._base_name(node, output)
        if step is None and base in self.output_names and base not in self.graph:
            name = base
        else:
            name = self._fresh(f"{base}_{step}" if step else base)
        meta = {"block": self.blocks[node.name]} if self.blocks.get(node.name) else None
        cleaned = {k: v for k, v in (attrs or {}).items() if v is not None}
        params = {k: np.asarray(v, dtype=np.float32) for k, v in (params or {}).items()}
        return self.graph.add_node(name, op, inputs, cleaned, params=params, meta=meta).name

    def unit_affine(self, node: OnnxNode, x: str, scale: np.ndarray, shift: np.ndarray,
                    step: str | None = None) -> str:
        """y = x * scale + shift per channel, exactly: a batch_norm whose running variance plus eps is exactly 1
        (both powers of two), so its reference computes x * scale + shift with no other rounding. -O1 folds it
        into a neighbouring conv like any batch norm."""
        channels = self.type(x).channels
        params = {"weight": np.broadcast_to(scale, (channels,)), "bias": np.broadcast_to(shift, (channels,)),
                  "running_mean": np.zeros(channels), "running_var": np.full(channels, 1.0 - UNIT_EPS)}
        return self.emit(node, "batch_norm", [x], {"eps": UNIT_EPS}, params, step=step)

    # ----- names ---------------------------------------------------------------------------------------------
    def _base_name(self, node: OnnxNode, output: int) -> str:
        value = node.outputs[output] if output < len(node.outputs) else ""
        if value in self.reserved:
            return value
        if output == 0 and node.name:
            return node.name
        return value or node.label or node.op_type

    def _fresh(self, name: str) -> str:
        """`name` if no node has it and it is no graph input or output, else `name_1`, `name_2`, ..."""
        candidate, index = name, 0
        while candidate in self.graph or candidate in self.reserved:
            index += 1
            candidate = f"{name}_{index}"
        return candidate

    # ----- after the nodes -------------------------------------------------------------------------------------
    def _bind_outputs(self) -> None:
        """The graph's outputs keep their ONNX names: a value bound to a node of another name (an alias, an input)
        gets an identity node of the output's name."""
        outputs = []
        for name in self.output_names:
            bound = self.values.get(name)
            if not isinstance(bound, str):
                if isinstance(bound, np.ndarray) and self.constant_inputs:
                    raise ModelLoadError(f"{self.source}: graph output {name!r} is computed from constants only, "
                                         "the graph inputs given as constants among them (cnncomp computes on "
                                         "float32 tensors with a batch axis and at least one more)")
                raise ModelLoadError(f"{self.source}: graph output {name!r} is {_not_a_tensor(bound)}")
            if bound != name:
                bound = self.graph.add_node(name, "identity", [bound]).name
            outputs.append(bound)
        self.graph.set_outputs(outputs)

    def _remove_dead(self) -> None:
        """Drop what no output needs (a Sigmoid absorbed into a silu, a bias-free layer replaced by its biased
        twin); graph inputs stay, but for those whose given value was read as a constant only."""
        for node in reversed(self.graph.nodes):
            if node.op == "input" and node.name not in self.input_values:
                continue
            if node.name not in self.graph.outputs and not self.graph.consumers(node.name):
                self.graph.remove_node(node.name)

    def _check_shapes(self) -> None:
        """Every graph value must have the shape ONNX's shape inference gives it (a safety net under the
        converters: a mismatch is a semantic difference, reported like an unsupported node)."""
        inferred = self._onnx_shapes()
        for name, bound in self.values.items():
            if not isinstance(bound, str) or name not in inferred or name not in self.producers:
                continue
            ours, theirs = self.type(bound).shape, inferred[name]
            if len(ours) != len(theirs) or any(t is not None and t != o for o, t in zip(ours, theirs, strict=False)):
                shown = "x".join("?" if t is None else str(t) for t in theirs)
                self.problems.append(Problem(self.producers[name], f"ONNX's shape inference gives {name!r} the shape "
                                                                   f"{shown}, cnncomp's {self.type(bound)}"))

    def _onnx_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """ONNX's inferred shape of every value, with the inputs at the shapes we import them at."""
        onnx = self.onnx
        body = self.model.graph
        light = onnx.GraphProto(name=body.name)
        light.node.extend(body.node)
        light.output.extend(body.output)
        for name, shape in self.input_shapes.items():
            light.input.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape))
        constants = [onnx.numpy_helper.from_array(value, name) for name, value in self.constant_inputs.items()]
        for tensor in [*body.initializer, *constants]:
            if np.prod(tensor.dims, dtype=np.int64) <= SHAPE_INFERENCE_MAX_ELEMENTS:
                light.initializer.append(tensor)
            else:
                light.input.append(onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims))
        model = onnx.helper.make_model(light, opset_imports=self.model.opset_import, ir_version=self.model.ir_version)
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
        except Exception:  # ONNX cannot infer this model's shapes; the converters' own checks stand
            return {}
        shapes = {}
        for info in [*inferred.graph.value_info, *inferred.graph.output]:
            if info.type.HasField("tensor_type") and info.type.tensor_type.HasField("shape"):
                shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                          for d in info.type.tensor_type.shape.dim)
        return shapes

    def report(self, total: int) -> str:
        """Every problem in one line: op types without a converter (with counts and node names), then each node
        a converter refused, with its reason."""
        missing: dict[str, list[OnnxNode]] = {}
        refused = []
        for problem in self.problems:
            if problem.reason is None:
                missing.setdefault(problem.node.qualified_op, []).append(problem.node)
            else:
                refused.append(problem)
        parts = []
        if missing:
            groups = []
            for op_type, nodes in missing.items():
                names = ", ".join(repr(n.label) for n in nodes[:NAMES_SHOWN])
                more = f" and {len(nodes) - NAMES_SHOWN} more" if len(nodes) > NAMES_SHOWN else ""
                since = first_opset(op_type)
                note = f", defined from opset {since}" if since is not None and since > self.opset else ""
                groups.append(f"{op_type} x{len(nodes)} ({names}{more}{note})")
            parts.append(f"no converter for {len(missing)} op type{'s' if len(missing) > 1 else ''}: "
                         + ", ".join(groups))
        if refused:
            parts.append("not supported as used: " + "; ".join(f"{p.node.describe()}: {p.reason}" for p in refused))
        if self.unchecked:
            parts.append(f"{self.unchecked} node{'s' if self.unchecked > 1 else ''} reading their outputs "
                         f"{'were' if self.unchecked > 1 else 'was'} not checked")
        count = len(self.problems)
        return (f"{self.source}: cannot import {count} of {total} node{'s' if total > 1 else ''} (opset "
                f"{self.opset}): " + ". ".join(parts))


def _not_a_tensor(bound: Value) -> str:
    """Why a bound value is not a tensor of the graph."""
    if isinstance(bound, np.ndarray):
        return "a constant; cnncomp computes on tensors that flow from the graph inputs"
    if isinstance(bound, Overhanging):
        return ("a ceil-mode pooling whose last window ONNX starts in the padding (cnncomp, as PyTorch, drops that "
                "window)")
    if isinstance(bound, PendingSlice):
        h, w = bound.size
        return (f"a center crop to {h}x{w}, but no tensor of that size to crop to (cnncomp's crop takes its size "
                "from a reference tensor)")
    return "MaxPool's flat indices, which only MaxUnpool reads"


# y = x * scale + shift as a batch norm: running_var + eps == 1 exactly in float32 (and float64).
UNIT_EPS = 2.0 ** -10


def _default_opset(model: Any, source: str) -> int:
    import onnx

    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise ModelLoadError(f"{source}: the model imports no version of the standard ONNX operator set")
    opset = versions[0]
    newest = onnx.defs.onnx_opset_version()
    if opset < MIN_OPSET or opset > newest:
        raise ModelLoadError(f"{source}: the model uses opset {opset}; cnncomp imports opsets {MIN_OPSET} to "
                             f"{newest} (the newest the installed onnx knows)")
    return opset


def scope_blocks(names: Sequence[str]) -> dict[str, str]:
    """The model block of each node from PyTorch-style scoped node names, `/layer1/layer1.0/conv1/Conv`: the
    module path is `layer1.0.conv1` (a component that extends the previous one replaces it). A node of a leaf
    module (one that holds no other module's nodes) belongs to the module's parent; other nodes to their module.
    Names without a scope give no block."""
    paths: dict[str, str] = {}
    for name in names:
        parts = name.split("/")
        if len(parts) < 3 or parts[0] != "":
            continue
        modules: list[str] = []
        for part in parts[1:-1]:
            if modules and part.startswith(modules[-1] + "."):
                modules[-1] = part
            elif modules and part.startswith(".".join(modules) + "."):
                modules = [part]
            else:
                modules.append(part)
        paths[name] = ".".join(modules)
    parents = {prefix for path in paths.values() for prefix in _prefixes(path)}
    blocks = {}
    for name, path in paths.items():
        block = path if path in parents else path.rpartition(".")[0]
        if block:
            blocks[name] = block
    return blocks


def _prefixes(path: str) -> list[str]:
    parts = path.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]
