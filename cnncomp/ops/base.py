"""What every op of the registry declares, and the attribute kinds they share."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np

from cnncomp.errors import GraphError, ShapeError
from cnncomp.ir import TensorType
from cnncomp.limits import over_limit


class Fusion(enum.IntEnum):
    """Fusion classes, ordered as in TVM: a lower class can ride along inside a higher one. fuse_epilogue reads
    them: only ELEMWISE and BROADCAST ops (activations; bias, batch-norm affine, residual add) ride in the epilogue
    of an OUT_ELEMWISE_FUSABLE op (conv, dense), never another conv; which of them it absorbs, and how, the pass's
    exact rewrites say."""

    ELEMWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCE = 3
    OUT_ELEMWISE_FUSABLE = 4
    OPAQUE = 8


class OpError(ValueError):
    """Raised inside an op's rules; the registry turns it into a GraphError/ShapeError naming the node."""

    def __init__(self, message: str, shape: bool = True) -> None:
        super().__init__(message)
        self.shape = shape


REQUIRED = object()


@dataclass(frozen=True)
class Attr:
    """One attribute: its kind (how a raw value is normalized), its default, and for strings the choices."""

    kind: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()

    def normalize(self, value: Any) -> Any:
        if value is None and self.default is None:
            return None
        return _NORMALIZERS[self.kind](self, value)


