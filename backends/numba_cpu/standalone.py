"""The standalone program: one Python file that runs a model compiled for numba-cpu, with numpy, numba and scipy
only (no cnncomp), and its weights in an `.npz` beside it.

    cnncomp compile lenet5 --emit standalone -o lenet5.py      # writes lenet5.py and lenet5.npz
    python lenet5.py input.npy -o output.npy

`cnncomp.api.CompiledModel.save_standalone` reaches it through the backend's `write_standalone`.

The file holds, in order: the runtime modules the kernels call (backends/numba_cpu/blas.py and mathlib.py, inlined),
every generated kernel module of the model (inlined, each module's names given the suffix `_k<i>` so that the
modules' `kernel` functions and specialization constants do not collide), the memory layout (arena and scratch
sizes, where each argument array lives) and the steps, then a small command line. The weights file holds every array
argument that is not an activation, as the backend prepared it (Winograd-transformed, transposed, ...), so the
program does no preparation of its own: it replays the compiled steps.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import sys
import tokenize
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.numba_cpu.kernels import RUNTIME_MODULES
from cnncomp import __version__
from cnncomp.data import write_atomically
from cnncomp.errors import CnnCompError
from cnncomp.runtime import offset_in

if TYPE_CHECKING:
    from cnncomp.api import CompiledModel

class StandaloneError(CnnCompError):
    """A model that cannot be written as a standalone program."""


def write(model: CompiledModel, path: str | Path) -> tuple[Path, Path]:
    """Write the program to `path` (a `.py`) and its weights beside it (same name, `.npz`), both atomically."""
    path = Path(path)
    if path.suffix != ".py":
        raise StandaloneError(f"{path}: a standalone program is a .py file")
    source, weights = program(model)
    weights_path = path.with_suffix(".npz")
    buffer = io.BytesIO()
    np.savez(buffer, **weights)
    write_atomically({weights_path: buffer.getvalue(), path: source.encode()})
    return path, weights_path


def program(model: CompiledModel) -> tuple[str, dict[str, np.ndarray]]:
    """The program's source and the arrays its `.npz` must hold, for a model compiled for numba-cpu."""
    executable = model.executable
    runtime = [importlib.import_module(f"backends.numba_cpu.{name}") for name in RUNTIME_MODULES]
    inlined = {module.__name__ for module in runtime}
    runtime_modules = [_Module(inspect.getsource(module), module.__name__) for module in runtime]
    imports = _Imports()
    for module in runtime_modules:
        imports.add(module.imports, inlined=inlined)
    kernel_names: dict[str, str] = {}  # module name -> the renamed kernel function
    sections = []
    for step in executable.steps:
        module_name = step.kernel.module_name
        if module_name in kernel_names:
            continue
        suffix = f"_k{len(kernel_names)}"
        module = _Module(step.kernel.source, module_name)
        imports.add(module.imports, inlined=inlined)
        sections.append(f"# ----- kernel {len(kernel_names)}: {module_name} {'-' * max(0, 80 - len(module_name))}\n"
                        + _comment(module.docstring) + module.renamed(suffix))
        kernel_names[module_name] = f"kernel{suffix}"

    workspace = executable.workspace
    layout = _Layout(workspace.arena, workspace.scratch)
    steps = []
    for step, step_args in zip(executable.steps, workspace.args, strict=True):
        args = "".join(f"        {layout.spec(arg, step.node)},\n" for arg in step_args)
        steps.append(f"    ({step.node!r}, {kernel_names[step.kernel.module_name]}, (\n{args}    )),")
    inputs = {node.name: layout.spec(workspace.views[node.name], node.name) for node in model.graph.inputs}
    outputs = {name: layout.spec(workspace.views[name], name) for name in model.graph.outputs}

    header = HEADER.format(
        name=model.name, version=__version__, opt_level=model.opt_level,
        batch=next(iter(model.input_shapes.values()))[0],
        inputs=_shapes(model, model.input_shapes), outputs=_shapes(model, model.output_shapes),
    )
    source = "\n\n".join([
        header.rstrip() + "\n\n" + imports.text(),
        *(f"# ----- {module.name} (inlined) {'-' * 70}\n" + module.body for module in runtime_modules),
        *sections,
        RUNNER.format(name=model.name, arena_bytes=layout.arena.nbytes, scratch_bytes=layout.scratch.nbytes,
                      inputs=_dict_literal(inputs), outputs=_dict_literal(outputs), steps="\n".join(steps)),
    ])
    try:
        compile(source, "standalone", "exec")  # parse only: a mistake here is ours, better caught now
    except SyntaxError as exc:
        raise StandaloneError(f"the generated program does not parse: {exc}") from None
    return source, layout.weights


