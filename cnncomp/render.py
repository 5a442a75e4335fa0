"""Pictures and text listings of graphs: what the passes did, for people.

`to_dot` draws a graph with graphviz: each node shows its op, key attributes and output shape (and what a fusion
absorbed); edges show the tensor shapes they carry (skip connections and fused residuals dashed, fused SE gates
dotted); the blocks of the model description (`node.meta["block"]`, nested with dots) become nested clusters; a chain
taller than a screen is folded into columns, and an encoder-decoder is drawn as a U (`plan_layout`); `cost=True`
shades nodes by MACs and adds a legend of the scale. `compare` puts two graphs side by side, `write` saves any of
them as svg, png, pdf or dot, atomically. `graph_text` is the one-line-per-node listing of `--dump-after`.
"""

from __future__ import annotations

import bisect
import math
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph, Node
from cnncomp.ops import get_op
from cnncomp.summary import node_macs

FORMATS = ("svg", "png", "pdf", "dot")
FONT = "Helvetica"


class RenderError(CnnCompError):
    """A picture that cannot be made or written: unknown format, graphviz missing, unwritable path."""


# ----- what a node says about itself ----------------------------------------------------------------------------
def _size(value: tuple[int, ...]) -> str:
    return "x".join(map(str, value))


def _pads(pads: Any) -> str:
    top, bottom, left, right = pads
    if top == bottom == left == right:
        return f"pad {top}"
    return f"pad {top},{bottom},{left},{right}"


def key_attributes(node: Node) -> str:
    """The attributes that say what a node computes, compactly: "3x3 /2 pad 1 g32 -> 256 +residual relu"."""
    attrs = node.attrs
    defaults = get_op(node.op).attrs
    window: list[str] = []  # how the op reads its input
    middle: list[str] = []  # a separable conv's step between depthwise and pointwise
    output: list[str] = []  # how many channels it makes
    tail: list[str] = []  # the fused epilogue
    for key, value in attrs.items():
        default = defaults[key].default
        if key == "kernel":
            window.insert(0, _size(value))
        elif key == "stride" and value is not None and value != (1, 1):
            window.append("/" + (str(value[0]) if value[0] == value[1] else _size(value)))
        elif key in ("padding", "pads") and isinstance(value, tuple) and any(value):
            window.append(_pads(value))
        elif key == "dilation" and value != (1, 1):
            window.append("d" + (str(value[0]) if value[0] == value[1] else _size(value)))
        elif key == "groups" and value != 1:
            window.append(f"g{value}")
        elif key == "multiplier" and value != 1:
            window.append(f"x{value}")
        elif key == "mid_bias" and value:
            middle.append("+mid bias")
        elif key == "mid_act" and value is not None:
            middle.append(f"mid {_activation(value, attrs['mid_alpha'])}")
        elif key in ("out_channels", "out_features"):
            output.append(f"-> {value}")
        elif key in ("affine", "residual", "gate") and value:
            tail.append(f"+{key}")
        elif key == "act" and value is not None:
            tail.append(_activation(value, attrs["alpha"]))
        elif key in ("bias", "alpha", "mid_alpha", "shape", "dtype") or value == default:
            continue
        else:
            window.append(f"{key}={_size(value) if isinstance(value, tuple) else value}")
    if node.op == "leaky_relu":
        window.append(f"alpha {attrs['alpha']:g}")
    return " ".join(window + middle + output + tail)


def _activation(name: str, alpha: float) -> str:
    return f"leaky_relu({alpha:g})" if name == "leaky_relu" else name


