"""From `.cnn` text to the syntax tree, with every syntax error found in one pass.

Lark's LALR parser reads the grammar in `grammar.lark`; a small post-lexer turns indentation into INDENT and
DEDENT tokens (ignored inside brackets, as in Python). Recovery is by statement: after an error the statement
holding it (with the body of a block header) is blanked out and the text parsed again, so each broken statement
is reported once and the rest of the file is still checked.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError
from lark.lark import PostLex

from frontends.dsl import syntax as s
from frontends.dsl.errors import Diagnostic, DslError, Pos

GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_SYNTAX_ERRORS = 20
TAB = 8
OPENERS = {"(": ")", "[": "]"}
CLOSERS = {")": "(", "]": "["}


class IndentationMismatch(Exception):
    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


def _indent_width(text: str) -> int:
    return len(text.expandtabs(TAB))


class Indentation(PostLex):
    """Emits _INDENT/_DEDENT after each newline whose next line is indented more/less; none inside brackets."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        levels = [0]
        depth = 0
        last = None
        for token in stream:
            last = token
            if token.type == "_NL":
                if depth:
                    continue
                yield token
                indent = token.value.rsplit("\n", 1)[-1]
                width = _indent_width(indent)
                here = Pos(token.end_line, len(indent) + 1)
                if width > levels[-1]:
                    levels.append(width)
                    yield _token_at("_INDENT", indent, token, here)
                    continue
                enclosing = list(levels)
                while width < levels[-1]:
                    levels.pop()
                    yield _token_at("_DEDENT", indent, token, here)
                if width != levels[-1]:
                    expected = " or ".join(str(w) for w in enclosing)
                    raise IndentationMismatch(here, f"this line is indented {width} columns, which matches no "
                                                  f"enclosing block (expected {expected})")
                continue
            yield token
            if token.type in ("_LPAR", "_LSQB"):
                depth += 1
            elif token.type in ("_RPAR", "_RSQB"):
                depth = max(0, depth - 1)
        while len(levels) > 1:
            levels.pop()
            yield Token("_DEDENT", "", 0, last.end_line if last else 1, 1)


def _token_at(kind: str, value: str, like: Token, pos: Pos) -> Token:
    return Token(kind, value, like.end_pos, pos.line, pos.col, pos.line, pos.col, like.end_pos)


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="contextual", postlex=Indentation(),
                propagate_positions=True, maybe_placeholders=True, start=["start", "expr"])


# ----- tokens and trees to the syntax tree ------------------------------------------------------------------
def _pos(token: Token) -> Pos:
    return Pos(token.line, token.column, max(1, len(token.value)))


def _meta_pos(meta) -> Pos:
    return Pos(meta.line, meta.column, max(1, meta.end_column - meta.column if meta.line == meta.end_line else 1))


def _present(children: list) -> list:
    return [c for c in children if c is not None]


