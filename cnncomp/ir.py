"""The graph IR: SSA dataflow graphs of registry ops over NCHW tensors.

A `Graph` keeps its nodes in a `networkx.DiGraph`. Each node produces one tensor, named like the node. The
operand order of a node is its `inputs` tuple; the edges mirror it (edge attribute `positions`: the operand
positions at which the source feeds the target) and are kept in step by the Graph's methods, never by hand.
Parameters are numpy arrays owned by the graph, keyed `node_name.param`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from cnncomp.errors import GraphError, ModelLoadError, ShapeError

JSON_FORMAT_VERSION = 1
DTYPES = ("float32", "int64")


@dataclass(frozen=True)
class TensorType:
    """Static shape and element type of a tensor. Activations are NCHW (or N x features once flattened)."""

    shape: tuple[int, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in DTYPES:
            raise GraphError(f"unsupported dtype {self.dtype!r}; expected one of {', '.join(DTYPES)}")

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def batch(self) -> int:
        return self.shape[0]

    @property
    def channels(self) -> int:
        return self.shape[1]

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[2:]

    def __str__(self) -> str:
        text = "x".join(str(d) for d in self.shape)
        return text if self.dtype == "float32" else f"{text} {self.dtype}"


@dataclass(frozen=True)
class Node:
    """One op application. `attrs` are normalized plain data; treat a Node as immutable (replace it to change)."""

    name: str
    op: str
    inputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    type: TensorType
    # Free-form annotations that do not change meaning (the block a node came from, what a fusion absorbed).
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    def describe(self) -> str:
        return f"node {self.name!r} ({self.op})"


def _attr_to_json(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_attr_to_json(v) for v in value]
    return value


class Graph:
    """A model: input nodes, op nodes in dataflow order, named outputs and parameters.

    `strict=True` makes shape inference refuse window sizes that do not divide evenly (the lecture's
    "fractions are illegal") instead of flooring them.
    """

    def __init__(self, name: str = "model", strict: bool = False) -> None:
        self.name = name
        self.strict = strict
        self.params: dict[str, np.ndarray] = {}
        self._dag = nx.DiGraph()
        self._order_key: dict[str, int] = {}
        self._next_key = 0
        self._order: list[Node] | None = None  # the nodes in topological order, until the graph changes
        self._outputs: list[str] = []
        # Annotations of the whole graph attached for backends (the planner's memory plan): plain JSON data
        # about these shapes, so with_input_shapes does not carry them.
        self.meta: dict[str, Any] = {}

    # ----- reading -----------------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._dag

    def __len__(self) -> int:
        return self._dag.number_of_nodes()

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)

    def node(self, name: str) -> Node:
        try:
            return self._dag.nodes[name]["node"]
        except KeyError:
            raise GraphError(f"graph {self.name!r} has no node {name!r}") from None

    @property
    def nodes(self) -> list[Node]:
        """All nodes in a topological order; ties are broken by insertion order, so the order is stable. The order
        is computed once per change of the graph (passes read it often)."""
        return list(self._ordered())

    def _ordered(self) -> list[Node]:
        if self._order is None:
            names = nx.lexicographical_topological_sort(self._dag, key=self._order_key.__getitem__)
            self._order = [self._dag.nodes[name]["node"] for name in names]
        return self._order

    @property
    def inputs(self) -> list[Node]:
        """The input nodes, in order (read on every call of a compiled model: from the cached order, no copy)."""
        return [n for n in self._ordered() if n.op == "input"]

    @property
    def outputs(self) -> list[str]:
        return list(self._outputs)

    def consumers(self, name: str) -> list[Node]:
        return [self._dag.nodes[c]["node"] for c in sorted(self._dag.successors(name), key=self._order_key.get)]

    def node_params(self, name: str) -> dict[str, np.ndarray]:
        """The parameters of one node, keyed by their local name (`weight`, `bias`, ...)."""
        prefix = name + "."
        return {key[len(prefix):]: value for key, value in self.params.items() if key.startswith(prefix)}

    # ----- building ----------------------------------------------------------------------------------------
    def add_node(
        self,
        name: str,
        op: str,
        inputs: Iterable[str] = (),
        attrs: Mapping[str, Any] | None = None,
        params: Mapping[str, np.ndarray] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Node:
        """Normalize the attributes, infer the output type and add the node; errors name the node."""
        if name in self._dag:
            raise GraphError(f"duplicate node name {name!r}: every value in a graph has one producer")
        node = self.make_node(name, op, inputs, attrs, meta)
        self._insert(node)
        if params:
            self.set_node_params(name, params)
        return node

    def make_node(
        self,
        name: str,
        op: str,
        inputs: Iterable[str] = (),
        attrs: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Node:
        """Build a node over this graph's values without adding it (for `add_node` and `replace_node`)."""
        from cnncomp.ops import get_op

        inputs = tuple(inputs)
        for operand in inputs:
            if operand not in self._dag:
                raise GraphError(f"node {name!r} ({op}): operand {operand!r} is not a value of the graph")
        opdef = get_op(op)
        operand_types = [self.node(i).type for i in inputs]
        normalized, out_type = opdef.check(name, dict(attrs or {}), operand_types, strict=self.strict)
        return Node(name, opdef.name, inputs, normalized, out_type, dict(meta or {}))

    def _insert(self, node: Node) -> None:
        self._order = None
        self._dag.add_node(node.name, node=node)
        self._order_key[node.name] = self._next_key
        self._next_key += 1
        self._link(node)

    def _link(self, node: Node) -> None:
        for position, operand in enumerate(node.inputs):
            if self._dag.has_edge(operand, node.name):
                self._dag.edges[operand, node.name]["positions"].append(position)
            else:
                self._dag.add_edge(operand, node.name, positions=[position])

    def set_node_params(self, name: str, params: Mapping[str, np.ndarray]) -> None:
        """Attach parameters to a node, checking names and shapes against its op's declaration."""
        from cnncomp.ops import get_op

        node = self.node(name)
        specs = get_op(node.op).params(node.attrs, [self.node(i).type for i in node.inputs])
        for key, value in params.items():
            if key not in specs:
                expected = ", ".join(specs) or "none"
                raise GraphError(f"{node.describe()}: unknown parameter {key!r}; expected: {expected}")
            array = np.asarray(value)
            if array.shape != specs[key].shape:
                raise GraphError(
                    f"{node.describe()}: parameter {key!r} has shape {array.shape}, expected {specs[key].shape}"
                )
            self.params[f"{name}.{key}"] = np.ascontiguousarray(array, dtype=np.float32)

    def set_outputs(self, names: Iterable[str]) -> None:
        names = list(names)
        for name in names:
            self.node(name)
        if len(set(names)) != len(names):
            raise GraphError(f"graph {self.name!r}: an output is listed twice: {names}")
        self._outputs = names

    def replace_node(self, name: str, node: Node) -> None:
        """Put `node` in place of the node called `name` (same name: new op, attrs or operands)."""
        if node.name != name:
            raise GraphError(f"replace_node: new node is called {node.name!r}, expected {name!r}")
        old = self.node(name)
        if old.type != node.type:
            raise GraphError(f"replace_node: {node.describe()} changes the type {old.type} -> {node.type}")
        # Only a new operand can close a cycle, and only if it is the node or reads it: a walk from the node,
        # not a check of the whole graph (passes replace nodes by the hundred).
        for operand in set(node.inputs) - set(old.inputs):
            if operand == name or nx.has_path(self._dag, name, operand):
                raise GraphError(f"replace_node: {node.describe()} would make a cycle")
        self._order = None
        for operand in set(old.inputs):
            self._dag.remove_edge(operand, name)
        self._dag.nodes[name]["node"] = node
        self._link(node)

    def replace_uses(self, old: str, new: str) -> None:
        """Make every consumer of `old` (and the graph outputs) read `new` instead."""
        for consumer in self.consumers(old):
            inputs = tuple(new if i == old else i for i in consumer.inputs)
            self.replace_node(consumer.name, self.make_node(consumer.name, consumer.op, inputs,
                                                            consumer.attrs, consumer.meta))
        self._outputs = [new if o == old else o for o in self._outputs]

    def remove_node(self, name: str) -> None:
        """Remove a node nobody reads, with its parameters."""
        if self.consumers(name) or name in self._outputs:
            raise GraphError(f"cannot remove node {name!r}: it is still used")
        self._order = None
        self._dag.remove_node(name)
        del self._order_key[name]
        for key in [k for k in self.params if k.startswith(name + ".")]:
            del self.params[key]

    def copy(self) -> Graph:
        other = Graph(self.name, self.strict)
        other.params = dict(self.params)
        other._dag = self._dag.copy()
        for _, _, data in other._dag.edges(data=True):
            data["positions"] = list(data["positions"])
        other._order_key = dict(self._order_key)
        other._next_key = self._next_key
        other._outputs = list(self._outputs)
        other.meta = deepcopy(self.meta)
        return other

    def as_strict(self) -> Graph:
        """The same graph in strict mode, its shapes inferred again: a window whose output size is a fraction
        (the lecture's "fractions are illegal") is a ShapeError naming the node."""
        other = self._reinferred({}, strict=True)
        other.meta = deepcopy(self.meta)
        return other

    def with_input_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> Graph:
        """The same graph over inputs of other shapes (another batch size or image size), shapes re-inferred.
        Graph-level `meta` (such as a memory plan) describes the old shapes and is dropped."""
        unknown = set(shapes) - {n.name for n in self.inputs}
        if unknown:
            raise GraphError(f"graph {self.name!r} has no input {sorted(unknown)[0]!r}")
        other = self._reinferred(shapes, self.strict)
        other._check_param_shapes(shapes)
        return other

    def _reinferred(self, shapes: Mapping[str, tuple[int, ...]], strict: bool) -> Graph:
        other = Graph(self.name, strict)
        for node in self.nodes:
            attrs = dict(node.attrs)
            if node.op == "input" and node.name in shapes:
                attrs["shape"] = tuple(shapes[node.name])
            other._insert(other.make_node(node.name, node.op, node.inputs, attrs, node.meta))
        other.params = dict(self.params)
        other._outputs = list(self._outputs)
        return other

    def _check_param_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Weights fixed at the old input size (a dense layer after a flatten) do not fit the new one: say so,
        rather than run a model whose parameters no longer match its shapes."""
        from cnncomp.ops import get_op

        at = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items())
        for node in self.nodes:
            present = self.node_params(node.name)
            specs = get_op(node.op).params(node.attrs, [self.node(i).type for i in node.inputs])
            for key, value in present.items():
                if key in specs and value.shape != specs[key].shape:
                    expected = "x".join(map(str, specs[key].shape))
                    raise ShapeError(f"{node.describe()}: at input {at} its {key} would be {expected}, but the "
                                     f"model's is {'x'.join(map(str, value.shape))}; it takes only the input size "
                                     "it was built for (a dense layer after a flatten fixes it, unless the model "
                                     "is compiled fully convolutional)")

    def with_batch(self, batch: int) -> Graph:
        return self.with_input_shapes({n.name: (batch, *n.shape[1:]) for n in self.inputs})

    # ----- checking ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check the invariants passes rely on; raise GraphError naming the first broken one."""
        from cnncomp.ops import get_op

        self._order = None  # checked from the edges themselves
        if not nx.is_directed_acyclic_graph(self._dag):
            cycle = " -> ".join(u for u, _ in nx.find_cycle(self._dag))
            raise GraphError(f"graph {self.name!r} has a cycle: {cycle}")
        for node in self.nodes:
            expected: dict[str, list[int]] = {}
            for position, operand in enumerate(node.inputs):
                if operand not in self._dag:
                    raise GraphError(f"{node.describe()}: operand {operand!r} is not a value of the graph")
                expected.setdefault(operand, []).append(position)
            actual = {u: list(d["positions"]) for u, _, d in self._dag.in_edges(node.name, data=True)}
            if actual != expected:
                raise GraphError(f"{node.describe()}: edges {actual} disagree with operands {expected}")
            operand_types = [self.node(i).type for i in node.inputs]
            _, inferred = get_op(node.op).check(node.name, node.attrs, operand_types, strict=self.strict)
            if inferred != node.type:
                raise GraphError(f"{node.describe()}: recorded type {node.type} but operands give {inferred}")
            specs = get_op(node.op).params(node.attrs, operand_types)
            for key, spec in specs.items():
                value = self.params.get(f"{node.name}.{key}")
                if value is None:
                    raise GraphError(f"{node.describe()}: parameter {key!r} is missing")
                if value.shape != spec.shape:
                    raise GraphError(f"{node.describe()}: parameter {key!r} has shape {value.shape}, "
                                     f"expected {spec.shape}")
        if not self._outputs:
            raise GraphError(f"graph {self.name!r} has no outputs")

    # ----- serialization (JSON and .npz; never pickle) ------------------------------------------------------
    def to_json(self) -> str:
        nodes = [
            {
                "name": n.name,
                "op": n.op,
                "inputs": list(n.inputs),
                "attrs": {k: _attr_to_json(v) for k, v in n.attrs.items()},
                "shape": list(n.type.shape),
                "dtype": n.type.dtype,
                **({"meta": {k: _attr_to_json(v) for k, v in n.meta.items()}} if n.meta else {}),
            }
            for n in self.nodes
        ]
        return json.dumps(
            {"format": JSON_FORMAT_VERSION, "name": self.name, "strict": self.strict, "nodes": nodes,
             "outputs": self._outputs, **({"meta": self.meta} if self.meta else {})},
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, params: Mapping[str, np.ndarray] | None = None) -> Graph:
        """Rebuild a graph from `to_json` output; every node is re-checked by its op."""
        try:
            data = json.loads(text)
            version = data["format"]
            if version > JSON_FORMAT_VERSION:
                raise GraphError(f"graph JSON format {version} is newer than this cnncomp reads "
                                 f"({JSON_FORMAT_VERSION}); upgrade cnncomp")
            graph = cls(data["name"], bool(data.get("strict", False)))
            for item in data["nodes"]:
                node = graph.add_node(item["name"], item["op"], item["inputs"], item["attrs"], meta=item.get("meta"))
                recorded = TensorType(tuple(item["shape"]), item["dtype"])
                if node.type != recorded:
                    raise GraphError(f"{node.describe()}: recorded type {recorded} but operands give {node.type}")
            graph.set_outputs(data["outputs"])
            graph.meta = dict(data.get("meta", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise GraphError(f"malformed graph JSON: {exc.__class__.__name__}: {exc}") from None
        if params is not None:
            graph.load_params(params)
        return graph

    def save_params(self, path: str | Path | io.IOBase) -> None:
        np.savez(path, **self.params)

    def load_params(self, source: str | Path | Mapping[str, np.ndarray]) -> None:
        """Load parameters from an `.npz` file (pickles refused) or a mapping; names and shapes are checked."""
        if isinstance(source, Mapping):
            self._set_params(dict(source))
            return
        arrays = _read_weights(source)
        try:
            self._set_params(arrays)
        except GraphError as exc:
            raise GraphError(f"{source}: {exc}") from None

    def _set_params(self, arrays: dict[str, np.ndarray]) -> None:
        by_node: dict[str, dict[str, np.ndarray]] = {}
        for key, value in arrays.items():
            node_name, _, local = key.rpartition(".")
            if node_name not in self._dag:
                raise GraphError(f"weights name {key!r}, but graph {self.name!r} has no node {node_name!r}")
            by_node.setdefault(node_name, {})[local] = value
        for node_name, node_params in by_node.items():
            self.set_node_params(node_name, node_params)


def _read_weights(source: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a weights `.npz`, or one line saying the file is not one (an image, a `.npy`, a pickle)."""
    not_weights = f"{source}: not an .npz of weights (arrays keyed node.param, as np.savez writes them)"
    try:
        archive = np.load(source, allow_pickle=False)
    except FileNotFoundError:
        raise ModelLoadError(f"{source}: no such weights file") from None
    except OSError as exc:
        raise ModelLoadError(f"{source}: cannot read weights: {exc.strerror or exc}") from None
    except (ValueError, EOFError):  # numpy's "pickled data" for anything that is not an array format
        raise ModelLoadError(not_weights) from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ModelLoadError(f"{not_weights}; this is a single array (.npy)")
    try:
        with archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:  # an array of pickled objects
        raise ModelLoadError(f"{source}: cannot read weights: {exc}") from None
    except Exception as exc:  # zipfile's and zlib's errors on a damaged archive
        raise ModelLoadError(f"{source}: damaged weights archive ({type(exc).__name__})") from None
