"""Random valid CNN graphs for differential fuzzing, drawn from the op registry.

A graph starts from one or two inputs (batch 1 to 3, small and odd sizes, 1-pixel maps included) and grows by
steps. A step is either one node of any registry op, drawn generically from the registry (`op_names()`, each op's
arity and attribute schema), or a motif of the networks the lecture builds: a residual block, inception-like
branches joined by a concat, a depthwise-separable pair, a squeeze-and-excitation gate, a batch norm beside a
conv, a per-channel affine by constants, max-pool indices feeding an unpooling. Every node is added through
`Graph.add_node`, which checks it: an attribute draw the op refuses is drawn again (a few times, then the step is
skipped), so the graphs hold legal attributes only and a new op is fuzzed without touching this file
(`tests/fuzz/test_differential.py::test_the_strategy_makes_every_registry_op` names an op it fails to make).

Attribute values come from a `Profile`: `CI` keeps kernels, strides, paddings, activations and slopes to small
sets, so the Numba kernels the CI job needs (a kernel is specialized on them) stay few and come from the kernel
cache after the first run; `WIDE`, for the long run (`tools/fuzz.py`), draws from wider ranges.

Weights are random (`tests.helpers.randomize`, with `shared_constants`): each parameter drawn from its own stream
(the seed and the parameter's name), so a graph's weights depend only on its structure and the seed; batch norms get
non-trivial statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from cnncomp.errors import GraphError
from cnncomp.ir import Graph, Node, TensorType
from cnncomp.ops import get_op, op_names
from cnncomp.ops.activation import ACTIVATIONS
from cnncomp.ops.base import REQUIRED, Attr, Op
from tests.helpers import randomize

# Attributes whose `True` brings an operand: the residual (the output's shape) and SE's gate (N x C x 1 x 1).
OPERAND_FLAGS = ("gate", "residual")


@dataclass(frozen=True)
class Profile:
    """The value sets the strategy draws from."""

    name: str
    max_steps: int
    batches: tuple[int, ...]
    channels: tuple[int, ...]  # input channels, out_channels, out_features
    sizes: tuple[int, ...]  # input heights and widths, adaptive and upsample output sizes
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # explicit padding values per side
    activations: tuple[str, ...]  # fused activations (act=, mid_act=); standalone activation ops are all drawn
    scales: tuple[float, ...]  # upsample scale factors
    floats: dict[str, tuple[float, ...]] = field(default_factory=dict)  # per attribute name
    max_elements: int = 1 << 14  # per sample: keeps every tensor small


FLOATS_CI = {"alpha": (0.1,), "mid_alpha": (0.1,), "eps": (1e-5, 1e-3), "rate": (0.0, 0.5), "beta": (0.75, 1.0),
             "k": (1.0, 2.0)}
CI = Profile("ci", max_steps=6, batches=(1, 2, 3), channels=(1, 2, 3, 4, 8), sizes=(1, 2, 3, 4, 5, 7, 8),
             kernels=(1, 2, 3), strides=(1, 2), dilations=(1, 2), pads=(0, 1), activations=("relu", "sigmoid"),
             scales=(0.5, 2.0, 1.5), floats=FLOATS_CI)
WIDE = Profile("wide", max_steps=10, batches=(1, 2, 3), channels=(1, 2, 3, 4, 5, 8, 16, 17),
               sizes=(1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13), kernels=(1, 2, 3, 4, 5, 7), strides=(1, 2, 3),
               dilations=(1, 2, 3), pads=(0, 1, 2, 3), activations=tuple(ACTIVATIONS),
               scales=(0.5, 0.75, 1.5, 2.0, 2.5, 3.0),
               floats={"alpha": (0.01, 0.1, 0.3), "mid_alpha": (0.01, 0.2), "eps": (1e-5, 1e-3, 0.1),
                       "rate": (0.0, 0.3, 0.9), "beta": (0.5, 0.75, 1.0), "k": (0.5, 1.0, 2.0)},
               max_elements=1 << 15)
# For the numba-cuda simulator (about 0.5 ms per simulated thread): few steps, tiny maps.
TINY = Profile("tiny", max_steps=3, batches=(1, 2), channels=(1, 2, 3, 4), sizes=(1, 2, 3, 4, 5),
               kernels=(1, 2, 3), strides=(1, 2), dilations=(1, 2), pads=(0, 1), activations=("relu", "sigmoid"),
               scales=(0.5, 2.0), floats=FLOATS_CI, max_elements=256)
PROFILES = {profile.name: profile for profile in (CI, WIDE, TINY)}

ATTEMPTS = 6  # draws of one node's attributes and operands before its step is skipped


@dataclass
class FuzzCase:
    """A generated graph (with its random weights) and the seed of its weights and inputs."""

    graph: Graph
    seed: int

    @property
    def batch(self) -> int:
        return self.graph.inputs[0].shape[0]

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        ops = ", ".join(f"{n.name}={n.op}({', '.join(n.inputs)})" for n in self.graph.nodes if n.op != "input")
        inputs = ", ".join(f"{n.name}: {n.type}" for n in self.graph.inputs)
        return f"FuzzCase(seed={self.seed}, inputs [{inputs}], nodes [{ops}], outputs {self.graph.outputs})"


# ----- the builder state ---------------------------------------------------------------------------------------
class GraphState:
    """The graph being drawn and the values new nodes may read."""

    def __init__(self, profile: Profile, batch: int) -> None:
        self.profile = profile
        self.batch = batch
        self.graph = Graph("fuzz")
        self.count = 0

    def fresh_name(self) -> str:
        self.count += 1
        return f"n{self.count}"

    @property
    def values(self) -> list[Node]:
        return self.graph.nodes

    def float_values(self, rank: int | None = 4) -> list[Node]:
        return [n for n in self.values if n.type.dtype == "float32" and (rank is None or n.type.rank == rank)]

    def fits(self, node: Node) -> bool:
        return node.type.size // max(node.type.batch, 1) <= self.profile.max_elements

    def try_add(self, op: str, inputs: Sequence[str], attrs: dict[str, Any]) -> Node | None:
        """Add the node if the op accepts it and it is small enough; None otherwise."""
        name = self.fresh_name()
        try:
            node = self.graph.make_node(name, op, inputs, attrs)
        except GraphError:
            return None
        if not self.fits(node):
            return None
        return self.graph.add_node(name, op, inputs, attrs)


Draw = Callable[[st.SearchStrategy[Any]], Any]


# ----- attributes, by kind, with hints by attribute name ---------------------------------------------------------
def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def draw_pair(draw: Draw, values: Sequence[int]) -> tuple[int, int]:
    first = draw(st.sampled_from(values))
    return (first, first) if draw(st.booleans()) else (first, draw(st.sampled_from(values)))


def draw_pads(draw: Draw, profile: Profile) -> Any:
    form = draw(st.sampled_from(["int", "same", "valid", "pair", "sides"]))
    if form in ("same", "valid"):
        return form
    values = st.sampled_from(profile.pads)
    if form == "int":
        return draw(values)
    if form == "pair":
        return (draw(values), draw(values))
    return tuple(draw(values) for _ in range(4))


def draw_attr(draw: Draw, key: str, spec: Attr, x: TensorType | None, drawn: dict[str, Any],
              state: GraphState) -> Any:
    """One attribute value: by the attribute's kind, from the profile's sets where its name says what it is."""
    profile = state.profile
    if spec.kind == "bool":
        return draw(st.booleans())
    if spec.kind == "choice":
        choices = list(spec.choices)
        if key in ("act", "mid_act"):
            choices = [c for c in choices if c in profile.activations]
        return draw(st.sampled_from(([None] if spec.default is None else []) + choices))
    if spec.kind == "int":
        if key in ("out_channels", "out_features"):
            return draw(st.sampled_from(profile.channels))
        if key == "groups" and x is not None and x.rank == 4:
            common = math.gcd(x.channels, drawn.get("out_channels", x.channels))
            return draw(st.sampled_from(_divisors(common)))
        if key == "axis" and x is not None:
            return draw(st.integers(1, x.rank - 1))
        if key == "size":
            return draw(st.integers(1, 5))
        if key == "start" and x is not None:  # channel_slice's channels start:stop
            return draw(st.integers(0, x.channels - 1))
        if key == "stop" and x is not None:
            return draw(st.integers(drawn.get("start", 0) + 1, x.channels))
        return draw(st.integers(1, 2))
    if spec.kind == "float":
        return draw(st.sampled_from(profile.floats.get(key, (0.5,))))
    if spec.kind == "pair":
        values = {"kernel": profile.kernels, "stride": profile.strides, "dilation": profile.dilations,
                  "output_padding": (0, 1), "output_size": profile.sizes, "size": profile.sizes}.get(key, (1, 2))
        return draw_pair(draw, values)
    if spec.kind == "float_pair":
        first = draw(st.sampled_from(profile.scales))
        return (first, first) if draw(st.booleans()) else (first, draw(st.sampled_from(profile.scales)))
    if spec.kind == "pads":
        return draw_pads(draw, profile)
    if spec.kind == "shape":
        # A tensor like one of the graph's (a constant added to it), or one value per channel of it.
        like = draw(st.sampled_from(state.float_values(None))).type
        if like.rank == 4 and draw(st.booleans()):
            return (like.batch, like.channels, 1, 1)
        return like.shape
    raise AssertionError(f"the fuzz strategy cannot draw attribute kind {spec.kind!r} ({key}); teach draw_attr")


def draw_attrs(draw: Draw, opdef: Op, x: TensorType | None, state: GraphState) -> dict[str, Any]:
    """Every attribute but the operand flags: its default (left out) or a drawn value."""
    attrs: dict[str, Any] = {}
    for key, spec in opdef.attrs.items():
        if key in OPERAND_FLAGS:
            continue
        if spec.default is not REQUIRED and draw(st.booleans()):
            continue
        attrs[key] = draw_attr(draw, key, spec, x, attrs, state)
    return attrs


# ----- operands ------------------------------------------------------------------------------------------------
# How an extra operand relates to the first: the relation decides which values are candidates.
RELATIONS: dict[str, Callable[[TensorType, TensorType], bool]] = {
    "same type": lambda x, v: v == x,
    "per channel": lambda x, v: x.rank == 4 and v.shape == (x.batch, x.channels, 1, 1),
    "same map": lambda x, v: v.rank == x.rank == 4 and v.dtype == x.dtype and v.shape[0] == x.shape[0]
                              and v.shape[2:] == x.shape[2:],
    "indices": lambda x, v: v.dtype == "int64" and v.shape == x.shape,
    "smaller map": lambda x, v: v.rank == x.rank == 4 and v.shape[2] <= x.shape[2] and v.shape[3] <= x.shape[3],
    "any": lambda x, v: True,
}


def draw_operand(draw: Draw, state: GraphState, x: TensorType, relation: str | None = None) -> Node | None:
    relation = relation or draw(st.sampled_from(list(RELATIONS)))
    candidates = [v for v in state.values if RELATIONS[relation](x, v.type)]
    return draw(st.sampled_from(candidates)) if candidates else None


def draw_op_node(draw: Draw, state: GraphState, op: str) -> Node | None:
    """One node of `op`, drawn from the registry entry alone: operands by arity (extra ones related to the first
    as RELATIONS say, or brought by the residual and gate flags), attributes by their schema."""
    opdef = get_op(op)
    low, high = opdef.arity
    for _ in range(ATTEMPTS):
        operands: list[Node] = []
        x = None
        if low > 0:
            first = draw(st.sampled_from(state.values[::-1]))  # the newest first: chains shrink to short ones
            operands.append(first)
            x = first.type
        attrs = draw_attrs(draw, opdef, x, state)
        flags = [flag for flag in OPERAND_FLAGS if flag in opdef.attrs]
        if flags:
            if "gate" in flags and draw(st.booleans()):
                gate = draw_operand(draw, state, x, "per channel")
                if gate is not None:
                    operands.append(gate)
                    attrs["gate"] = True
        elif low > 0:
            count = draw(st.integers(low, low + 2 if high is None else high))
            for _ in range(count - 1):
                operand = draw_operand(draw, state, x)
                if operand is not None:
                    operands.append(operand)
        if "residual" in flags and draw(st.booleans()):
            try:
                output = state.graph.make_node("probe", op, [o.name for o in operands], attrs).type
            except GraphError:
                continue
            skip = draw_operand(draw, state, output, "same type")
            if skip is not None:
                operands.append(skip)
                attrs["residual"] = True
        node = state.try_add(op, [o.name for o in operands], attrs)
        if node is not None:
            return node
    return None


# ----- motifs: the structures of the lecture's networks ----------------------------------------------------------
def _conv(draw: Draw, state: GraphState, x: Node, out: int, kernel: int | None = None, groups: int = 1,
          stride: int = 1, act: bool = True) -> Node | None:
    kernel = kernel if kernel is not None else draw(st.sampled_from(state.profile.kernels))
    attrs: dict[str, Any] = {"out_channels": out, "kernel": kernel, "stride": stride, "groups": groups,
                             "padding": draw(st.sampled_from(["same", 0])), "bias": draw(st.booleans())}
    node = state.try_add("conv2d", [x.name], attrs)
    if node is not None and act and draw(st.booleans()):
        node = state.try_add(draw(st.sampled_from(state.profile.activations)), [node.name], {}) or node
    return node


def motif_residual(draw: Draw, state: GraphState) -> None:
    """y = act(bn(conv(act(conv(x))))) + x, then maybe an activation: ResNet's basic block."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    y = _conv(draw, state, x, x.type.channels, kernel=draw(st.sampled_from([k for k in state.profile.kernels
                                                                              if k % 2] or [1])))
    if y is None:
        return
    if draw(st.booleans()):
        y = state.try_add("batch_norm", [y.name], {}) or y
    if y.type != x.type:
        return
    operands = [y.name, x.name] if draw(st.booleans()) else [x.name, y.name]
    total = state.try_add("add", operands, {})
    if total is not None and draw(st.booleans()):
        state.try_add("relu", [total.name], {})