def _shapes(model: CompiledModel, shapes: Mapping[str, tuple[int, ...]]) -> str:
    return ", ".join(f"{name!r} {'x'.join(map(str, shape))} {model.graph.node(name).type.dtype}"
                     for name, shape in shapes.items())


def _comment(text: str | None) -> str:
    return "".join(f"# {line}".rstrip() + "\n" for line in (text or "").splitlines()) + "\n"


def _dict_literal(items: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{name!r}: {spec}" for name, spec in items.items()) + "}"


class _Layout:
    """Describes each step argument as the program rebuilds it: a view of the arena or the scratch region
    (offset, shape, strides, dtype), an array of the weights file, or a scalar literal."""

    def __init__(self, arena: np.ndarray, scratch: np.ndarray) -> None:
        self.arena = arena
        self.scratch = scratch
        self.weights: dict[str, np.ndarray] = {}
        self._keys: dict[tuple[Any, ...], str] = {}

    def spec(self, value: Any, node: str) -> str:
        if isinstance(value, np.ndarray):
            for kind, buffer in (("arena", self.arena), ("scratch", self.scratch)):
                offset = offset_in(value, buffer) if value.size else None
                if offset is not None:
                    shape, strides, dtype = tuple(value.shape), tuple(value.strides), str(value.dtype)
                    return f"({kind!r}, {offset}, {shape!r}, {strides!r}, {dtype!r})"
            identity = (value.__array_interface__["data"][0], value.shape, value.strides, value.dtype.str)
            key = self._keys.get(identity)
            if key is None:
                key = self._keys[identity] = f"w{len(self._keys)}"
                self.weights[key] = np.ascontiguousarray(value)
            return f"('weights', {key!r})"
        if isinstance(value, bool | int | float):
            return repr(value)
        if isinstance(value, np.generic) and value.dtype.kind in "biuf":
            return f"np.{value.dtype.name}({value.item()!r})"
        raise StandaloneError(f"node {node!r}: cannot write a kernel argument of type {type(value).__name__}")


class _Module:
    """A generated module taken apart: its docstring, its top-level imports, and the rest (the body)."""

    def __init__(self, source: str, name: str) -> None:
        self.name = name
        tree = ast.parse(source)
        self.docstring = ast.get_docstring(tree, clean=True)
        lines = source.splitlines(keepends=True)
        dropped: set[int] = set()
        self.imports: list[ast.Import | ast.ImportFrom] = []
        self.globals: set[str] = set()
        for index, node in enumerate(tree.body):
            if isinstance(node, ast.Import | ast.ImportFrom):
                self.imports.append(node)
            elif not (index == 0 and self.docstring is not None):
                self.globals.update(_defined_names(node))
                continue
            dropped.update(range(node.lineno - 1, node.end_lineno))
        self.body = "".join(line for number, line in enumerate(lines) if number not in dropped).strip("\n") + "\n"
        self._tree = tree

    def renamed(self, suffix: str) -> str:
        """The body with every module-level name given `suffix` (module-level names are not argument or keyword
        names anywhere in the module, so renaming them is a plain substitution)."""
        names = {name: name + suffix for name in self.globals}
        for node in ast.walk(self._tree):
            if isinstance(node, ast.arg | ast.keyword):
                local = node.arg
            elif isinstance(node, ast.alias):
                local = node.asname or node.name
            else:
                continue
            if local in names:
                raise StandaloneError(f"kernel module {self.name}: {local!r} names both a module global and an "
                                      "argument or import; it cannot be inlined")
        edits = []
        previous = ""
        for token in tokenize.generate_tokens(io.StringIO(self.body).readline):
            if token.type == tokenize.NAME and token.string in names and previous != ".":
                edits.append((token.start, token.end, names[token.string]))
            if token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
                previous = token.string
        lines = self.body.splitlines(keepends=True)
        for (row, start), (_, end), new in reversed(edits):
            line = lines[row - 1]
            lines[row - 1] = line[:start] + new + line[end:]
        return "".join(lines)