class _TemplateError(Exception):
    def __init__(self, diagnostic_pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = diagnostic_pos
        self.message = message


MAX_INT = 2**63 - 1


def _int(text: str, pos: Pos) -> int:
    """An int literal; one beyond 64 bits is refused (past 4,300 digits Python would not even read it)."""
    if len(text.lstrip("0")) > len(str(MAX_INT)) or int(text) > MAX_INT:
        raise _TemplateError(pos, f"the int {text[:20]}{'...' if len(text) > 20 else ''} is beyond the 64-bit range")
    return int(text)


class ToSyntax(Transformer):
    """Lark's parse tree to `syntax` nodes."""

    def __init__(self, filename: str) -> None:
        super().__init__()
        self.filename = filename

    # ----- atoms
    def int(self, children: list) -> s.Constant:
        return s.Constant(_int(children[0], _pos(children[0])), _pos(children[0]))

    def float(self, children: list) -> s.Constant:
        value = float(children[0])
        if not math.isfinite(value):
            raise _TemplateError(_pos(children[0]), f"the number {children[0][:20]} is beyond the range of floats")
        return s.Constant(value, _pos(children[0]))

    def string(self, children: list) -> s.Constant:
        return s.Constant(children[0][1:-1], _pos(children[0]))

    def true(self, children: list) -> s.Constant:
        return s.Constant(True, _pos(children[0]))

    def false(self, children: list) -> s.Constant:
        return s.Constant(False, _pos(children[0]))

    def name(self, children: list) -> s.Name:
        return s.Name(str(children[0]), _pos(children[0]))

    @v_args(meta=True)
    def list(self, meta, children: list) -> s.ListLiteral:
        return s.ListLiteral(tuple(_present(children)), _meta_pos(meta))

    tuple = list

    # ----- operators
    def attribute(self, children: list) -> s.Attribute:
        value, name = children
        return s.Attribute(value, str(name), _pos(name))

    def index(self, children: list) -> s.Index:
        value, index = children
        return s.Index(value, index, s.expr_pos(index))

    def unary(self, children: list) -> s.Unary:
        op, operand = children
        return s.Unary(str(op), operand, _pos(op))

    def _fold(self, children: list) -> s.Expr:
        result = children[0]
        for op, right in zip(children[1::2], children[2::2], strict=True):
            result = s.Binary(str(op), result, right, _pos(op))
        return result

    sum = product = binary = or_expr = and_expr = _fold

    def comparison(self, children: list) -> s.Expr:
        # a < b < c means a < b and b < c, as in Python
        pairs = [s.Binary(str(op), left, right, _pos(op))
                 for left, op, right in zip(children[0::2], children[1::2], children[2::2], strict=False)]
        result = pairs[0]
        for pair in pairs[1:]:
            result = s.Binary("and", result, pair, pair.pos)
        return result

    def conditional(self, children: list) -> s.Conditional:
        body, test, orelse = children
        return s.Conditional(test, body, orelse, s.expr_pos(test))

    # ----- calls and chains
    def keyword(self, children: list) -> s.Argument:
        name, value = children
        return s.Argument(str(name), value, _pos(name))

    def arguments(self, children: list) -> tuple[s.Argument, ...]:
        return tuple(c if isinstance(c, s.Argument) else s.Argument(None, c, s.expr_pos(c)) for c in _present(children))

    def label(self, children: list) -> s.Label:
        token = children[0]
        if token.type == "STRING":
            return s.Label(self._template(token), _pos(token))
        return s.Label((str(token),), _pos(token))

    def _template(self, token: Token) -> tuple[str | s.Expr, ...]:
        """`"layer{i + 1}"`: literal text and the expressions in braces, each parsed as an expression."""
        text = token.value[1:-1]
        parts: list[str | s.Expr] = []
        cursor = 0
        for match in re.finditer(r"\{([^{}]*)\}", text):
            parts.append(text[cursor: match.start()])
            column = token.column + 1 + match.start(1)  # token.column is the opening quote's
            try:
                tree = _parser().parse(match[1], start="expr")
            except UnexpectedInput:
                raise _TemplateError(Pos(token.line, column, max(1, len(match[1]))),
                                     f"cannot read {match[1]!r} as an expression in the name template") from None
            parts.append(_shift(ToSyntax(self.filename).transform(tree), token.line, column - 1))
            cursor = match.end()
        parts.append(text[cursor:])
        if any(isinstance(p, str) and ("{" in p or "}" in p) for p in parts):
            raise _TemplateError(_pos(token), "a name template has an unmatched brace")
        return tuple(p for p in parts if p != "")

    def call(self, children: list) -> s.Call:
        name, arguments, label = children
        return s.Call(str(name), arguments or (), label, _pos(name))

    def step(self, children: list) -> s.Call:
        name, arguments, label = children
        return s.Call(str(name), arguments or (), label, _pos(name), chained=True)

    def chain(self, children: list) -> s.Chain:
        return s.Chain(children[0], tuple(c for c in children[1:] if isinstance(c, s.Call)))

    # ----- the VGG table's layers
    def TABLE_CONV(self, token: Token) -> s.TableLayer:
        match = re.fullmatch(r"conv(\d+)-(\w+)", token.value)
        kernel = _int(match[1], _pos(token))
        return s.TableLayer("conv", kernel, self._table_size(token, match[2], match.start(2)), _pos(token))

    def TABLE_FC(self, token: Token) -> s.TableLayer:
        match = re.fullmatch(r"FC-(\w+)", token.value)
        return s.TableLayer("fc", None, self._table_size(token, match[1], match.start(1)), _pos(token))

    def _table_size(self, token: Token, text: str, offset: int) -> s.Expr:
        pos = Pos(token.line, token.column + offset, len(text))
        return s.Constant(_int(text, pos), pos) if text.isdigit() else s.Name(text, pos)

    def MAXPOOL(self, token: Token) -> s.TableLayer:
        return s.TableLayer("maxpool", None, None, _pos(token))

    def LRN(self, token: Token) -> s.TableLayer:
        return s.TableLayer("lrn", None, None, _pos(token))

    def SOFTMAX(self, token: Token) -> s.TableLayer:
        return s.TableLayer("softmax", None, None, _pos(token))

    def layer_line(self, children: list) -> list:
        return children

    # ----- statements
    def param(self, children: list) -> s.Param:
        name, default = children
        return s.Param(str(name), default, _pos(name))

    def model_decl(self, children: list) -> s.ModelDecl:
        name, *params = _present(children)
        strict = bool(params) and isinstance(params[-1], Token) and params[-1].type == "STRICT"
        return s.ModelDecl(str(name), tuple(params[:-1] if strict else params), _pos(name), strict)

    def shape(self, children: list) -> tuple[s.Expr, ...]:
        if len(children) == 1 and isinstance(children[0], Token) and children[0].type == "SHAPE":
            token = children[0]
            dims, column = [], token.column
            for text in token.value.split("x"):
                dims.append(s.Constant(_int(text, Pos(token.line, column, len(text))), Pos(token.line, column,
                                                                                          len(text))))
                column += len(text) + 1
            return tuple(dims)
        dims = []
        for child in children:
            if isinstance(child, Token) and child.type == "SHAPE_X":
                continue
            if isinstance(child, Token):
                dims.append(s.Constant(_int(child, _pos(child)), _pos(child)) if child.type == "INT"
                            else s.Name(str(child), _pos(child)))
            else:
                dims.append(child)
        return tuple(dims)

    def input_decl(self, children: list) -> s.InputDecl:
        name, dims = children
        return s.InputDecl(str(name), dims, _pos(name))

    def output_decl(self, children: list) -> s.OutputDecl:
        name, value = children
        return s.OutputDecl(str(name), value, _pos(name))

    def assign(self, children: list) -> s.Assign:
        name, value = children
        return s.Assign(str(name), value, _pos(name))

    @v_args(meta=True)
    def return_statement(self, meta, children: list) -> s.Return:
        return s.Return(children[0], Pos(meta.line, meta.column, len("return")))

    @v_args(meta=True)
    def assert_statement(self, meta, children: list) -> s.Assert:
        test, message = children
        return s.Assert(test, message, Pos(meta.line, meta.column, len("assert")))

    def expr_statement(self, children: list) -> s.ExprStatement:
        return s.ExprStatement(children[0], s.expr_pos(children[0]))

    def suite(self, children: list) -> tuple:
        return tuple(children)

    def block_def(self, children: list) -> s.BlockDef:
        name, *rest = _present(children)
        return s.BlockDef(str(name), tuple(rest[:-1]), rest[-1], _pos(name))

    def sequence_def(self, children: list) -> s.SequenceDef:
        name, *lines = children
        return s.SequenceDef(str(name), tuple(layer for line in lines for layer in line), _pos(name))

    @v_args(meta=True)
    def if_statement(self, meta, children: list) -> s.If:
        test, body, *elifs, orelse = children
        return s.If(((test, body), *(tuple(clause) for clause in elifs)), orelse or (), Pos(meta.line, meta.column, 2))

    def elif_clause(self, children: list) -> list:
        return children

    @v_args(meta=True)
    def for_statement(self, meta, children: list) -> s.For:
        *targets, iterable, body = children
        return s.For(tuple(str(t) for t in targets), iterable, body, Pos(meta.line, meta.column, 3))

    def start(self, children: list) -> tuple:
        return tuple(children)


def _shift(expr: s.Expr, line: int, columns: int):
    """An expression parsed on its own, moved to where it sits in the file (inside a name template)."""
    if isinstance(expr, tuple):
        return tuple(_shift(e, line, columns) for e in expr)
    if not hasattr(expr, "__dataclass_fields__"):
        return expr
    changes = {}
    for field in expr.__dataclass_fields__:
        value = getattr(expr, field)
        if isinstance(value, Pos):
            changes[field] = Pos(line, value.col + columns, value.length)
        elif isinstance(value, tuple) or hasattr(value, "__dataclass_fields__"):
            changes[field] = _shift(value, line, columns)
    return type(expr)(**{**{f: getattr(expr, f) for f in expr.__dataclass_fields__}, **changes})


# ----- syntax errors ----------------------------------------------------------------------------------------
EXPRESSION_STARTS = {"NAME", "INT", "FLOAT", "STRING", "_LPAR", "_LSQB", "TRUE", "FALSE", "NOT", "ADD"}
OPERATORS = {"COMPARE", "ADD", "MUL", "POW", "ARROW", "OR", "AND", "IF", "DOT", "_LSQB", "AS"}
DESCRIPTIONS = {
    "NAME": "a name", "INT": "a number", "FLOAT": "a number", "STRING": "a string", "SHAPE": "a shape",
    "_NL": "end of line", "$END": "end of file", "_INDENT": "an indented body", "_DEDENT": "end of the indented body",
    "TABLE_CONV": "a layer such as conv3-64", "TABLE_FC": "a layer such as FC-4096", "COMPARE": "a comparison",
    "ADD": "'+' or '-'", "MUL": "'*', '/', '//' or '%'",
}


def _describe_expected(name: str) -> str:
    if name in DESCRIPTIONS:
        return DESCRIPTIONS[name]
    pattern = _parser().get_terminal(name).pattern
    return f"'{pattern.value}'"


def _describe_token(token: Token) -> str:
    if token.type == "$END":
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    if token.type == "_INDENT":
        return "indentation"
    if token.type == "_DEDENT":
        return "end of the indented body"
    if token.type in ("NAME", "SHAPE_X"):
        return f"name '{token.value}'"
    if token.type in ("INT", "FLOAT"):
        return f"number {token.value}"
    if token.type == "STRING":
        return f"string {token.value}"
    return f"'{token.value}'"


def _expected(names: set[str]) -> str:
    names = {n for n in names if not n.startswith("__")}
    parts = []
    if len(names & EXPRESSION_STARTS) >= 3:
        parts.append("an expression")
        names -= EXPRESSION_STARTS
    if len(names & OPERATORS) >= 3:
        parts.append("an operator")
        names -= OPERATORS
    parts += sorted({_describe_expected(n) for n in names})
    if not parts or len(parts) > 4:
        return ""
    return "; expected " + (parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " or " + parts[-1])


def _syntax_diagnostic(filename: str, error: Exception, lines: list[str]) -> Diagnostic:
    if isinstance(error, IndentationMismatch):
        return Diagnostic(filename, error.pos, error.message)
    if isinstance(error, _TemplateError):
        return Diagnostic(filename, error.pos, error.message)
    if isinstance(error, UnexpectedCharacters):
        pos = Pos(error.line, error.column)
        if error.char == '"':
            return Diagnostic(filename, pos, "unterminated string: a string ends with '\"' on the same line")
        return Diagnostic(filename, pos, f"unexpected character {error.char!r}")
    assert isinstance(error, UnexpectedToken)
    token = error.token
    source_line = lines[token.line - 1] if 0 < token.line <= len(lines) else ""
    if error.state is not None:  # what the parser accepts here (a lexer's view adds the always-welcome newline)
        error.expected = {name for name in error.state.parse_conf.parse_table.states[error.state.position]
                          if name.isupper() or name.startswith("_")}
    if token.type == "_INDENT":
        return Diagnostic(filename, Pos(token.line, token.column), "unexpected indentation")
    if token.type == "$END":
        return Diagnostic(filename, Pos(max(1, error.line), max(1, error.column)),
                          f"unexpected end of file{_expected(error.expected)}")
    message = f"unexpected {_describe_token(token)}{_expected(error.expected)}"
    if token.type in ("ADD", "MUL", "POW", "COMPARE", "OR", "AND") and "->" in source_line[: token.column - 1]:
        message += f"; a chain ends its expression: write (x -> step) {token.value} y"
    return Diagnostic(filename, _pos(token) if token.type not in ("_NL", "_DEDENT") else Pos(token.line, token.column),
                      message)


# ----- recovery: statements as line spans -------------------------------------------------------------------
def _statement_spans(lines: list[str], filename: str) -> tuple[list[tuple[int, int]], list[Diagnostic]]:
    """The statements of the file as (first, last) line indices, brackets joining lines, and the brackets that do
    not match. A statement cannot run on into a line indented no deeper than its own first line (unless that line
    starts by closing a bracket): that is where a forgotten ')' is reported."""
    spans: list[tuple[int, int]] = []
    errors: list[Diagnostic] = []
    stack: list[tuple[str, Pos]] = []
    first = None
    first_indent = 0
    for number, line in enumerate(lines):
        stripped = line.strip()
        if first is not None and stack and stripped and not stripped.startswith("#"):
            indent = _indent_width(line[: len(line) - len(line.lstrip())])
            if indent <= first_indent and stripped[0] not in CLOSERS:
                bracket, pos = stack[0]
                errors.append(Diagnostic(filename, pos, f"'{bracket}' is never closed"))
                spans.append((first, number - 1))
                stack, first = [], None
        if first is None:
            if not stripped or stripped.startswith("#"):
                continue
            first, first_indent = number, _indent_width(line[: len(line) - len(line.lstrip())])
        column = 0
        while column < len(line):
            char = line[column]
            if char == "#":
                break
            if char == '"':
                end = line.find('"', column + 1)
                if end < 0:  # an unterminated string: the statement ends here, whatever brackets it left open
                    errors.append(Diagnostic(filename, Pos(number + 1, column + 1),
                                             "unterminated string: a string ends with '\"' on the same line"))
                    stack = []
                    break
                column = end + 1
                continue
            if char in OPENERS:
                stack.append((char, Pos(number + 1, column + 1)))
            elif char in CLOSERS:
                if stack and stack[-1][0] == CLOSERS[char]:
                    stack.pop()
                else:
                    opened = f" (the innermost open bracket is '{stack[-1][0]}')" if stack else ""
                    errors.append(Diagnostic(filename, Pos(number + 1, column + 1), f"unmatched '{char}'{opened}"))
            column += 1
        if not stack and not line.rstrip().endswith("\\"):
            spans.append((first, number))
            first = None
    if first is not None:
        if stack:
            bracket, pos = stack[0]
            errors.append(Diagnostic(filename, pos, f"'{bracket}' is never closed"))
        spans.append((first, len(lines) - 1))
    return spans, errors


def _blank_statement(lines: list[str], spans: list[tuple[int, int]], line_index: int) -> bool:
    """Blank out the statement holding a line, with the lines indented deeper below it (its body, if it is a
    header, or lines that only make sense with it). Returns whether anything was left to blank."""
    for first, last in spans:
        if first <= line_index <= last or (line_index < first and not any(lines[line_index:first])):
            break
    else:
        return False
    indent = _indent_width(lines[first][: len(lines[first]) - len(lines[first].lstrip())])
    end = last + 1
    while end < len(lines):
        text = lines[end]
        if text.strip() and not text.strip().startswith("#") and \
                _indent_width(text[: len(text) - len(text.lstrip())]) <= indent:
            break
        end += 1
    changed = any(lines[i].strip() for i in range(first, end))
    for i in range(first, end):
        lines[i] = ""
    return changed


def _out_of_stack(error: Exception) -> bool:
    """A RecursionError, or one that lark wrapped while transforming the tree."""
    return isinstance(error, RecursionError) or (isinstance(error, VisitError)
                                                 and isinstance(error.orig_exc, RecursionError))


def _too_deep(lines: list[str], spans: list[tuple[int, int]]) -> Pos:
    """Where the parser ran out of stack: the first statement that does so on its own, else the most indented
    line (blocks nested past Python's recursion limit)."""
    for first, last in spans:
        alone = textwrap.dedent("\n".join(lines[first: last + 1])) + "\n"
        try:
            ToSyntax("").transform(_parser().parse(alone, start="start"))
        except Exception as error:  # other mistakes of the statement alone say nothing about its depth
            if _out_of_stack(error):
                return Pos(first + 1, len(lines[first]) - len(lines[first].lstrip()) + 1)
    deepest = max(range(len(lines)), key=lambda i: len(lines[i]) - len(lines[i].lstrip()) if lines[i].strip() else -1)
    return Pos(deepest + 1, len(lines[deepest]) - len(lines[deepest].lstrip()) + 1)


def parse(text: str, filename: str = "<string>") -> s.Program:
    """Parse a model description. Raises DslError listing every syntax error it finds."""
    lines = text.split("\n")
    spans, diagnostics = _statement_spans(lines, filename)
    for diagnostic in diagnostics:
        _blank_statement(lines, spans, diagnostic.pos.line - 1)
    while len(diagnostics) < MAX_SYNTAX_ERRORS:
        try:
            tree = _parser().parse("\n".join(lines) + "\n", start="start")
            statements = ToSyntax(filename).transform(tree)
            break
        except (UnexpectedInput, IndentationMismatch) as error:
            diagnostic = _syntax_diagnostic(filename, error, lines)
            if isinstance(error, UnexpectedToken) and error.expected == {"_INDENT"}:
                # A header with no body under it: drop the header too, or its missing body is reported again.
                above = [i for i in range(diagnostic.pos.line - 1) if lines[i].strip()]
                if above:
                    _blank_statement(lines, spans, above[-1])
        except (VisitError, RecursionError) as error:
            if _out_of_stack(error):
                diagnostic = Diagnostic(filename, _too_deep(lines, spans), "this statement nests brackets, operators "
                                                                           "or blocks too deeply to read")
            elif isinstance(error, VisitError) and isinstance(error.orig_exc, _TemplateError):
                diagnostic = _syntax_diagnostic(filename, error.orig_exc, lines)
            else:
                raise
        diagnostics.append(diagnostic)
        if not _blank_statement(lines, spans, min(diagnostic.pos.line, len(lines)) - 1):
            break
    if diagnostics:
        raise DslError(diagnostics, text)
    return s.Program(filename, text, statements)


def parse_expression(text: str) -> s.Expr:
    """One expression on its own (a model parameter given on the command line)."""
    tree = _parser().parse(text, start="expr")
    result = ToSyntax("<parameter>").transform(tree)
    assert not isinstance(result, Tree)
    return result