def motif_branches(draw: Draw, state: GraphState) -> None:
    """Inception-like: 2 to 4 branches over one input (1x1 conv, KxK conv after a reduction, a pool then a 1x1
    conv), joined along channels."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    branches = []
    for _ in range(draw(st.integers(2, 4))):
        kind = draw(st.sampled_from(["1x1", "reduce", "pool", "identity"]))
        out = draw(st.sampled_from(state.profile.channels))
        if kind == "1x1":
            branch = _conv(draw, state, x, out, kernel=1)
        elif kind == "reduce":
            reduced = _conv(draw, state, x, draw(st.sampled_from(state.profile.channels)), kernel=1)
            branch = reduced and _conv(draw, state, reduced, out, kernel=3)
        elif kind == "pool":
            pooled = state.try_add("max_pool2d", [x.name], {"kernel": 3, "stride": 1, "padding": 1})
            branch = pooled and _conv(draw, state, pooled, out, kernel=1)
        else:
            branch = x
        if branch is not None and branch.type.shape[2:] == x.type.shape[2:]:
            branches.append(branch.name)
    if branches:
        state.try_add("concat", branches, {})


def motif_separable(draw: Draw, state: GraphState) -> None:
    """A depthwise KxK conv (groups = channels, maybe a multiplier), then a 1x1 conv: MobileNet's and Xception's
    pair, with batch norms and activations between them or not."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    channels = x.type.channels
    multiplier = draw(st.sampled_from([1, 2]))
    depthwise = _conv(draw, state, x, channels * multiplier, groups=channels,
                      stride=draw(st.sampled_from(state.profile.strides)))
    if depthwise is None:
        return
    if draw(st.booleans()):
        depthwise = state.try_add("batch_norm", [depthwise.name], {}) or depthwise
    pointwise = _conv(draw, state, depthwise, draw(st.sampled_from(state.profile.channels)), kernel=1)
    if pointwise is not None and draw(st.booleans()):
        state.try_add("batch_norm", [pointwise.name], {})