def _defined_names(node: ast.stmt) -> set[str]:
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return {node.name}
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(
        node, ast.AnnAssign | ast.AugAssign) else []
    names = set()
    for target in targets:
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return names


class _Imports:
    """The imports of every inlined module, merged; imports of the inlined runtime modules are dropped."""

    def __init__(self) -> None:
        self.modules: set[tuple[str, str | None]] = set()
        self.names: dict[str, set[tuple[str, str | None]]] = {}

    def add(self, imports: list[ast.Import | ast.ImportFrom], inlined: set[str]) -> None:
        for node in imports:
            if isinstance(node, ast.Import):
                self.modules.update((alias.name, alias.asname) for alias in node.names)
                continue
            module = node.module or ""
            if module == "__future__" or module in inlined:
                continue
            if node.level or module.split(".")[0] in ("cnncomp", "backends", "frontends"):
                raise StandaloneError(f"a kernel imports from {module!r}, which a standalone program cannot hold")
            self.names.setdefault(module, set()).update((alias.name, alias.asname) for alias in node.names)

    def text(self) -> str:
        def alias(name: str, asname: str | None) -> str:
            return f"{name} as {asname}" if asname else name

        modules = self.modules | {(name, None) for name in ("argparse", "os", "sys", "tempfile")}
        names = {**self.names, "pathlib": self.names.get("pathlib", set()) | {("Path", None)}}
        groups: dict[bool, list[str]] = {True: [], False: []}  # standard library first, as isort would
        for name, asname in sorted(modules):
            groups[name.split(".")[0] in sys.stdlib_module_names].append(f"import {alias(name, asname)}")
        for module in sorted(names):
            listed = ", ".join(alias(n, a) for n, a in sorted(names[module]))
            groups[module.split(".")[0] in sys.stdlib_module_names].append(f"from {module} import {listed}")
        return "\n\n".join(["from __future__ import annotations", "\n".join(groups[True]),
                             "\n".join(groups[False])]) + "\n"


HEADER = '''\
"""{name}, compiled by cnncomp {version} for numba-cpu at -O{opt_level}: a standalone program.

Needs numpy, numba and scipy (the kernels call BLAS sgemm through scipy.linalg.cython_blas); not cnncomp.
The weights are read from the .npz beside this file (same name).

    python {name}.py input.npy -o output.npy      # input: .npy (or .npz by input name); output: .npy or .npz

Inputs: {inputs}. Outputs: {outputs}. Any batch size is taken, {batch} at a time.
Generated code: the kernels come from cnncomp's templates, the steps from its compiler; do not edit.
"""
'''

