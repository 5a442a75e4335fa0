"""Graph -> `.cnn` text that `frontends.dsl` reads back into the same graph: the same nodes, names, operands (in
order), attributes and outputs. Parameter values are not text: save them beside it (`graph.save_params`) and load
them into the graph read back (`graph.load_params`), or draw them again from a seed as the fuzzer does.

    text = write(graph, comments=["what this graph reproduces"])
    again = build_from_source(text, batch=graph.inputs[0].shape[0])

Every node becomes one statement, `name = op(operands, attributes) as name`, in the graph's order; an output is
`output name = op(...)`; an input `input name: CxHxW` (the batch size is not in the text: build with the
graph's, `build_from_source(text, batch=...)`, since a constant's shape holds it). Attributes are written where
they differ from the language's default. The graph's name and its node names must be identifiers (letters, digits
and '_': block scopes are not written), and the outputs must come in the order their nodes are made (the order
the language gives them).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

from cnncomp.errors import GraphError
from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from frontends.dsl.ops import SIGNATURES, OpSignature, Parameter

IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
KEYWORDS = {"model", "input", "output", "block", "sequence", "return", "assert", "if", "elif", "else", "for", "in",
            "as", "and", "or", "not", "true", "false"}


def _signature_for(op: str) -> OpSignature:
    """The first language op that makes `op` (conv for conv2d, batch_norm for batch_norm, ...)."""
    return next(signature for signature in SIGNATURES.values() if signature.op == op)


def literal(value: Any, compact: bool = False) -> str:
    """A value as the language writes it: true/false, ints, floats that read back exactly, quoted strings, lists;
    with `compact`, a pair or four sides that are all equal as one int."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise GraphError(f"cannot write the number {value} in a model description")
        return repr(value)
    if isinstance(value, str):
        if '"' in value or "\n" in value:
            raise GraphError(f"cannot write the string {value!r} in a model description")
        return f'"{value}"'
    if isinstance(value, (tuple, list)):
        if compact and value and len(set(value)) == 1 and len(value) in (2, 4) and isinstance(value[0], int):
            return literal(value[0])
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise GraphError(f"cannot write the value {value!r} in a model description")


def _normalized_default(op: str, parameter: Parameter, attrs: dict[str, Any]) -> Any:
    """What the node's attribute would be had the argument been left out (the language's default, normalized and
    finalized by the op, so a pool's stride default compares as its kernel)."""
    if parameter.required:
        return object()  # never equal: a required argument is always written
    probe = {key: value for key, value in attrs.items() if key != parameter.name}
    if parameter.default is not None:
        probe[parameter.name] = parameter.default
    opdef = get_op(op)
    normalized = {key: opdef.attrs[key].normalize(value) for key, value in probe.items() if key in opdef.attrs}
    for key, spec in opdef.attrs.items():
        normalized.setdefault(key, spec.default)
    try:
        return opdef.finalize(normalized)[parameter.name]
    except Exception:  # the default is not valid with these attributes: write the value
        return object()


def _call(graph: Graph, node: Node) -> str:
    signature = _signature_for(node.op)
    operands = list(node.inputs)
    arguments: list[str] = []
    for number, parameter in enumerate(signature.parameters):
        if parameter.kind == "tensors":
            arguments += operands
            operands = []
        elif parameter.kind == "tensor":
            flag = node.attrs.get(parameter.name) if parameter.name in node.attrs else True
            if not flag:
                continue
            value = operands.pop(0)
            arguments.append(value if number == 0 or signature.on_builder else f"{parameter.name}={value}")
        elif parameter.kind == "attr":
            value = node.attrs[parameter.name]
            if value is None or value == _normalized_default(node.op, parameter, dict(node.attrs)):
                continue
            compact = parameter.attr is not None and parameter.attr.kind in ("pair", "pads")
            arguments.append(f"{parameter.name}={literal(value, compact)}")
    if operands:
        raise GraphError(f"{node.describe()}: cannot write operands {operands} in a model description")
    return f"{signature.name}({', '.join(arguments)})"


def _check_name(name: str, what: str) -> None:
    if not IDENTIFIER.fullmatch(name) or name in KEYWORDS or name in SIGNATURES:
        raise GraphError(f"cannot write {what} {name!r} in a model description: a name is letters, digits and '_', "
                         "not a keyword or an op")


def write(graph: Graph, comments: Iterable[str] = ()) -> str:
    """The model description of `graph` (see the module docstring); `comments` go first, one `# ` line each."""
    graph.validate()
    _check_name(graph.name, "the model name")
    position = {node.name: index for index, node in enumerate(graph.nodes)}
    if graph.outputs != sorted(graph.outputs, key=position.__getitem__):
        raise GraphError(f"graph {graph.name!r}: outputs {graph.outputs} must come in the order their nodes are "
                         "made to be written as a model description")
    lines = [f"# {line}".rstrip() for comment in comments for line in comment.splitlines()]
    lines.append(f"model {graph.name}")
    outputs = set(graph.outputs)
    for node in graph.nodes:
        _check_name(node.name, "the node name")
        if node.op == "input":
            if node.type.dtype != "float32":
                raise GraphError(f"{node.describe()}: only float32 inputs can be written")
            lines.append(f"input {node.name}: {'x'.join(str(d) for d in node.shape[1:])}")
            if node.name in outputs:
                lines.append(f"output {node.name} = {node.name}")
            continue
        if node.name in outputs:
            lines.append(f"output {node.name} = {_call(graph, node)}")
        else:
            lines.append(f"{node.name} = {_call(graph, node)} as {node.name}")
    return "\n".join(lines) + "\n"
