"""Per-layer summary of a graph: output shapes, parameters, MACs and receptive fields, with totals."""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any

from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op


def node_macs(graph: Graph, node: Node) -> int:
    """The node's multiply-accumulates, as the op registry counts them: weighted layers only, so a fused node
    counts its conv (or dense) and nothing for the bias, batch norm, residual add or activation it absorbed."""
    return get_op(node.op).macs(node.attrs, [graph.node(i).type for i in node.inputs], node.type)


def receptive_fields(graph: Graph) -> dict[str, tuple[int, int]]:
    """Receptive field (height, width) of every node on the graph's inputs: how many input pixels along each
    axis one output value depends on. Per axis, r_out = r_in + (F_eff - 1) * j_in and j_out = j_in * S, where j
    is the distance in input pixels between neighbouring values (Fractions, so upsampling stays exact)."""
    state: dict[str, tuple[tuple[Fraction, Fraction], tuple[Fraction, Fraction]]] = {}
    one = (Fraction(1), Fraction(1))
    for node in graph.nodes:
        opdef = get_op(node.op)
        operands = [name for i, name in enumerate(node.inputs) if i not in opdef.shape_only_operands]
        if operands:
            rf = tuple(max(state[o][0][axis] for o in operands) for axis in range(2))
            # The output's grid is that of the operands of its own size: a broadcast operand (SE's 1x1 gate) adds
            # what it saw to the field, but its spacing is not the output's.
            full = [o for o in operands if graph.node(o).type.shape[2:] == node.type.shape[2:]] or operands
            jump = tuple(max(state[o][1][axis] for o in full) for axis in range(2))
        else:
            rf, jump = one, one
        windows = opdef.window(node.attrs, [graph.node(i).type for i in node.inputs])
        if windows is not None:
            rf = tuple(r + (w.kernel - 1) * j for r, w, j in zip(rf, windows, jump, strict=True))
            jump = tuple(j * w.stride for w, j in zip(windows, jump, strict=True))
        state[node.name] = (rf, jump)
    return {name: (math.ceil(rf[0]), math.ceil(rf[1])) for name, (rf, _) in state.items()}


def summarize(graph: Graph) -> dict[str, Any]:
    """The summary as plain data (what `cnncomp summary --json` prints). `params` counts learnable parameters
    (batch-norm running statistics are listed apart as `buffers`), as PyTorch counts them."""
    fields = receptive_fields(graph)
    layers = []
    total_params = total_buffers = total_macs = 0
    for node in graph.nodes:
        if node.op == "input":
            continue
        opdef = get_op(node.op)
        operand_types = [graph.node(i).type for i in node.inputs]
        specs = opdef.params(node.attrs, operand_types)
        params = sum(math.prod(s.shape) for s in specs.values() if s.learnable)
        buffers = sum(math.prod(s.shape) for s in specs.values() if not s.learnable)
        macs = node_macs(graph, node)
        total_params += params
        total_buffers += buffers
        total_macs += macs
        layers.append({
            "name": node.name,
            "op": node.op,
            "output_shape": list(node.shape),
            "params": params,
            "macs": macs,
            "receptive_field": list(fields[node.name]),
        })
    return {
        "model": graph.name,
        "inputs": [{"name": n.name, "shape": list(n.shape)} for n in graph.inputs],
        "outputs": [{"name": name, "shape": list(graph.node(name).shape)} for name in graph.outputs],
        "params": total_params,
        "buffers": total_buffers,
        "macs": total_macs,
        "layers": layers,
    }


def format_table(summary: dict[str, Any]) -> str:
    """The summary as a text table, like torchinfo's or Keras' `summary()`."""
    header = ("Layer", "Op", "Output shape", "Params", "MACs", "RF")
    rows = [
        (layer["name"], layer["op"], "x".join(map(str, layer["output_shape"])), f"{layer['params']:,}",
         f"{layer['macs']:,}", "x".join(map(str, layer["receptive_field"])))
        for layer in summary["layers"]
    ]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "-" * len(line(header))
    inputs = ", ".join(f"{i['name']}: {'x'.join(map(str, i['shape']))}" for i in summary["inputs"])
    out = [f"Model: {summary['model']}   inputs: {inputs}", rule, line(header), rule]
    out += [line(row) for row in rows]
    out += [
        rule,
        f"Total params: {summary['params']:,}" + (
            f"   (plus {summary['buffers']:,} non-learned batch-norm statistics)" if summary["buffers"] else ""),
        f"Total MACs:   {summary['macs']:,}",
    ]
    return "\n".join(out)
