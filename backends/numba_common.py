"""What the two Numba backends (numba-cpu, numba-cuda) share: the generated kernel module and its file in the
kernel cache, which lowering each op goes to, and the activation formulas of the kernel templates.

What differs by target stays in each backend: the template bodies, how arguments are laid out (arena views on the
CPU, arena offsets on the device), launch shapes, compiling and running.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from cnncomp.errors import GraphError
from cnncomp.ir import Node
from cnncomp.ops import get_op, op_names
from cnncomp.ops.activation import ACTIVATIONS


@dataclass(frozen=True)
class KernelSource:
    """One generated kernel module. `family` names the template; `source` defines a function `kernel`."""

    family: str
    source: str
    # The constants the template was specialized on, for listings and `--emit-source` headers.
    specialization: tuple[tuple[str, Any], ...] = field(default=())
    # Each backend's kernel modules are named apart, so the two never collide in sys.modules.
    MODULE_PREFIX: ClassVar[str] = "cnncomp_kernel_"

    @property
    def key(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    @property
    def module_name(self) -> str:
        return f"{self.MODULE_PREFIX}{self.family}_{self.key}"


def default_cache_dir() -> Path:
    """`$CNNCOMP_CACHE_DIR`, else `$XDG_CACHE_HOME/cnncomp`, else `~/.cache/cnncomp`."""
    explicit = os.environ.get("CNNCOMP_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cnncomp"


class KernelModules:
    """Kernel modules as files in one directory of the kernel cache, imported from there so that Numba caches
    the compiled code beside them (it caches only functions that live in real `.py` files)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, kernel: KernelSource) -> Path:
        return self.directory / f"{kernel.module_name}.py"

    def write(self, kernel: KernelSource) -> Path:
        """The kernel's module file, written if new: write then rename, so a reader never sees half a file and
        Numba's cache stamp (mtime, size) of a finished file never changes afterwards."""
        path = self.path(kernel)
        if not path.exists():
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "w") as handle:
                handle.write(kernel.source)
            os.replace(tmp, path)
        return path

    def load(self, kernel: KernelSource) -> Any:
        """The kernel's Numba dispatcher, importing its module (written first if new)."""
        return import_module(kernel.module_name, self.write(kernel)).kernel


_IMPORT_LOCK = threading.Lock()  # one import of a kernel module, however many threads compile models at once


def import_module(module_name: str, path: Path) -> Any:
    """The module `module_name`, imported from `path` on first use in this process."""
    with _IMPORT_LOCK:
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[module_name] = module
        return module


# Which lowering each op goes to: a backend defines `lower_<name>` for every name here. Ops that compute the
# same thing share one: add and mul a binary kernel; the registry's activations one elementwise kernel, and the
# ops that copy their operand (identity, dropout, flatten) a copy.
LOWERING_NAMES: dict[str, str] = {
    "conv2d": "conv2d",
    "conv_transpose2d": "conv_transpose2d",
    "depthwise_conv2d": "depthwise_conv2d",
    "pointwise_conv2d": "pointwise_conv2d",
    "separable_conv2d": "separable_conv2d",
    "strided_slice": "strided_slice",
    "dense": "dense",
    "max_pool2d": "max_pool2d",
    "max_pool2d_indices": "max_pool2d_indices",
    "avg_pool2d": "avg_pool2d",
    "max_unpool2d": "max_unpool2d",
    "global_avg_pool": "global_avg_pool",
    "adaptive_avg_pool2d": "adaptive_avg_pool2d",
    "batch_norm": "batch_norm",
    "add": "binary",
    "mul": "binary",
    "concat": "concat",
    "channel_slice": "channel_slice",
    "pad": "pad",
    "crop": "crop",
    "lrn": "lrn",
    "softmax": "softmax",
    "upsample": "upsample",
    **{name: "copy" for name in op_names() if get_op(name).copies_operand},
    **{name: "activation" for name in ACTIVATIONS},
}