def _int(attr: Attr, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise OpError(f"expected an int, got {value!r}", shape=False)
    return int(value)


def _float(attr: Attr, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise OpError(f"expected a number, got {value!r}", shape=False)
    return float(value)


def _bool(attr: Attr, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OpError(f"expected true or false, got {value!r}", shape=False)
    return bool(value)


def _choice(attr: Attr, value: Any) -> str:
    if value not in attr.choices:
        raise OpError(f"expected one of {', '.join(attr.choices)}, got {value!r}", shape=False)
    return value


def _int_tuple(value: Any, lengths: tuple[int, ...], what: str) -> tuple[int, ...]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * lengths[0]
    if isinstance(value, (tuple, list)) and len(value) in lengths[1:] and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value
    ):
        return tuple(int(v) for v in value)
    raise OpError(f"expected {what}, got {value!r}", shape=False)


def _pair(attr: Attr, value: Any) -> tuple[int, int]:
    return _int_tuple(value, (2, 2), "an int or a pair of ints")


def _float_pair(attr: Attr, value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (float(value), float(value))
    if isinstance(value, (tuple, list)) and len(value) == 2:
        return (_float(attr, value[0]), _float(attr, value[1]))
    raise OpError(f"expected a number or a pair of numbers, got {value!r}", shape=False)


def _pads(attr: Attr, value: Any) -> tuple[int, int, int, int] | str:
    """Padding as (top, bottom, left, right); "same" stays symbolic until the op knows its kernel."""
    if value in ("valid", "same"):
        return (0, 0, 0, 0) if value == "valid" else "same"
    pads = _int_tuple(value, (4, 2, 4), 'an int, a pair, a 4-tuple (top, bottom, left, right), "valid" or "same"')
    if len(pads) == 2:
        pads = (pads[0], pads[0], pads[1], pads[1])
    return pads


def _shape(attr: Attr, value: Any) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not value:
        raise OpError(f"expected a shape (a list of ints), got {value!r}", shape=False)
    return tuple(_int(attr, v) for v in value)


_NORMALIZERS = {
    "int": _int,
    "float": _float,
    "bool": _bool,
    "choice": _choice,
    "pair": _pair,
    "float_pair": _float_pair,
    "pads": _pads,
    "shape": _shape,
}


@dataclass(frozen=True)
class ParamSpec:
    """A parameter an op needs: shape, whether training learns it (counted in `params`), how to initialize it."""

    shape: tuple[int, ...]
    learnable: bool = True
    init: str = "weight"  # "weight" (He or Xavier by fan), "zeros" or "ones"


@dataclass(frozen=True)
class Window:
    """How one spatial axis of an output sees its input, for receptive fields: `kernel` input pixels per output,
    `stride` input pixels between outputs (a Fraction below 1 for upsampling)."""

    kernel: Fraction
    stride: Fraction


class Op:
    """Base of registry entries. Subclasses set the class attributes and override the rules that apply."""

    name: ClassVar[str]
    fusion: ClassVar[Fusion] = Fusion.OPAQUE
    attrs: ClassVar[dict[str, Attr]] = {}
    arity: ClassVar[tuple[int, int | None]] = (1, 1)  # min and max operand count (None: unbounded)
    aliases: ClassVar[tuple[str, ...]] = ()
    # What the builder's method and the .cnn language call it, if not `name` (None: neither has it); `aliases`
    # are other spellings of both.
    method: ClassVar[str | None]
    # Operands read only for their shape (crop's reference): no data flows from them.
    shape_only_operands: ClassVar[tuple[int, ...]] = ()
    # The output is the first operand's values unchanged, in their order (a new shape at most): identity,
    # dropout at inference, flatten. A backend copies (or aliases) the bytes.
    copies_operand: ClassVar[bool] = False
    # The parameter whose slice along axis 0 produces output channel o (weight[o]; conv_transpose2d's weight[:, o]
    # per group): fold_batch_norm scales it to fold a batch norm that follows. None: no such parameter.
    output_weight: ClassVar[str | None] = None

    # ----- rules a subclass overrides ------------------------------------------------------------------
    def finalize(self, attrs: dict[str, Any]) -> dict[str, Any]:
        """Normalization that needs several attributes together (e.g. "same" padding needs the kernel)."""
        return attrs

    def infer(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], strict: bool) -> TensorType:
        raise NotImplementedError

    def params(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> dict[str, ParamSpec]:
        return {}

    def macs(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> int:
        """Multiply-accumulates of weighted layers (conv, dense); 0 for the rest, as torchinfo counts."""
        return 0

    def window(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType]) -> tuple[Window, Window] | None:
        """Receptive-field step per spatial axis (H, W); None for ops that map each pixel to itself."""
        return None

    def reference(self, inputs: list[np.ndarray], params: Mapping[str, np.ndarray],
                  attrs: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError

    def is_identity(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> bool:
        """Whether this node's output is its first operand, as it is (eliminate_identity drops such nodes)."""
        return self.copies_operand and output == inputs[0]

    def per_pixel(self, attrs: Mapping[str, Any]) -> bool:
        """Whether the op computes each pixel's channel vector on its own, so it means the same on N x F as on
        N x F x H x W (dense_to_conv turns a classifier head made of such ops into convolutions)."""
        return False

    # ----- shared machinery ------------------------------------------------------------------------------
    def check(self, node: str, raw_attrs: Mapping[str, Any], inputs: Sequence[TensorType],
              strict: bool) -> tuple[dict[str, Any], TensorType]:
        """Normalize attributes and infer the output type; every failure names the node."""
        where = f"node {node!r} ({self.name})"
        low, high = self.arity
        if len(inputs) < low or (high is not None and len(inputs) > high):
            expected = f"{low}" if low == high else f"{low} or more" if high is None else f"{low} to {high}"
            raise GraphError(f"{where}: takes {expected} operand(s), got {len(inputs)}")
        attrs: dict[str, Any] = {}
        for key in raw_attrs:
            if key not in self.attrs:
                allowed = ", ".join(self.attrs) or "none"
                raise GraphError(f"{where}: unknown attribute {key!r}; expected one of: {allowed}")
        try:
            for key, spec in self.attrs.items():
                if key in raw_attrs:
                    attrs[key] = _normalize_attr(key, spec, raw_attrs[key])
                elif spec.default is REQUIRED:
                    raise OpError(f"missing required attribute {key!r}", shape=False)
                else:
                    attrs[key] = spec.default
            attrs = self.finalize(attrs)
            output = self.infer(attrs, inputs, strict)
            self._check_memory(attrs, inputs, output)
        except OpError as exc:
            raise (ShapeError if exc.shape else GraphError)(f"{where}: {exc}") from None
        return attrs, output


    def _check_memory(self, attrs: Mapping[str, Any], inputs: Sequence[TensorType], output: TensorType) -> None:
        """Refuse, before anything is allocated, an output or parameters larger than the memory limit."""
        reason = over_limit(f"its output {output}", output.nbytes)
        specs = self.params(attrs, inputs) if reason is None else {}
        if specs:
            largest = max(specs, key=lambda key: prod(specs[key].shape))
            reason = over_limit(f"its parameters (the largest, {largest}, "
                                f"{'x'.join(map(str, specs[largest].shape))} float32)",
                                sum(prod(spec.shape) for spec in specs.values()) * 4)
        if reason is not None:
            raise OpError(reason)


def _normalize_attr(key: str, spec: Attr, value: Any) -> Any:
    try:
        return spec.normalize(value)
    except OpError as exc:
        raise OpError(f"attribute {key!r}: {exc}", shape=False) from None


# ----- shape rules shared by window ops ----------------------------------------------------------------------
def window_output_size(axis: str, size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                       dilation: int, strict: bool, ceil_mode: bool = False) -> int:
    """The lecture's rule out = floor((N + 2P - D*(F-1) - 1) / S) + 1, with uneven pads P_begin + P_end."""
    extent = dilation * (kernel - 1) + 1
    padded = size + pad_begin + pad_end
    if extent > padded:
        raise OpError(
            f"{axis}: kernel extent {extent} (F={kernel}, D={dilation}) is larger than the padded input "
            f"{padded} (N={size}, P={pad_begin}+{pad_end})"
        )
    span = padded - extent
    if strict and span % stride:
        raise OpError(
            f"{axis}: (N + 2P - D*(F-1) - 1)/S + 1 = ({size} + {pad_begin + pad_end} - {extent - 1} - 1)/{stride} + 1"
            f" = {float(Fraction(span, stride) + 1):.4f} is not an integer (strict mode: fractions are illegal)"
        )
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or its leading padding
    return out


def require_rank(inputs: Sequence[TensorType], rank: int, what: str = "input") -> None:
    for index, t in enumerate(inputs):
        if t.rank != rank:
            layout = "NCHW" if rank == 4 else "N x features" if rank == 2 else f"rank {rank}"
            name = what if len(inputs) == 1 else f"operand {index}"
            raise OpError(f"{name} has shape {t}, expected a {layout} tensor")


def require_nchw(inputs: Sequence[TensorType]) -> TensorType:
    """The data operand (the first), checked to be NCHW, every operand checked to be float32."""
    require_rank(inputs[:1], 4)
    require_float(inputs)
    return inputs[0]


def require_float(inputs: Sequence[TensorType]) -> None:
    for index, t in enumerate(inputs):
        if t.dtype != "float32":
            raise OpError(f"operand {index} has dtype {t.dtype}, expected float32")


def positive(value: int, what: str) -> None:
    if value <= 0:
        raise OpError(f"{what} must be positive, got {value}")


def prod(values: Sequence[int]) -> int:
    return math.prod(values)