RUNNER = '''\
# ----- the program: memory layout, steps, command line ------------------------------------------------------------

MODEL = {name!r}
ARENA_BYTES = {arena_bytes}
SCRATCH_BYTES = {scratch_bytes}
# An array argument is ("arena" or "scratch", byte offset, shape, strides, dtype) or ("weights", key in the .npz);
# anything else is passed as it is.
INPUTS = {inputs}
OUTPUTS = {outputs}
STEPS = [
{steps}
]


class Model:
    """The compiled model: `Model(weights_path)({{input name: array}}) -> {{output name: array}}`."""

    def __init__(self, weights_path):
        with np.load(weights_path, allow_pickle=False) as archive:
            self.weights = {{key: archive[key] for key in archive.files}}
        self.buffers = {{"arena": np.zeros(ARENA_BYTES, np.uint8), "scratch": np.zeros(SCRATCH_BYTES, np.uint8)}}
        self.inputs = {{name: self.array(spec) for name, spec in INPUTS.items()}}
        self.outputs = {{name: self.array(spec) for name, spec in OUTPUTS.items()}}
        self.steps = [(node, kernel, tuple(self.array(arg) if isinstance(arg, tuple) else arg for arg in args))
                      for node, kernel, args in STEPS]

    def array(self, spec):
        if spec[0] == "weights":
            return self.weights[spec[1]]
        kind, offset, shape, strides, dtype = spec
        return np.ndarray(shape, dtype, self.buffers[kind], offset, strides)

    def __call__(self, inputs):
        """Any batch size N: the compiled batch at a time, the last part padded with zeros (the samples of a
        batch are computed independently, so padding changes no other sample's result)."""
        sizes = {{}}
        for name, view in self.inputs.items():
            if name not in inputs:
                raise ValueError(f"missing input {{name!r}}")
            value = inputs[name]
            if value.dtype != view.dtype or value.shape[1:] != view.shape[1:] or not value.shape[0]:
                raise ValueError(f"input {{name!r}}: {{value.dtype}} {{'x'.join(map(str, value.shape))}}, expected "
                                 f"{{view.dtype}} Nx{{'x'.join(map(str, view.shape[1:]))}} (any batch N >= 1)")
            sizes[name] = value.shape[0]
        if len(set(sizes.values())) > 1:
            raise ValueError("inputs of different batch sizes: " + ", ".join(f"{{n}} {{b}}" for n, b in sizes.items()))
        total = next(iter(sizes.values()))
        results = {{name: np.empty((total, *view.shape[1:]), view.dtype) for name, view in self.outputs.items()}}
        compiled = next(iter(self.inputs.values())).shape[0]
        for start in range(0, total, compiled):
            count = min(compiled, total - start)
            for name, view in self.inputs.items():
                view[:count] = inputs[name][start:start + count]
                view[count:] = 0
            self.run_steps()
            for name, view in self.outputs.items():
                results[name][start:start + count] = view[:count]
        return results

    def run_steps(self):
        for node, kernel, args in self.steps:
            try:
                kernel(*args)
            except ValueError as exc:
                raise ValueError(f"node {{node!r}}: {{exc}}") from None


def read_inputs(path):
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            arrays = {{key: archive[key] for key in archive.files}}
        if len(INPUTS) == 1 and len(arrays) == 1:
            return {{next(iter(INPUTS)): next(iter(arrays.values()))}}
        return arrays
    if len(INPUTS) != 1:
        raise ValueError(f"{{MODEL}} has inputs {{', '.join(INPUTS)}}: give an .npz with an array for each")
    return {{next(iter(INPUTS)): np.load(path, allow_pickle=False)}}


def write_outputs(path, outputs):
    """Atomically: the file appears whole or not at all."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{{path.name}}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            if path.suffix == ".npz":
                np.savez(file, **outputs)
            elif len(outputs) == 1:
                np.save(file, next(iter(outputs.values())))
            else:
                raise ValueError(f"{{MODEL}} has outputs {{', '.join(outputs)}}: write an .npz")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=f"Run {{MODEL}} (compiled by cnncomp).")
    parser.add_argument("input", help=".npy with the input array, or .npz with an array per input name")
    parser.add_argument("-o", "--output", required=True, help=".npy for the output (or .npz: every output by name)")
    parser.add_argument("--weights", default=str(Path(__file__).with_suffix(".npz")),
                        help="the weights file (default: the .npz beside this file)")
    args = parser.parse_args(argv)
    try:
        configure_single_threaded()
        outputs = Model(args.weights)(read_inputs(args.input))
        write_outputs(args.output, outputs)
    except (OSError, ValueError, KeyError) as exc:
        print(f"{{parser.prog}}: error: {{exc}}", file=sys.stderr)
        return 1
    shapes = ", ".join(f"{{name}} {{'x'.join(map(str, value.shape))}}" for name, value in outputs.items())
    print(f"{{args.output}}: {{shapes}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''