def _macs_text(macs: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if macs >= scale:
            return f"{macs / scale:.1f}{unit} MACs"
    return f"{macs} MACs"


def node_label(graph: Graph, node: Node, cost: bool = False) -> str:
    lines = [_short(node.name, node), f"{node.op} {key_attributes(node)}".strip(), str(node.type)]
    fused = node.meta.get("fused")
    if fused:
        lines.append("fused: " + ", ".join(_short(name, node) for name in fused))
    macs = node_macs(graph, node) if cost else 0
    if macs:
        lines.append(_macs_text(macs))
    return "\n".join(lines)


def _short(name: str, node: Node) -> str:
    """A name without the prefix of `node`'s block, which its cluster already shows."""
    block = node.meta.get("block")
    return name[len(block) + 1:] if block and name.startswith(block + ".") else name


def node_depths(graph: Graph) -> dict[str, int]:
    """Each node's number of steps on the longest path from an input (inputs are 0)."""
    depth: dict[str, int] = {}
    for node in graph.nodes:
        depth[node.name] = 1 + max((depth[name] for name in node.inputs), default=-1)
    return depth


SKIP_JOINS = ("add", "concat", "crop")  # the ops where a skip connection rejoins the main path
SKIP_STEPS = 3  # an operand this many steps shallower than the join's deepest operand came by a skip connection


def operand_role(node: Node, position: int, depth: dict[str, int]) -> str:
    """What an operand is to its reader: "data", "residual" (fused), "skip" (a join's operand from far back),
    "gate" or "shape" (read for its shape only)."""
    if position in get_op(node.op).shape_only_operands:
        return "shape"
    if node.attrs.get("gate") and position == 1:
        return "gate"
    if node.attrs.get("residual") and position == len(node.inputs) - 1:
        return "residual"
    deepest = max(depth[name] for name in node.inputs)
    if node.op in SKIP_JOINS and deepest - depth[node.inputs[position]] >= SKIP_STEPS:
        return "skip"
    return "data"


SKIP_STYLE = {"style": "dashed", "color": "#1f77b4"}
EDGE_STYLES = {
    "data": {},
    "residual": SKIP_STYLE,
    "skip": SKIP_STYLE,
    "gate": {"style": "dotted", "color": "#9467bd"},
    "shape": {"style": "dotted", "color": "gray50"},
}


# ----- choosing what to draw --------------------------------------------------------------------------------
def in_block(node: Node, block: str) -> bool:
    name = node.meta.get("block", "")
    return name == block or name.startswith(block + ".")


def select_block(graph: Graph, block: str) -> list[Node]:
    """The nodes of one block of the model description (and the blocks inside it)."""
    nodes = [node for node in graph.nodes if in_block(node, block)]
    if not nodes:
        blocks = sorted({prefix for node in graph.nodes if "block" in node.meta
                         for prefix in _block_prefixes(node.meta["block"])})
        shown = ", ".join(blocks[:12]) + (", ..." if len(blocks) > 12 else "")
        raise RenderError(f"graph {graph.name!r} has no block {block!r}; blocks: {shown or 'none'}")
    return nodes


# ----- layout: an encoder-decoder as a U, a long chain folded into columns ---------------------------------------
SCREEN_HEIGHT = 1500  # points; a taller picture is folded into columns ...
SCREEN_ASPECT = 1.0  # ... as many as bring its height / width nearest this


@dataclass
class Layout:
    """Where the drawn nodes go. `side_by_side`: an encoder-decoder's levels, each drawn at one height, left to
    right: the skip's tail, the encoder's next node, the decoder's node before the join, the join; `rising`: the
    decoder, drawn bottom-up so that it climbs beside the encoder; `column`: each node's column when a long chain is
    folded to fit a screen (0 when it is not), `column_heads` the first node of each."""

    side_by_side: list[tuple[str, ...]]
    rising: set[str]
    column: dict[str, int]
    column_heads: list[str]

    def rows(self) -> list[list[str]]:
        """Groups of nodes drawn at one height, left to right."""
        folded = [self.column_heads] if len(self.column_heads) > 1 else []
        return [list(level) for level in self.side_by_side] + folded

    def upwards(self, tail: str, head: str) -> bool:
        """Whether the edge climbs: into the decoder, from a node not beside its head."""
        return head in self.rising and not any(tail in level and head in level for level in self.side_by_side)


def plan_layout(graph: Graph, nodes: list[Node], depth: dict[str, int], cost: bool) -> Layout:
    """A U when the drawn nodes are an encoder-decoder (skips that rejoin after an upsampling), else the chain
    folded into as many columns as bring the picture near a screen's shape."""
    chain = _encoder_decoder_skips(graph, nodes, depth)
    if chain:
        drawn = {node.name for node in nodes}
        levels = [tuple(name for name in (tail, *_onwards(graph, tail, join),
                                          max(graph.node(join).inputs, key=depth.__getitem__), join) if name in drawn)
                  for tail, join in chain]
        bottom = depth[levels[-1][-2]]  # the innermost level's upsampling: from here on the decoder climbs
        return Layout(levels, {node.name for node in nodes if depth[node.name] >= bottom},
                      {node.name: 0 for node in nodes}, [])
    breaks = _column_breaks(nodes, depth, _columns_wanted(graph, nodes, depth, cost))
    column = {node.name: bisect.bisect_left(breaks, i) for i, node in enumerate(nodes)}
    return Layout([], set(), column, [nodes[0].name] + [nodes[i + 1].name for i in breaks])


def _onwards(graph: Graph, tail: str, join: str) -> list[str]:
    """The encoder's next node after a skip's tail (none if the tail is a side branch)."""
    return [reader.name for reader in graph.consumers(tail) if reader.name != join][:1]


def _spatial(node: Node) -> int:
    return math.prod(node.type.shape[2:])


def _encoder_decoder_skips(graph: Graph, nodes: list[Node], depth: dict[str, int]) -> list[tuple[str, str]]:
    """The skip connections of an encoder-decoder, outermost first: the longest skip over an upsampling (what
    makes a decoder; a residual block never upsamples), then the longest one inside it, and so on."""
    drawn = {node.name for node in nodes}
    upsampling = [depth[node.name] for node in nodes
                  if node.inputs and _spatial(node) > max(_spatial(graph.node(name)) for name in node.inputs)]
    skips = [(operand, node.name) for node in nodes for position, operand in enumerate(node.inputs)
             if operand in drawn and operand_role(node, position, depth) in ("skip", "residual")
             and any(depth[operand] < level < depth[node.name] for level in upsampling)]
    chain: list[tuple[str, str]] = []
    for tail, head in sorted(skips, key=lambda skip: depth[skip[1]] - depth[skip[0]], reverse=True):
        if not chain or depth[chain[-1][0]] < depth[tail] and depth[head] < depth[chain[-1][1]]:
            chain.append((tail, head))
    return chain


def _column_breaks(nodes: list[Node], depth: dict[str, int], columns: int) -> list[int]:
    """Where to fold a chain into `columns` columns of about equal depth: positions in `nodes` after which a column
    ends, each where one value alone is live (between two ResNet blocks, never across a residual)."""
    last_read = {node.name: i for i, node in enumerate(nodes)}
    for i, node in enumerate(nodes):
        for name in node.inputs:
            last_read[name] = i
    cuts, reach = [], 0
    for i, node in enumerate(nodes[:-1]):
        if reach <= i:  # nothing before node i is read after it
            cuts.append(i)
        reach = max(reach, last_read[node.name])
    between_blocks = [i for i in cuts if nodes[i].meta.get("block") != nodes[i + 1].meta.get("block")]
    cuts = between_blocks or cuts
    top, bottom = depth[nodes[0].name], max(depth[node.name] for node in nodes)
    breaks: list[int] = []
    for column in range(1, columns):
        target = top + (bottom - top) * column / columns
        later = [i for i in cuts if not breaks or i > breaks[-1]]
        if later:
            breaks.append(min(later, key=lambda i: abs(depth[nodes[i].name] - target)))
    return breaks


def _columns_wanted(graph: Graph, nodes: list[Node], depth: dict[str, int], cost: bool) -> int:
    """How many columns bring a picture taller than a screen nearest a screen's shape, from its labels' sizes
    (Helvetica 10pt: about 6pt a character, 12pt a line; about 50pt between ranks for the gap and an edge label)."""
    heights: dict[int, float] = {}
    widths: dict[int, float] = {}
    for node in nodes:
        lines = node_label(graph, node, cost).split("\n")
        level = depth[node.name]
        heights[level] = max(heights.get(level, 0), 12 * len(lines) + 60)
        widths[level] = widths.get(level, 0) + 6 * max(map(len, lines)) + 40
    height, width = sum(heights.values()), max(widths.values()) + 60  # the edges' labels beside the nodes
    if height <= SCREEN_HEIGHT:
        return 1
    return max(1, round(math.sqrt(height / (width * SCREEN_ASPECT))))


# ----- drawing ------------------------------------------------------------------------------------------------
def _graphviz() -> Any:
    try:
        import graphviz
    except ImportError:
        raise RenderError("the graphviz Python package is not installed (pip install graphviz)") from None
    return graphviz


def _fill(macs: int, most: int) -> str:
    """White for no MACs to saturated red for the most expensive node (HSV, so graphviz blends it)."""
    share = macs / most if most else 0.0
    return f"0.0 {0.08 + 0.82 * share:.3f} 1.0" if macs else "white"


def _legend(most: int) -> str:
    """What --cost's fill means: the colour at a few MAC counts, up to the most expensive node's (an HTML label)."""
    cells = "".join(f'<td bgcolor="{_fill(macs, most)}">{_macs_text(macs)}</td>'
                    for macs in (0, *(most * quarter // 4 for quarter in range(1, 5))))
    return (f'<<table border="0" cellborder="1" cellspacing="0" cellpadding="4"><tr><td colspan="5">fill: the '
            f'node\'s MACs, linear up to the most in this graph</td></tr><tr>{cells}</tr></table>>')


def _draw(dot: Any, graph: Graph, prefix: str, cost: bool, block: str | None) -> None:
    """Add the nodes, clusters and edges of `graph` to `dot`, node ids prefixed (two graphs can share a picture)."""
    nodes = select_block(graph, block) if block else graph.nodes
    shown = {node.name for node in nodes}
    outputs = set(graph.outputs)
    most = max((node_macs(graph, node) for node in nodes), default=0) if cost else 0
    depth = node_depths(graph)
    layout = plan_layout(graph, nodes, depth, cost)

    # Block tree: "layer1.0" sits inside "layer1"; a block that a fold splits has one cluster per column.
    clusters: dict[tuple[str, int], Any] = {}
    members: dict[tuple[str, int], list[Node]] = {}
    for node in nodes:
        members.setdefault((node.meta.get("block", ""), layout.column[node.name]), []).append(node)
    keys = sorted({(prefix_block, column) for block_name, column in members if block_name
                   for prefix_block in _block_prefixes(block_name)}, key=lambda k: (k[1], k[0].count("."), k[0]))

    def node_attrs(node: Node) -> dict[str, str]:
        attrs = {"label": node_label(graph, node, cost)}
        if node.op == "input":
            attrs.update(shape="ellipse", fillcolor="#e8f0fe")
        elif cost:
            attrs["fillcolor"] = _fill(node_macs(graph, node), most)
        elif node.meta.get("fused"):
            attrs["fillcolor"] = "#fff4d6"
        if node.name in outputs:
            attrs["peripheries"] = "2"
        return attrs

    first_columns: dict[str, int] = {}
    for name, column in keys:
        first_columns.setdefault(name, column)
        continued = column != first_columns[name]
        cluster_id = f"cluster_{prefix}{name}" + (f"~{column}" if continued else "")
        clusters[name, column] = _graphviz().Digraph(name=cluster_id)
        label = name.rpartition(".")[2] if "." in name else name
        clusters[name, column].attr(label=label + (" (continued)" if continued else ""), style="rounded",
                                    color="gray60", fontname=FONT, fontsize="11", labeljust="l")
    for (block_name, column), block_nodes in members.items():
        target = clusters[block_name, column] if block_name else dot
        for node in block_nodes:
            target.node(prefix + node.name, **node_attrs(node))
    for name, column in sorted(keys, key=lambda k: -k[0].count(".")):  # innermost first, then into their parents
        parent = name.rpartition(".")[0]
        clusters.get((parent, column), dot).subgraph(clusters[name, column])

    drawn = {node.name for node in nodes}

    def stand_in(name: str) -> None:
        """A value outside the block drawn, as a small plain node."""
        if name not in shown:
            dot.node(prefix + name, label=f"{name}\n{graph.node(name).type}", shape="plaintext", fontcolor="gray40")
            shown.add(name)

    def edge(tail: str, head: str, **attrs: str) -> None:
        if layout.column.get(tail, 0) != layout.column.get(head, 0):
            attrs["constraint"] = "false"  # to the top of the next column: not a step down
        if layout.upwards(tail, head):
            dot.edge(prefix + head, prefix + tail, dir="back", **attrs)  # drawn upwards: the decoder climbs
        else:
            dot.edge(prefix + tail, prefix + head, **attrs)

    for node in nodes:
        for position, operand in enumerate(node.inputs):
            stand_in(operand)
            role = operand_role(node, position, depth)
            label = str(graph.node(operand).type) + ("" if role == "data" else f" ({role})")
            edge(operand, node.name, label=label, **EDGE_STYLES[role])
        for reader in graph.consumers(node.name):
            if reader.name not in drawn:  # where the block's values go
                stand_in(reader.name)
                edge(node.name, reader.name, label=str(node.type), style="dotted")

    if cost:
        dot.node(prefix + "legend: MACs", label=_legend(most), shape="plaintext")
    for group in layout.rows():
        with dot.subgraph() as row:
            row.attr(rank="same")
            for left, right in zip(group, group[1:], strict=False):
                row.edge(prefix + left, prefix + right, style="invis")  # in this order, left to right


def _block_prefixes(block: str) -> Iterable[str]:
    parts = block.split(".")
    return (".".join(parts[:i]) for i in range(1, len(parts) + 1))


def _new_digraph(name: str, title: str | None) -> Any:
    dot = _graphviz().Digraph(name=name)
    dot.attr(rankdir="TB", newrank="true", fontname=FONT, labelloc="t", **({"label": title} if title else {}))
    dot.attr("node", shape="box", style="rounded,filled", fillcolor="white", fontname=FONT, fontsize="10")
    dot.attr("edge", fontname=FONT, fontsize="8", color="gray30", fontcolor="gray30")
    return dot


def graph_title(graph: Graph, caption: str | None = None, block: str | None = None) -> str:
    """"resnet50 -O3: 60 ops, 4.1G MACs" (of the whole graph), and the block drawn if only one is."""
    total = sum(node_macs(graph, node) for node in graph.nodes)
    ops = len([node for node in graph.nodes if node.op != "input"])
    shown = f"; block {block}" if block else ""
    return f"{graph.name}{f' {caption}' if caption else ''}: {ops} ops, {_macs_text(total)}{shown}"


def to_dot(graph: Graph, cost: bool = False, block: str | None = None, caption: str | None = None) -> Any:
    """A graphviz Digraph of `graph` (only the nodes of `block`, if given)."""
    dot = _new_digraph(graph.name, graph_title(graph, caption, block))
    _draw(dot, graph, "", cost, block)
    return dot


def compare(before: Graph, after: Graph, captions: tuple[str, str] = ("before", "after"), cost: bool = False,
            block: str | None = None) -> Any:
    """Two graphs side by side, each in its own frame titled with its op count and MACs."""
    dot = _new_digraph(f"{before.name}_compare", None)
    for graph, caption, side in ((before, captions[0], "before"), (after, captions[1], "after")):
        frame = _graphviz().Digraph(name=f"cluster_{side}")
        frame.attr(label=graph_title(graph, caption, block), fontname=FONT, fontsize="14", style="solid",
                   color="gray80")
        _draw(frame, graph, f"{side}/", cost, block)
        dot.subgraph(frame)
    return dot


def write(dot: Any, path: str | Path) -> Path:
    """Write the picture in the format its suffix names (svg, png, pdf, or dot source). The file appears whole
    or not at all: it is written beside the target and renamed over it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise RenderError(f"{path}: unknown picture format {path.suffix or '(no suffix)'!r}; "
                          f"expected one of {', '.join('.' + f for f in FORMATS)}")
    if not path.parent.is_dir():
        raise RenderError(f"{path}: directory {path.parent} does not exist")
    graphviz = _graphviz()
    if fmt == "dot":
        data = dot.source.encode()
    else:
        try:
            data = dot.pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            raise RenderError("graphviz's `dot` program was not found; install graphviz (apt-get install "
                              "graphviz) or write .dot") from None
        except graphviz.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise RenderError(f"dot failed to render {path.name}: {detail[0] if detail else exc}") from None
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.chmod(temporary, _new_file_mode())  # mkstemp's 0600 would hide the picture from others
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise
    except OSError as exc:
        raise RenderError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


def _new_file_mode() -> int:
    """The mode `open()` gives a new file: 0666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def graph_text(graph: Graph) -> str:
    """One line per node: `name = op(operands) key attributes : shape  [fused: ...]`."""
    lines = [f"graph {graph.name}: {len(graph)} nodes, outputs {', '.join(graph.outputs)}"]
    for node in graph.nodes:
        call = f"{node.op}({', '.join(node.inputs)})"
        attributes = key_attributes(node)
        line = f"  {node.name} = {call}{' ' + attributes if attributes else ''} : {node.type}"
        if node.meta.get("fused"):
            line += f"  [fused: {', '.join(node.meta['fused'])}]"
        lines.append(line)
    return "\n".join(lines)
