"""Runs a parsed model description and builds its graph with the Python builder.

Statements run in order, as in Python. A block call opens a builder scope named after the instance, so its nodes
are named `instance.node` and carry the block in their meta; nested calls nest the scopes (`layer1.0.conv1`).
Nodes are named by `as NAME`, by the output they compute, or else after their op with a count per scope
(`conv1`, `bn1`, `conv2`); the VGG table's layers take the paper's names (`conv3_2`, `pool4`, `fc7`).

Errors do not stop the run: the statement that failed leaves its names marked as failed, whatever reads them is
skipped silently, and the run goes on to find the next mistake. Each place in the source is reported once.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnncomp.errors import GraphError
from cnncomp.ir import Graph
from cnncomp.ops import get_op
from cnncomp.ops.base import OpError
from frontends.builder import Builder, Value, numbered
from frontends.dsl import syntax as s
from frontends.dsl.errors import Diagnostic, DslError, Pos
from frontends.dsl.ops import SIGNATURES, OpSignature, Parameter, symbols

MAX_BLOCK_DEPTH = 32  # nested block calls: a block that calls itself without end stops here
MAX_REPEAT = 1000  # iterations of one loop (ResNet-152's longest stage has 36 blocks)
MAX_NODES = 50_000
MAX_STEPS = 200_000  # statements run in all, so nested loops cannot hang the compiler
MAX_LIST = 10_000
MAX_NOTES = 6  # "in block ..., called at ..." lines under a diagnostic
MAX_INT = 2**63 - 1  # ints stay 64-bit: repeated squaring of a huge int would hang the evaluator
FUNCTIONS = ("range", "len", "min", "max", "int")
TENSOR_ATTRIBUTES = ("channels", "height", "width", "shape")
NODE_NAME = re.compile(r"\w+")


_ARITHMETIC = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "//": lambda a, b: a // b,
    "%": lambda a, b: a % b,
    "**": lambda a, b: a**b,
}


class _Failed:
    """The value of a name whose statement failed; its error is already reported."""

    def __repr__(self) -> str:
        return "<failed>"


FAILED = _Failed()


class EvalError(Exception):
    def __init__(self, pos: Pos, message: str, fatal: bool = False) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message
        self.fatal = fatal


class Skip(Exception):
    """An operand failed earlier; nothing new to report."""


class ReturnSignal(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


@dataclass
class Frame:
    """The names visible to the statements being run: a block's parameters and values, or the top level's."""

    variables: dict[str, Any]
    owner: str | None = None  # "block NAME" or "sequence NAME" being run; None at the top level


def _suggest(name: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _kind(value: Any) -> str:
    """A value's type in the language's words, for messages."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"the int {value}"
    if isinstance(value, float):
        return f"the number {value:g}"
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, Value):
        return f"a tensor of shape {value.type}"
    if isinstance(value, (tuple, range)):
        return f"a list of {len(value)}"
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Evaluator:
    def __init__(self, program: s.Program, overrides: Mapping[str, Any], batch: int = 1,
                 strict: bool = False) -> None:
        self.program = program
        self.batch = batch
        self.strict = strict
        self.filename = program.filename
        self.diagnostics: dict[tuple[int, int], Diagnostic] = {}
        self.blocks: dict[str, s.BlockDef | s.SequenceDef] = {}
        self.model_params: dict[str, Any] = {}
        self.overrides = dict(overrides)
        self.builder = Builder("model")
        self.path: list[str] = []  # the block instances being built, outermost first
        self.calls: list[tuple[str, str, Pos]] = []  # (what is running, its scope, call site), outermost first
        self.counters: dict[tuple[str, str], int] = {}
        self.taken: dict[str, set[str]] = {}  # scope prefix -> local names of its nodes and block instances
        self.table: dict[str, list[int]] = {}  # scope prefix -> [group, index] of the VGG table's naming
        self.outputs: list[Value] = []
        self.steps = 0
        self.header: s.ModelDecl | None = None

    # ----- reporting ----------------------------------------------------------------------------------------
    def report(self, pos: Pos, message: str) -> None:
        key = (pos.line, pos.col)
        if key in self.diagnostics:
            return
        notes = [f"in {what} ({scope}), called at {self.filename}:{site.line}:{site.col}"
                 for what, scope, site in reversed(self.calls)]
        if len(notes) > MAX_NOTES:  # deep recursion: the innermost calls and the outermost one tell the story
            notes = [*notes[: MAX_NOTES - 2], f"... {len(notes) - MAX_NOTES + 1} more calls ...", notes[-1]]
        self.diagnostics[key] = Diagnostic(self.filename, pos, message, tuple(notes))

    def fail(self, pos: Pos, message: str) -> DslError:
        self.report(pos, message)
        return DslError(list(self.diagnostics.values()), self.program.source)

    # ----- the run --------------------------------------------------------------------------------------------
    def run(self, initialize: bool = True) -> Graph:
        statements = self.program.statements
        if not statements or not isinstance(statements[0], s.ModelDecl):
            pos = statements[0].pos if statements else Pos(1, 1)
            raise self.fail(pos, "a model description starts with `model NAME(parameter = default, ...)`")
        self.header = statements[0]
        self.builder = Builder(self.header.name, batch=self.batch, strict=self.strict or self.header.strict)
        self.collect_blocks()
        self.check_statically(statements[1:], top_level=True)
        self.bind_model_params()
        try:
            self.exec_body(statements[1:], Frame({}))
        except EvalError:
            pass  # a fatal error: reported, and nothing after it can be trusted
        except RecursionError:
            self.report(self.header.pos, "the description nests expressions or blocks too deeply to evaluate")
        if not self.outputs and not self.diagnostics:
            self.report(self.header.pos, f"model {self.header.name} declares no output; add one, such as "
                                         "`output logits = x -> dense(classes)`")
        if self.diagnostics:
            raise DslError(list(self.diagnostics.values()), self.program.source)
        if initialize:
            try:
                return self.builder.build(*self.outputs)
            except GraphError as error:  # the weights as a whole over the memory limit
                raise self.fail(self.header.pos, str(error)) from None
        # The structure only (for summaries): Builder.build without drawing the weights, which for VGG-16's
        # 138M parameters takes seconds. Such a graph has shapes and costs but cannot run.
        self.builder.graph.set_outputs(v.name for v in self.outputs)
        return self.builder.graph

    def collect_blocks(self) -> None:
        for statement in self.program.statements:
            if not isinstance(statement, (s.BlockDef, s.SequenceDef)):
                continue
            kind = "block" if isinstance(statement, s.BlockDef) else "sequence"
            if statement.name in SIGNATURES or statement.name in FUNCTIONS:
                self.report(statement.pos, f"{kind} {statement.name} has the name of a built-in "
                                           f"{'op' if statement.name in SIGNATURES else 'function'}; rename it")
            elif statement.name in self.blocks:
                first = self.blocks[statement.name].pos
                self.report(statement.pos, f"{kind} {statement.name} is already defined at line {first.line}")
            else:
                self.blocks[statement.name] = statement
            if isinstance(statement, s.BlockDef):
                seen: set[str] = set()
                for param in statement.params:
                    if param.name in seen:
                        self.report(param.pos, f"block {statement.name} has two parameters called {param.name}")
                    seen.add(param.name)

    # ----- checks that need no evaluation: they cover code that never runs, too ---------------------------
    def check_statically(self, statements: Sequence[s.Statement], top_level: bool, block: str | None = None) -> None:
        for statement in statements:
            if isinstance(statement, s.ModelDecl):
                self.report(statement.pos, "`model` may appear once, as the first statement")
            elif isinstance(statement, (s.InputDecl, s.OutputDecl, s.BlockDef, s.SequenceDef)) and not top_level:
                word = {s.InputDecl: "input", s.OutputDecl: "output", s.BlockDef: "block",
                        s.SequenceDef: "sequence"}[type(statement)]
                self.report(statement.pos, f"`{word}` is only allowed at the top level of the file, not inside "
                                           f"{'block ' + block if block else 'an if or a loop'}")
            elif isinstance(statement, s.Return) and block is None:
                self.report(statement.pos, "`return` outside a block")
            for expr in _expressions(statement):
                for call in _calls(expr):
                    self.check_call(call)
            if isinstance(statement, s.BlockDef):
                self.check_statically(statement.body, False, statement.name)
                if not any(isinstance(st, s.Return) for st in _walk(statement.body)):
                    self.report(statement.pos, f"block {statement.name} has no `return`: a block returns its "
                                               "result, such as `return relu(y + x)`")
            elif isinstance(statement, s.SequenceDef):
                for layer in statement.layers:
                    if isinstance(layer, s.Call):
                        self.check_call(layer)
            elif isinstance(statement, s.If):
                for _, body in statement.branches:
                    self.check_statically(body, False, block)
                self.check_statically(statement.orelse, False, block)
            elif isinstance(statement, s.For):
                self.check_statically(statement.body, False, block)

    def check_call(self, call: s.Call) -> None:
        if call.name in SIGNATURES:
            names = [p.name for p in SIGNATURES[call.name].parameters]
        elif call.name in self.blocks:
            definition = self.blocks[call.name]
            names = [p.name for p in definition.params] if isinstance(definition, s.BlockDef) else ["x"]
        elif call.name in FUNCTIONS:
            if call.chained:
                self.report(call.pos, f"{call.name} is a function, not an op: it cannot be a step of a chain")
            return
        else:
            known = [*SIGNATURES, *self.blocks, *FUNCTIONS]
            self.report(call.pos, f"unknown op or block '{call.name}'{_suggest(call.name, known)}")
            return
        for argument in call.args:
            if argument.keyword is not None and argument.keyword not in names:
                self.report(argument.pos, self.unknown_keyword(call.name, argument.keyword, names))

    def unknown_keyword(self, callee: str, keyword: str, names: Sequence[str]) -> str:
        listed = ", ".join(names) or "none"
        return f"{callee} has no argument '{keyword}'{_suggest(keyword, names)} (arguments: {listed})"

    # ----- model parameters ------------------------------------------------------------------------------
    def bind_model_params(self) -> None:
        header = self.header
        for param in header.params:
            if param.name in self.model_params:
                self.report(param.pos, f"model parameter {param.name} is declared twice")
                continue
            if param.default is None:
                self.report(param.pos, f"model parameter {param.name} needs a default value, such as "
                                       f"`{param.name} = 10`")
                self.model_params[param.name] = FAILED
                continue
            try:
                default = self.eval(param.default, Frame({}))
            except (EvalError, Skip) as error:
                if isinstance(error, EvalError):
                    self.report(error.pos, error.message)
                self.model_params[param.name] = FAILED
                continue
            value = default
            if param.name in self.overrides:
                value = self.convert_override(param, default, self.overrides.pop(param.name))
            self.model_params[param.name] = value
        for name in self.overrides:
            names = [p.name for p in header.params]
            self.report(header.pos, f"model {header.name} has no parameter '{name}'{_suggest(name, names)} "
                                    f"(parameters: {', '.join(names) or 'none'})")

    def convert_override(self, param: s.Param, default: Any, given: Any) -> Any:
        """A parameter set from outside. Text (from the command line) is read as a constant of the language."""
        from frontends.dsl.parser import parse_expression

        value = given
        if isinstance(given, str) and not isinstance(default, str):
            try:
                value = self.eval(parse_expression(given), Frame({}))
            except Exception:  # noqa: BLE001 - any failure to read it is the same mistake
                value = given
        if isinstance(value, list):
            value = tuple(value)
        fits = (
            (_is_int(default) and _is_int(value))
            or (isinstance(default, float) and _is_number(value))
            or (isinstance(default, bool) and isinstance(value, bool))
            or (isinstance(default, str) and isinstance(value, str))
            or (isinstance(default, tuple) and isinstance(value, tuple))
        )
        if not fits:
            kind = ("an int" if _is_int(default) else "a number" if isinstance(default, float) else
                    "true or false" if isinstance(default, bool) else "a string" if isinstance(default, str) else
                    "a list")
            self.report(param.pos, f"model parameter {param.name} is {kind} (default {_literal(default)}); "
                                   f"got {given!r}")
            return default
        return float(value) if isinstance(default, float) else value

    # ----- statements ------------------------------------------------------------------------------------------
    def exec_body(self, statements: Sequence[s.Statement], frame: Frame) -> None:
        for statement in statements:
            self.steps += 1
            if self.steps > MAX_STEPS:
                raise EvalError(statement.pos, f"evaluation ran more than {MAX_STEPS:,} statements; is a loop or "
                                               "a recursion running away?", fatal=True)
            reported = len(self.diagnostics)
            try:
                self.exec_statement(statement, frame)
                if isinstance(statement, (s.If, s.For)) and len(self.diagnostics) > reported:
                    self.mark_failed(statement, frame)  # a mistake in the body: what it binds is not to be trusted
            except Skip:
                self.mark_failed(statement, frame)
            except EvalError as error:
                self.report(error.pos, error.message)
                if error.fatal:
                    raise
                self.mark_failed(statement, frame)

    def mark_failed(self, statement: s.Statement, frame: Frame) -> None:
        if isinstance(statement, s.Return) and frame.owner is not None:
            raise ReturnSignal(FAILED)
        if isinstance(statement, (s.Assign, s.InputDecl, s.OutputDecl)):
            frame.variables[statement.name] = FAILED
        elif isinstance(statement, (s.If, s.For)):
            for name in s.assigned_names((statement,)):
                frame.variables[name] = FAILED

    def exec_statement(self, statement: s.Statement, frame: Frame) -> None:
        if isinstance(statement, (s.ModelDecl, s.BlockDef, s.SequenceDef)):
            return  # the header is bound before the run, blocks are collected before it
        if isinstance(statement, s.Assign):
            self.check_assignable(statement.name, statement.pos, frame)
            frame.variables[statement.name] = self.eval(statement.value, frame)
        elif isinstance(statement, s.InputDecl):
            self.exec_input(statement, frame)
        elif isinstance(statement, s.OutputDecl):
            self.exec_output(statement, frame)
        elif isinstance(statement, s.Return):
            if frame.owner is not None:  # at the top level it is reported before the run
                raise ReturnSignal(self.eval(statement.value, frame))
        elif isinstance(statement, s.Assert):
            test = self.eval(statement.test, frame)
            if not isinstance(test, bool):
                raise EvalError(s.expr_pos(statement.test), f"an assert needs true or false, got {_kind(test)}")
            if not test:
                message = "assertion failed"
                if statement.message is not None:
                    message = str(self.eval(statement.message, frame))
                raise EvalError(statement.pos, message)
        elif isinstance(statement, s.ExprStatement):
            raise EvalError(statement.pos, "this value is computed but never used: assign it to a name "
                                           "(`y = ...`) or make it an output (`output y = ...`)")
        elif isinstance(statement, s.If):
            for test_expr, body in statement.branches:
                test = self.eval(test_expr, frame)
                if not isinstance(test, bool):
                    raise EvalError(s.expr_pos(test_expr), f"a condition must be true or false, got {_kind(test)}")
                if test:
                    self.exec_body(body, frame)
                    return
            self.exec_body(statement.orelse, frame)
        elif isinstance(statement, s.For):
            self.exec_for(statement, frame)

    def check_assignable(self, name: str, pos: Pos, frame: Frame) -> None:
        if name in self.model_params and name not in frame.variables:
            raise EvalError(pos, f"{name} is a model parameter and cannot be assigned; choose another name, "
                                 f"or set the parameter from outside (`--param {name}=...`)")

    def exec_input(self, statement: s.InputDecl, frame: Frame) -> None:
        if statement.name in frame.variables or statement.name in self.model_params:
            raise EvalError(statement.pos, f"{statement.name} is already defined")
        dims = []
        for dim in statement.dims:
            value = self.eval(dim, frame)
            if not _is_int(value):
                raise EvalError(s.expr_pos(dim), f"an input dimension must be an int, got {_kind(value)}")
            dims.append(value)
        try:
            frame.variables[statement.name] = self.builder.input(statement.name, dims)
        except GraphError as error:
            raise EvalError(statement.pos, str(error)) from None

    def exec_output(self, statement: s.OutputDecl, frame: Frame) -> None:
        value = self.eval(statement.value, frame, final=statement.name)
        if not isinstance(value, Value):
            raise EvalError(s.expr_pos(statement.value), f"output {statement.name} must be a tensor, got "
                                                         f"{_kind(value)}")
        if value.name != statement.name:
            # The value was made elsewhere (in a block, or earlier): an identity gives the output its name.
            value = self.make_node(statement.pos, lambda name: value.identity(name=name), statement.name,
                                   statement.pos)
        self.outputs.append(value)
        frame.variables[statement.name] = value

    def exec_for(self, statement: s.For, frame: Frame) -> None:
        items = self.eval(statement.iterable, frame)
        if not isinstance(items, (tuple, range)):
            raise EvalError(s.expr_pos(statement.iterable), f"a loop runs over a list or a range, got {_kind(items)}")
        if len(items) > MAX_REPEAT:
            raise EvalError(s.expr_pos(statement.iterable), f"a loop may repeat at most {MAX_REPEAT} times; this "
                                                            f"one would repeat {len(items):,} times")
        for target in statement.targets:
            self.check_assignable(target, statement.pos, frame)
        for item in items:
            if len(statement.targets) == 1:
                frame.variables[statement.targets[0]] = item
            else:
                if not isinstance(item, tuple) or len(item) != len(statement.targets):
                    raise EvalError(statement.pos, f"cannot unpack {_kind(item)} into the "
                                                   f"{len(statement.targets)} names {', '.join(statement.targets)}")
                for target, value in zip(statement.targets, item, strict=True):
                    frame.variables[target] = value
            self.exec_body(statement.body, frame)

    # ----- expressions -----------------------------------------------------------------------------------------
    def eval(self, expr: s.Expr, frame: Frame, final: str | None = None) -> Any:
        """The value of an expression. `final` names the node that computes the result, if one is made here."""
        if isinstance(expr, s.Constant):
            return expr.value
        if isinstance(expr, s.Name):
            return self.lookup(expr, frame)
        if isinstance(expr, s.ListLiteral):
            return tuple(self.operand(self.eval(item, frame)) for item in expr.items)
        if isinstance(expr, s.Attribute):
            return self.attribute(self.operand(self.eval(expr.value, frame)), expr)
        if isinstance(expr, s.Index):
            return self.index(self.operand(self.eval(expr.value, frame)),
                              self.operand(self.eval(expr.index, frame)), expr)
        if isinstance(expr, s.Unary):
            return self.unary(expr, self.operand(self.eval(expr.operand, frame)))
        if isinstance(expr, s.Binary):
            return self.binary(expr, frame, final)
        if isinstance(expr, s.Conditional):
            test = self.operand(self.eval(expr.test, frame))
            if not isinstance(test, bool):
                raise EvalError(s.expr_pos(expr.test), f"a condition must be true or false, got {_kind(test)}")
            return self.eval(expr.body if test else expr.orelse, frame, final)
        if isinstance(expr, s.Call):
            return self.call(expr, frame, None, final)
        if isinstance(expr, s.Chain):
            value = self.operand(self.eval(expr.head, frame))
            for number, step in enumerate(expr.steps):
                value = self.call(step, frame, value, final if number == len(expr.steps) - 1 else None)
            return value
        raise AssertionError(f"unknown expression {expr!r}")

    @staticmethod
    def operand(value: Any) -> Any:
        if value is FAILED:
            raise Skip
        return value

    def lookup(self, name: s.Name, frame: Frame) -> Any:
        if name.id in frame.variables:
            return self.operand(frame.variables[name.id])
        if name.id in self.model_params:
            return self.operand(self.model_params[name.id])
        if name.id in SIGNATURES or name.id in self.blocks:
            what = "an op" if name.id in SIGNATURES else "a block"
            raise EvalError(name.pos, f"{name.id} is {what}, not a value: call it, as in `{name.id}(x, ...)` or "
                                      f"`x -> {name.id}`")
        visible = [*frame.variables, *self.model_params]
        hint = _suggest(name.id, visible)
        if frame.owner is not None and not hint:
            if frame.owner.startswith("sequence"):
                hint = f" ({frame.owner} sees the model parameters only; declare {name.id} in the model header)"
            else:
                hint = (f" ({frame.owner} sees its parameters, its own values and the model parameters; "
                        f"pass {name.id} as an argument)")
        raise EvalError(name.pos, f"undefined name '{name.id}'{hint}")

    def attribute(self, value: Any, expr: s.Attribute) -> Any:
        if not isinstance(value, Value):
            raise EvalError(expr.pos, f"{_kind(value)} has no attribute '{expr.name}' (only tensors have "
                                      f"{', '.join(TENSOR_ATTRIBUTES)})")
        if expr.name not in TENSOR_ATTRIBUTES:
            raise EvalError(expr.pos, f"a tensor has no attribute '{expr.name}'"
                                      f"{_suggest(expr.name, TENSOR_ATTRIBUTES)} (it has "
                                      f"{', '.join(TENSOR_ATTRIBUTES)})")
        shape = value.shape
        if expr.name == "shape":
            return tuple(shape[1:])
        if expr.name == "channels":
            return shape[1]
        if len(shape) != 4:
            raise EvalError(expr.pos, f"a tensor of shape {value.type} has no {expr.name} (it is N x features)")
        return shape[2] if expr.name == "height" else shape[3]

    def index(self, value: Any, index: Any, expr: s.Index) -> Any:
        if not isinstance(value, (tuple, range, str)):
            raise EvalError(expr.pos, f"cannot index {_kind(value)}")
        if not _is_int(index):
            raise EvalError(expr.pos, f"an index must be an int, got {_kind(index)}")
        if not -len(value) <= index < len(value):
            raise EvalError(expr.pos, f"index {index} is out of range for {_kind(value)}")
        return value[index]

    def unary(self, expr: s.Unary, value: Any) -> Any:
        if expr.op == "not":
            if not isinstance(value, bool):
                raise EvalError(expr.pos, f"`not` needs true or false, got {_kind(value)}")
            return not value
        if not _is_number(value):
            raise EvalError(expr.pos, f"unary '{expr.op}' needs a number, got {_kind(value)}")
        return -value if expr.op == "-" else value

    def binary(self, expr: s.Binary, frame: Frame, final: str | None) -> Any:
        op = expr.op
        if op in ("and", "or"):
            left = self.operand(self.eval(expr.left, frame))
            if not isinstance(left, bool):
                raise EvalError(expr.pos, f"`{op}` needs true or false on its left, got {_kind(left)}")
            if (op == "and" and not left) or (op == "or" and left):
                return left
            right = self.operand(self.eval(expr.right, frame))
            if not isinstance(right, bool):
                raise EvalError(expr.pos, f"`{op}` needs true or false on its right, got {_kind(right)}")
            return right
        left = self.operand(self.eval(expr.left, frame))
        right = self.operand(self.eval(expr.right, frame))
        if isinstance(left, Value) or isinstance(right, Value):
            return self.tensor_binary(expr, left, right, final)
        if op in ("==", "!="):
            return (left == right) == (op == "==")
        if op in ("<", "<=", ">", ">="):
            if not ((_is_number(left) and _is_number(right)) or (isinstance(left, str) and isinstance(right, str))):
                raise EvalError(expr.pos, f"cannot compare {_kind(left)} and {_kind(right)} with '{op}'")
            return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
        return self.arithmetic(expr, left, right)

    def arithmetic(self, expr: s.Binary, left: Any, right: Any) -> Any:
        op = expr.op
        if op == "+" and isinstance(left, tuple) and isinstance(right, tuple):
            if len(left) + len(right) > MAX_LIST:
                raise EvalError(expr.pos, f"lists are limited to {MAX_LIST:,} items")
            return left + right
        if op == "+" and isinstance(left, str) and isinstance(right, str):
            if len(left) + len(right) > MAX_LIST:
                raise EvalError(expr.pos, f"strings are limited to {MAX_LIST:,} characters")
            return left + right
        if op == "*" and isinstance(left, tuple) and _is_int(right):
            if len(left) * max(right, 0) > MAX_LIST:
                raise EvalError(expr.pos, f"lists are limited to {MAX_LIST:,} items")
            return left * right
        if not (_is_number(left) and _is_number(right)):
            raise EvalError(expr.pos, f"cannot apply '{op}' to {_kind(left)} and {_kind(right)}")
        if op in ("/", "//", "%") and right == 0:
            raise EvalError(expr.pos, f"division by zero in '{op}'")
        if op == "**" and (abs(right) > 64 or (right < 0 and left == 0)):
            raise EvalError(expr.pos, f"the exponent {right} is out of range")
        try:
            result = _ARITHMETIC[op](left, right)
        except OverflowError:
            raise EvalError(expr.pos, f"'{op}' overflows the range of numbers") from None
        if _is_int(result) and abs(result) > MAX_INT:
            raise EvalError(expr.pos, f"'{op}' gives an int beyond the 64-bit range (at most 2**63 - 1)")
        return result

    def tensor_binary(self, expr: s.Binary, left: Any, right: Any, final: str | None) -> Value:
        """`a + b` is a residual add and `a * b` a product (squeeze-and-excitation's gating); nothing else applies."""
        if expr.op not in ("+", "*") or not (isinstance(left, Value) and isinstance(right, Value)):
            raise EvalError(expr.pos, f"cannot apply '{expr.op}' to {_kind(left)} and {_kind(right)}; tensors "
                                      "support a + b (add) and a * b (multiply)")
        method = self.builder.add if expr.op == "+" else self.builder.mul
        base = "add" if expr.op == "+" else "mul"
        return self.make_node(expr.pos, lambda name: method(left, right, name=name), final, None, base)

    # ----- naming -----------------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return "".join(f"{scope}." for scope in self.path)

    def is_taken(self, local: str) -> bool:
        return local in self.taken.get(self.prefix, set()) or self.prefix + local in self.builder.graph

    def claim(self, local: str, pos: Pos) -> str:
        if self.is_taken(local):
            where = f"in block instance {'.'.join(self.path)}" if self.path else "at the top level"
            raise EvalError(pos, f"the name {local} is already used {where}")
        self.taken.setdefault(self.prefix, set()).add(local)
        return local

    def auto_name(self, base: str) -> str:
        """`conv1`, `conv2`, ... per scope; `stage1_1` where the base already ends in a digit (the builder's rule)."""
        key = (self.prefix, base)
        while True:
            self.counters[key] = self.counters.get(key, 0) + 1
            local = numbered(base, self.counters[key])
            if not self.is_taken(local):
                return local

    def label_text(self, label: s.Label, frame: Frame) -> str:
        pieces = []
        for part in label.parts:
            if isinstance(part, str):
                pieces.append(part)
                continue
            value = self.operand(self.eval(part, frame))
            if not (_is_int(value) or isinstance(value, str)):
                raise EvalError(s.expr_pos(part), f"a name template takes ints and strings, got {_kind(value)}")
            pieces.append(str(value))
        text = "".join(pieces)
        if not NODE_NAME.fullmatch(text):
            raise EvalError(label.pos, f"a node or block instance name is letters, digits and '_', got '{text}'")
        return text

    def make_node(self, pos: Pos, build, name: str | None, name_pos: Pos | None, base: str = "") -> Value:
        """Make one node through the builder: `build(node_name)` calls it. Builder errors (shapes that do not
        fit, attributes out of range) are reported here, at the line that asked for the node."""
        local = self.claim(name, name_pos or pos) if name else self.auto_name(base)
        if len(self.builder.graph) >= MAX_NODES:
            raise EvalError(pos, f"the model has more than {MAX_NODES:,} nodes; is a loop or a recursion "
                                 "running away?", fatal=True)
        try:
            return build(local)
        except GraphError as error:
            raise EvalError(pos, str(error)) from None

    # ----- calls -----------------------------------------------------------------------------------------------
    def call(self, call: s.Call, frame: Frame, chained: Value | None, final: str | None) -> Any:
        if call.name in self.blocks:
            definition = self.blocks[call.name]
            if isinstance(definition, s.SequenceDef):
                return self.call_sequence(definition, call, frame, chained, final)
            return self.call_block(definition, call, frame, chained)
        if call.name in SIGNATURES:
            return self.call_op(SIGNATURES[call.name], call, frame, chained, final)
        if call.name in FUNCTIONS and not call.chained:
            return self.call_function(call, frame)
        self.check_call(call)
        raise Skip

    def bind(self, callee: str, names: Sequence[str], variadic: str | None, call: s.Call,
             chained: Value | None) -> tuple[dict[str, Any], list[Any]]:
        """Match arguments to parameters: {name: Argument or the chained value}, and the variadic rest.
        A variadic first parameter (concat's tensors) takes every positional argument."""
        positional: list[Any] = ([chained] if call.chained else []) + [a for a in call.args if a.keyword is None]
        fixed = [n for n in names if n != variadic]
        bound: dict[str, Any] = {}
        rest: list[Any] = []
        if variadic is not None and names[0] == variadic:
            rest = positional
        else:
            for number, argument in enumerate(positional):
                if number < len(fixed):
                    bound[fixed[number]] = argument
                elif variadic is not None:
                    rest.append(argument)
                else:
                    chain = 1 if call.chained else 0
                    takes, given = len(fixed) - chain, len(positional) - chain
                    after = " after the chained value" if call.chained else ""
                    raise EvalError(self.source_pos(argument, call), f"{callee} takes {takes} positional "
                                                                     f"argument{'s' if takes != 1 else ''}{after}, "
                                                                     f"got {given}")
        for argument in call.args:
            if argument.keyword is None:
                continue
            if argument.keyword not in fixed:
                raise EvalError(argument.pos, self.unknown_keyword(callee, argument.keyword, names))
            if argument.keyword in bound:
                how = "the chained value" if call.chained and bound[argument.keyword] is chained else "position"
                raise EvalError(argument.pos, f"{callee}: argument '{argument.keyword}' is given twice (by {how} "
                                              "and by name)")
            bound[argument.keyword] = argument
        return bound, rest

    def argument_value(self, source: Any, frame: Frame, parameter: Parameter | None = None,
                       callee: str = "") -> Any:
        """The value of a bound argument; bare words the parameter accepts (`padding=same`) are strings."""
        if not isinstance(source, s.Argument):
            return source  # the chained value
        expr = source.value
        words = symbols(parameter) if parameter is not None else ()
        if words and isinstance(expr, s.Name) and expr.id not in frame.variables and expr.id not in self.model_params:
            if expr.id in words:
                return expr.id
            raise EvalError(expr.pos, f"{callee}: argument '{parameter.name}' takes {', '.join(words[:-1])} or "
                                      f"{words[-1]}{' (or a value)' if parameter.attr.kind == 'pads' else ''}, "
                                      f"not '{expr.id}'{_suggest(expr.id, words)}")
        return self.operand(self.eval(expr, frame))

    @staticmethod
    def source_pos(source: Any, call: s.Call) -> Pos:
        return source.pos if isinstance(source, s.Argument) else call.pos

    def call_op(self, signature: OpSignature, call: s.Call, frame: Frame, chained: Value | None,
                final: str | None) -> Value:
        names = [p.name for p in signature.parameters]
        variadic = next((p.name for p in signature.parameters if p.kind == "tensors"), None)
        bound, rest = self.bind(call.name, names, variadic, call, chained)
        operands: list[Value] = []  # the receiver of a Value method, or a Builder method's tensors
        attrs: dict[str, Any] = {}
        weight = None
        for parameter in signature.parameters:
            if parameter.kind == "tensors":
                tensors = [tensor for source in rest for tensor in self.tensors_argument(parameter, source, call,
                                                                                         frame)]
                if not tensors:
                    raise EvalError(call.pos, f"{call.name} needs at least one tensor: {signature.describe()}")
                operands.extend(tensors)
                continue
            if parameter.name not in bound:
                if parameter.required:
                    raise EvalError(call.pos, f"{call.name} needs argument '{parameter.name}': "
                                              f"{signature.describe()}")
                continue
            source = bound[parameter.name]
            if parameter.kind == "tensor":
                value = self.tensor_argument(parameter, source, call, frame)
                if signature.on_builder or parameter is signature.parameters[0]:
                    operands.append(value)
                else:
                    attrs[parameter.name] = value  # a second operand the method takes by name (residual=)
            elif parameter.kind == "weight":
                weight = (self.weight_argument(self.argument_value(source, frame), source, call), source)
            else:
                value = self.argument_value(source, frame, parameter, call.name)
                if isinstance(value, Value):
                    raise EvalError(self.source_pos(source, call), f"{call.name}: argument '{parameter.name}' "
                                                                   f"takes a value, not {_kind(value)}")
                try:
                    parameter.attr.normalize(value)
                except OpError as error:
                    raise EvalError(self.source_pos(source, call), f"{call.name}: argument '{parameter.name}': "
                                                                   f"{error}") from None
                attrs[parameter.name] = value

        def build(name: str) -> Value:
            if signature.on_builder:
                return signature.method(self.builder, *operands, **attrs, name=name)
            return signature.method(operands[0], **attrs, name=name)

        name = self.label_text(call.label, frame) if call.label is not None else final
        node = self.make_node(call.pos, build, name, call.label.pos if call.label else None, call.name)
        if weight is not None:
            self.fix_weight(node, *weight, call)
        return node

    def tensor_argument(self, parameter: Parameter, source: Any, call: s.Call, frame: Frame) -> Value:
        value = self.argument_value(source, frame)
        if not isinstance(value, Value):
            raise EvalError(self.source_pos(source, call), f"{call.name}: argument '{parameter.name}' must be a "
                                                           f"tensor, got {_kind(value)}")
        return value

    def tensors_argument(self, parameter: Parameter, source: Any, call: s.Call, frame: Frame) -> list[Value]:
        """A variadic parameter's argument: a tensor, or a list of tensors (DenseNet's growing `concat(features)`)."""
        value = self.argument_value(source, frame)
        if isinstance(value, tuple) and all(isinstance(item, Value) for item in value):
            return list(value)
        if not isinstance(value, Value):
            raise EvalError(self.source_pos(source, call), f"{call.name}: argument '{parameter.name}' must be a "
                                                           f"tensor or a list of tensors, got {_kind(value)}")
        return [value]

    def weight_argument(self, value: Any, source: Any, call: s.Call) -> np.ndarray:
        try:
            with np.errstate(over="ignore"):
                array = np.asarray(value, dtype=np.float32)
        except (ValueError, TypeError):
            raise EvalError(self.source_pos(source, call), f"{call.name}: a weight is a number or a rectangular "
                                                           "list of numbers") from None
        if not np.isfinite(array).all():
            raise EvalError(self.source_pos(source, call), f"{call.name}: a weight must be finite in float32")
        return array

    def fix_weight(self, node: Value, array: np.ndarray, source: Any, call: s.Call) -> None:
        """Set a node's weight from given values, broadcast to its shape (a 3x3 kernel for every channel)."""
        graph = self.builder.graph
        graph_node = graph.node(node.name)
        spec = get_op(graph_node.op).params(graph_node.attrs, [graph.node(i).type for i in graph_node.inputs])
        shape = spec["weight"].shape
        try:
            weight = np.broadcast_to(array, shape)
        except ValueError:
            given = "x".join(map(str, array.shape)) or "a number"
            raise EvalError(self.source_pos(source, call), f"{call.name}: a weight of shape {given} does not "
                                                           f"broadcast to the weight's {'x'.join(map(str, shape))}") \
                from None
        graph.set_node_params(node.name, {"weight": weight})

    def call_function(self, call: s.Call, frame: Frame) -> Any:
        if call.label is not None:
            raise EvalError(call.label.pos, f"{call.name} makes no node, so `as` cannot name one")
        for argument in call.args:
            if argument.keyword is not None:
                raise EvalError(argument.pos, f"{call.name} takes no keyword arguments")
        values = [self.operand(self.eval(a.value, frame)) for a in call.args]
        if call.name == "range":
            if not 1 <= len(values) <= 3 or not all(_is_int(v) for v in values):
                raise EvalError(call.pos, "range takes one to three ints: range(stop), range(start, stop) or "
                                          "range(start, stop, step)")
            if len(values) == 3 and values[2] == 0:
                raise EvalError(call.args[2].pos, "range's step must not be zero")
            return range(*values)
        if call.name == "len":
            if len(values) != 1 or not isinstance(values[0], (tuple, range, str)):
                raise EvalError(call.pos, "len takes one list, range or string")
            return len(values[0])
        if call.name == "int":
            if len(values) != 1 or not _is_number(values[0]):
                raise EvalError(call.pos, "int takes one number (and rounds it toward zero)")
            if not math.isfinite(values[0]) or abs(values[0]) > MAX_INT:
                raise EvalError(call.pos, f"int of {values[0]}: not a finite number within the 64-bit range of ints")
            return int(values[0])
        items = values[0] if len(values) == 1 and isinstance(values[0], (tuple, range)) else values
        if not items or not all(_is_number(v) for v in items):
            raise EvalError(call.pos, f"{call.name} takes numbers, or one list of numbers")
        return min(items) if call.name == "min" else max(items)

    @contextmanager
    def instance(self, what: str, call: s.Call, frame: Frame) -> Iterator[None]:
        """A block instance: a builder scope named by `as` or after the block, counted per scope."""
        if len(self.calls) >= MAX_BLOCK_DEPTH:
            chain = " -> ".join(what.split()[-1] for what, _, _ in self.calls[-4:])
            raise EvalError(call.pos, f"blocks nest more than {MAX_BLOCK_DEPTH} deep ({chain} -> {call.name} ...); "
                                      "does a block call itself without end?")
        if call.label is not None:
            name = self.claim(self.label_text(call.label, frame), call.label.pos)
        else:
            name = self.claim(self.auto_name(call.name), call.pos)
        self.path.append(name)
        self.calls.append((what, "instance " + ".".join(self.path), call.pos))
        try:
            with self.builder.scope(name):
                yield
        finally:
            self.path.pop()
            self.calls.pop()

    def call_block(self, definition: s.BlockDef, call: s.Call, frame: Frame, chained: Value | None) -> Any:
        names = [p.name for p in definition.params]
        bound, _ = self.bind(call.name, names, None, call, chained)
        variables: dict[str, Any] = {}
        for param in definition.params:
            if param.name in bound:
                variables[param.name] = self.argument_value(bound[param.name], frame)
            elif param.default is not None:  # a default may use the parameters before it
                variables[param.name] = self.operand(self.eval(param.default, Frame(dict(variables),
                                                                                    f"block {definition.name}")))
            else:
                raise EvalError(call.pos, f"{call.name} needs argument '{param.name}': block {definition.name}"
                                          f"({', '.join(p.name for p in definition.params)})")
        reported = len(self.diagnostics)
        with self.instance(f"block {definition.name}", call, frame):
            try:
                self.exec_body(definition.body, Frame(variables, f"block {definition.name}"))
            except ReturnSignal as signal:
                return self.operand(signal.value)
            if len(self.diagnostics) == reported:
                raise EvalError(definition.pos, f"block {definition.name} reached its end without a `return`")
        raise Skip

    # ----- the VGG table's sequential form ---------------------------------------------------------------------
    def call_sequence(self, definition: s.SequenceDef, call: s.Call, frame: Frame, chained: Value | None,
                      final: str | None) -> Value:
        """A sequence applies its layers in order to one tensor. Unnamed, its layers join the current scope
        (the table's names, `conv1_1`, `pool1`, `fc6`, run on across sequences); `as NAME` makes it an instance."""
        bound, _ = self.bind(call.name, ["x"], None, call, chained)
        if "x" not in bound:
            raise EvalError(call.pos, f"sequence {call.name} takes one tensor: `x -> {call.name}`")
        value = self.argument_value(bound["x"], frame)
        if not isinstance(value, Value):
            raise EvalError(self.source_pos(bound["x"], call), f"sequence {call.name} runs on a tensor, got "
                                                               f"{_kind(value)}")
        if call.label is None:
            if len(self.calls) >= MAX_BLOCK_DEPTH:
                raise EvalError(call.pos, f"sequences nest more than {MAX_BLOCK_DEPTH} deep; does sequence "
                                          f"{call.name} use itself?")
            scope = "instance " + ".".join(self.path) if self.path else "the top level"
            self.calls.append((f"sequence {definition.name}", scope, call.pos))
            try:
                return self.run_layers(definition, value, final)
            finally:
                self.calls.pop()
        with self.instance(f"sequence {definition.name}", call, frame):
            return self.run_layers(definition, value, None)

    def run_layers(self, definition: s.SequenceDef, value: Value, final: str | None) -> Value:
        frame = Frame({}, f"sequence {definition.name}")
        layers = definition.layers
        counters = self.table.setdefault(self.prefix, [1, 0])  # [group, index within the group]
        for number, layer in enumerate(layers):
            last = number == len(layers) - 1
            name = final if last else None
            if isinstance(layer, s.Call):
                value = self.call(layer, frame, value, name)
                if not isinstance(value, Value):
                    raise EvalError(layer.pos, f"{layer.name} returned {_kind(value)}, not a tensor")
                continue
            before_softmax = not last and isinstance(layers[number + 1], s.TableLayer) and \
                layers[number + 1].kind == "softmax"
            value = self.table_layer(layer, value, counters, frame, name, hidden=not before_softmax)
        return value

    def table_layer(self, layer: s.TableLayer, x: Value, counters: list[int], frame: Frame, final: str | None,
                    hidden: bool) -> Value:
        """One layer in the paper's notation. Hidden conv and FC layers are followed by ReLU, as in the VGG
        paper; the layer before soft-max is the classifier and is not. Convolutions are 3x3 (or 1x1) with
        stride 1 and same padding; maxpool is 2x2 with stride 2."""
        group, _ = counters

        def node(build, local: str, is_last: bool) -> Value:
            return self.make_node(layer.pos, build, final if is_last and final else local, None)

        if layer.kind in ("conv", "fc"):
            size = self.operand(self.eval(layer.size, frame))
            if not _is_int(size) or size <= 0:
                raise EvalError(layer.size.pos, f"a layer's size must be a positive int, got {_kind(size)}")
            if layer.kind == "conv":
                counters[1] += 1
                suffix = f"{group}_{counters[1]}"
                y = node(lambda n: x.conv(size, layer.kernel, padding="same", name=n), f"conv{suffix}", not hidden)
            else:
                if len(x.shape) == 4:
                    x = self.make_node(layer.pos, lambda n: x.flatten(name=n), None, None, "flatten")
                suffix = str(group)
                y = node(lambda n: x.dense(size, name=n), f"fc{suffix}", not hidden)
                counters[0], counters[1] = group + 1, 0
            if hidden:
                y = node(lambda n: y.relu(name=n), f"relu{suffix}", True)
            return y
        if layer.kind == "maxpool":
            counters[0], counters[1] = group + 1, 0
            return node(lambda n: x.max_pool(2, stride=2, name=n), f"pool{group}", True)
        if layer.kind == "lrn":
            return node(lambda n: x.lrn(name=n), f"norm{group}", True)
        return node(lambda n: x.softmax(name=n), "prob", True)


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return str(value)