def motif_squeeze_excite(draw: Draw, state: GraphState) -> None:
    """EfficientNet's SE: g = sigmoid(conv1x1(act(conv1x1(global_avg_pool(x))))); x * g, maybe then a 1x1 conv."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    pooled = state.try_add("global_avg_pool", [x.name], {})
    squeezed = pooled and _conv(draw, state, pooled, draw(st.sampled_from(state.profile.channels)), kernel=1)
    expanded = squeezed and _conv(draw, state, squeezed, x.type.channels, kernel=1, act=False)
    gate = expanded and state.try_add("sigmoid", [expanded.name], {})
    if gate is None:
        return
    scaled = state.try_add("mul", [x.name, gate.name] if draw(st.booleans()) else [gate.name, x.name], {})
    if scaled is not None and draw(st.booleans()):
        _conv(draw, state, scaled, draw(st.sampled_from(state.profile.channels)), kernel=1)


def motif_batch_norm(draw: Draw, state: GraphState) -> None:
    """A batch norm right before or after a conv or dense layer (the two folds of fold_batch_norm)."""
    x = draw(st.sampled_from([v for v in state.values if v.type.dtype == "float32"][::-1]))
    layer_op = "conv2d" if x.type.rank == 4 else "dense"
    if draw(st.booleans()):
        x = state.try_add("batch_norm", [x.name], {"eps": draw(st.sampled_from(state.profile.floats["eps"]))})
        if x is None:
            return
    if layer_op == "conv2d":
        layer = _conv(draw, state, x, draw(st.sampled_from(state.profile.channels)), act=False)
    else:
        layer = state.try_add("dense", [x.name], {"out_features": draw(st.sampled_from(state.profile.channels))})
    if layer is not None and draw(st.booleans()):
        state.try_add("batch_norm", [layer.name], {})


def motif_affine_constants(draw: Draw, state: GraphState) -> None:
    """conv, then * and + by per-channel constants (N x C x 1 x 1; `randomize` makes them the same for every sample
    or not), the elementwise steps fuse_epilogue folds into the conv's bias and affine."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    layer = _conv(draw, state, x, draw(st.sampled_from(state.profile.channels)), act=False)
    for op in draw(st.lists(st.sampled_from(["mul", "add"]), min_size=1, max_size=2)):
        if layer is None:
            return
        shape = (layer.type.batch, layer.type.channels, 1, 1)
        constant = state.try_add("constant", [], {"shape": shape})
        if constant is None:
            return
        operands = [layer.name, constant.name] if draw(st.booleans()) else [constant.name, layer.name]
        layer = state.try_add(op, operands, {})