Lowering = Callable[[Node, Any], list[Any]]


def lowering_table(functions: Mapping[str, Any]) -> dict[str, Lowering]:
    """Each op's lowering among a backend's `functions` (its module's globals): `lower_<name>` for the op's
    name in LOWERING_NAMES."""
    return {op: functions[f"lower_{name}"] for op, name in LOWERING_NAMES.items()}


def lowering_of(table: Mapping[str, Lowering], node: Node, backend: str) -> Lowering:
    """The node's lowering in `table`; GraphError naming the node and the backend where there is none."""
    try:
        return table[node.op]
    except KeyError:
        raise GraphError(f"{node.describe()}: the {backend} backend has no kernel for op {node.op!r}") from None


class Literal:
    """A float32 constant in an activation formula: `{name:6.0}` formats as `template` with the number, such as
    `np.float32(6.0)` (`{name:{alpha}}` takes the number from the formula's `alpha`)."""

    def __init__(self, template: str) -> None:
        self.template = template

    def __format__(self, number: str) -> str:
        return self.template.format(number)


@dataclass(frozen=True)
class Dialect:
    """How a target's kernels write what the activation formulas use: a float32 constant (`f32`), a constant
    compared against (`cmp`: the CPU compares with a bare float, the device with a float32), tanh and exp."""

    f32: Literal
    cmp: Literal
    tanh: str
    exp: str


# Each activation as a statement on the float32 scalar `{v}`, written once for both targets (see Dialect), so that
# NaN passes through each as it does through the numpy reference (cnncomp.ops.activation).
ACTIVATION_FORMULAS = {
    "relu": "{v} = {v} if not ({v} < {cmp:0.0}) else {f32:0.0}",
    # Two plain selects: the nested conditional stayed a branch in scalar loops (rows shorter than a vector), which
    # random signs mispredict (7x7 depthwise convs with relu6: 0.31 against 0.13 ms).
    "relu6": "{v} = {v} if not ({v} < {cmp:0.0}) else {f32:0.0}\n{v} = {v} if not ({v} > {cmp:6.0}) else {f32:6.0}",
    "leaky_relu": "{v} = {v} if not ({v} < {cmp:0.0}) else {v} * {f32:{alpha}}",
    "tanh": "{v} = {tanh}({v})",
    "sigmoid": "{v} = {f32:1.0} / ({f32:1.0} + {exp}(-{v}))",
    "silu": "{v} = {v} / ({f32:1.0} + {exp}(-{v}))",
    "hardswish": "{v} = {v} * min(max({v} + {f32:3.0}, {f32:0.0}), {f32:6.0}) / {f32:6.0}",
    "gelu": "{v} = {f32:0.5} * {v} * ({f32:1.0} + {tanh}({f32:0.7978845608028654} * ({v} + {f32:0.044715} * {v} * {v} "
            "* {v})))",
}


def activation_code(dialect: Dialect, act: str, value: str, alpha: str = "ALPHA") -> str:
    """The statement that applies activation `act` to the scalar `value` in the target's `dialect`; `alpha` names
    the leaky-relu slope constant."""
    return ACTIVATION_FORMULAS[act].format(v=value, alpha=alpha, f32=dialect.f32, cmp=dialect.cmp,
                                           tanh=dialect.tanh, exp=dialect.exp)


def activation_constants(act: str | None, attrs: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The specialization constants of activation `act` ({} for anything else): the attributes of its registry
    entry (leaky relu's alpha), read from `attrs` as `<prefix><name>`, named in capitals (ALPHA, MID_ALPHA)."""
    if act not in ACTIVATIONS:
        return {}
    return {f"{prefix}{name}".upper(): float(attrs[f"{prefix}{name}"]) for name in get_op(act).attrs}


def epilogue_constants(attrs: Mapping[str, Any]) -> dict[str, float]:
    """The specialization constants of a conv's or dense's fused activation."""
    return activation_constants(attrs.get("act"), attrs)