# ----- walking the syntax tree --------------------------------------------------------------------------------
def _walk(statements: Sequence[s.Statement]) -> Iterator[s.Statement]:
    for statement in statements:
        yield statement
        if isinstance(statement, s.If):
            for _, body in statement.branches:
                yield from _walk(body)
            yield from _walk(statement.orelse)
        elif isinstance(statement, s.For):
            yield from _walk(statement.body)


def _expressions(statement: s.Statement) -> list[s.Expr]:
    """The expressions a statement holds directly (not those of nested bodies)."""
    if isinstance(statement, (s.Assign, s.OutputDecl, s.Return, s.ExprStatement)):
        return [statement.value]
    if isinstance(statement, s.InputDecl):
        return list(statement.dims)
    if isinstance(statement, s.Assert):
        return [statement.test] + ([statement.message] if statement.message is not None else [])
    if isinstance(statement, s.If):
        return [test for test, _ in statement.branches]
    if isinstance(statement, s.For):
        return [statement.iterable]
    if isinstance(statement, (s.ModelDecl, s.BlockDef)):
        return [p.default for p in statement.params if p.default is not None]
    return []


def _calls(expr: Any) -> Iterator[s.Call]:
    """Every call inside an expression."""
    if isinstance(expr, s.Call):
        yield expr
        for argument in expr.args:
            yield from _calls(argument.value)
        if expr.label is not None:
            for part in expr.label.parts:
                yield from _calls(part)
    elif isinstance(expr, s.Chain):
        yield from _calls(expr.head)
        for step in expr.steps:
            yield from _calls(step)
    elif hasattr(expr, "__dataclass_fields__") and not isinstance(expr, (s.Constant, s.Name)):
        for field in expr.__dataclass_fields__:
            value = getattr(expr, field)
            if isinstance(value, tuple):
                for item in value:
                    yield from _calls(item)
            elif hasattr(value, "__dataclass_fields__"):
                yield from _calls(value)