def motif_unpool(draw: Draw, state: GraphState) -> None:
    """SegNet's unpooling: max_pool2d and max_pool2d_indices with the same window, something done to the pooled
    map, then max_unpool2d back to the input's size."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    kernel = draw(st.sampled_from([k for k in state.profile.kernels if k > 1] or [2]))
    window = {"kernel": kernel, "stride": draw(st.sampled_from(state.profile.strides + (kernel,))),
              "padding": draw(st.sampled_from([0, kernel // 2])), "ceil_mode": draw(st.booleans())}
    pooled = state.try_add("max_pool2d", [x.name], window)
    indices = pooled and state.try_add("max_pool2d_indices", [x.name], window)
    if indices is None:
        return
    values = pooled
    if draw(st.booleans()):
        values = state.try_add(draw(st.sampled_from(state.profile.activations)), [pooled.name], {}) or pooled
    unpool_window = {"kernel": kernel, "stride": window["stride"], "padding": window["padding"],
                     "output_size": x.type.shape[2:]}
    state.try_add("max_unpool2d", [values.name, indices.name], unpool_window)


def motif_head(draw: Draw, state: GraphState) -> None:
    """A classifier head: global average pooling or flatten, dense layers, maybe a softmax."""
    x = draw(st.sampled_from(state.float_values()[::-1]))
    flat = state.try_add(draw(st.sampled_from(["global_avg_pool", "flatten"])), [x.name], {})
    if flat is not None and flat.type.rank == 4:
        flat = state.try_add("flatten", [flat.name], {})
    if flat is None:
        return
    out = draw(st.sampled_from(state.profile.channels))
    act = draw(st.sampled_from((None,) + state.profile.activations))
    dense = state.try_add("dense", [flat.name], {"out_features": out, "act": act})
    if dense is not None and draw(st.booleans()):
        state.try_add("softmax", [dense.name], {})


MOTIFS: dict[str, Callable[[Draw, GraphState], None]] = {
    "residual": motif_residual,
    "branches": motif_branches,
    "separable": motif_separable,
    "squeeze_excite": motif_squeeze_excite,
    "batch_norm": motif_batch_norm,
    "affine_constants": motif_affine_constants,
    "unpool": motif_unpool,
    "head": motif_head,
}


# ----- the strategy ---------------------------------------------------------------------------------------------
def fuzz_ops() -> list[str]:
    """The ops the strategy draws single nodes of: every registry op but `input` (inputs start each graph)."""
    return [op for op in op_names() if op != "input"]


@st.composite
def fuzz_cases(draw: Draw, profile: Profile = CI) -> FuzzCase:
    """A random valid graph with random weights (see the module docstring)."""
    seed = draw(st.integers(0, 2**31 - 1))
    state = GraphState(profile, draw(st.sampled_from(profile.batches)))
    for index in range(draw(st.integers(1, 2))):
        channels = draw(st.sampled_from(profile.channels))
        if index > 0 and draw(st.integers(0, 3)) == 0:
            shape: tuple[int, ...] = (state.batch, channels)  # N x features
        else:
            shape = (state.batch, channels, *draw_pair(draw, profile.sizes))
        state.graph.add_node(f"x{index}", "input", attrs={"shape": shape})
    ops = fuzz_ops()
    moves = [*ops, *(f"motif:{name}" for name in MOTIFS)]
    for _ in range(draw(st.integers(1, profile.max_steps))):
        move = draw(st.sampled_from(moves))
        if move.startswith("motif:"):
            MOTIFS[move.removeprefix("motif:")](draw, state)
        else:
            draw_op_node(draw, state, move)
    graph = state.graph
    produced = [n for n in graph.nodes if n.op != "input"]
    if not produced:
        state.try_add("relu", [graph.inputs[0].name], {})
        produced = [n for n in graph.nodes if n.op != "input"]
    # Outputs: every value nobody reads, and maybe one that is read too (a value passes must keep).
    outputs = [n.name for n in produced if not graph.consumers(n.name)]
    read = [n.name for n in produced if graph.consumers(n.name)]
    if read and draw(st.booleans()):
        outputs.append(draw(st.sampled_from(read)))
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    graph.set_outputs(sorted(outputs, key=order.__getitem__))
    randomize(graph, seed, shared_constants=True)
    graph.validate()
    return FuzzCase(graph, seed)
