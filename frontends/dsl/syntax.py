"""The syntax tree of a `.cnn` file. Every node keeps the position errors about it point at."""

from __future__ import annotations

from dataclasses import dataclass

from frontends.dsl.errors import Pos


# ----- expressions ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Constant:
    """A literal: int, float, bool or string."""

    value: int | float | bool | str
    pos: Pos


@dataclass(frozen=True)
class Name:
    id: str
    pos: Pos


@dataclass(frozen=True)
class ListLiteral:
    items: tuple[Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Attribute:
    """`value.name`, such as `x.channels`; pos is the attribute name's."""

    value: Expr
    name: str
    pos: Pos


@dataclass(frozen=True)
class Index:
    value: Expr
    index: Expr
    pos: Pos


@dataclass(frozen=True)
class Unary:
    op: str  # "-", "+", "not"
    operand: Expr
    pos: Pos


@dataclass(frozen=True)
class Binary:
    """Arithmetic, comparison or boolean operator; pos is the operator's."""

    op: str
    left: Expr
    right: Expr
    pos: Pos


@dataclass(frozen=True)
class Conditional:
    """`body if test else orelse`."""

    test: Expr
    body: Expr
    orelse: Expr
    pos: Pos


@dataclass(frozen=True)
class Label:
    """`as NAME`, `as 3` or `as "layer{i}"`: the name of the node or block instance a call makes. A template is a
    sequence of literal strings and expressions."""

    parts: tuple[str | Expr, ...]
    pos: Pos


@dataclass(frozen=True)
class Argument:
    keyword: str | None
    value: Expr
    pos: Pos  # the keyword's position, or the value's


@dataclass(frozen=True)
class Call:
    """`name(args) as label`: an op, a block, a sequence or a function. In a chain the value flowing in is the
    first argument (`chained`)."""

    name: str
    args: tuple[Argument, ...]
    label: Label | None
    pos: Pos
    chained: bool = False


@dataclass(frozen=True)
class Chain:
    """`head -> step -> step`: each step is a call whose first operand is the value before it."""

    head: Expr
    steps: tuple[Call, ...]


@dataclass(frozen=True)
class TableLayer:
    """A layer in the VGG table's notation: conv3-64, FC-4096, FC-classes, maxpool, LRN, soft-max."""

    kind: str  # "conv", "fc", "maxpool", "lrn", "softmax"
    kernel: int | None
    size: Expr | None  # output channels or features
    pos: Pos


Expr = Constant | Name | ListLiteral | Attribute | Index | Unary | Binary | Conditional | Call | Chain


def expr_pos(expr: Expr) -> Pos:
    """Where an expression starts being worth pointing at."""
    if isinstance(expr, Chain):
        return expr_pos(expr.head)
    return expr.pos


# ----- statements --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A model or block parameter with its default value, if any."""

    name: str
    default: Expr | None
    pos: Pos


@dataclass(frozen=True)
class ModelDecl:
    name: str
    params: tuple[Param, ...]
    pos: Pos
    strict: bool = False  # `model NAME(...) strict`: a window whose output size is a fraction is an error


@dataclass(frozen=True)
class InputDecl:
    name: str
    dims: tuple[Expr, ...]  # channels x height x width (or features)
    pos: Pos


@dataclass(frozen=True)
class OutputDecl:
    name: str
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Assign:
    name: str
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Return:
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class Assert:
    test: Expr
    message: Expr | None
    pos: Pos


@dataclass(frozen=True)
class ExprStatement:
    value: Expr
    pos: Pos


@dataclass(frozen=True)
class BlockDef:
    name: str
    params: tuple[Param, ...]
    body: tuple[Statement, ...]
    pos: Pos


@dataclass(frozen=True)
class SequenceDef:
    """A sequential form: layers (table shorthand or chain steps) applied one after the other."""

    name: str
    layers: tuple[TableLayer | Call, ...]
    pos: Pos


@dataclass(frozen=True)
class If:
    branches: tuple[tuple[Expr, tuple[Statement, ...]], ...]  # if and elif clauses
    orelse: tuple[Statement, ...]
    pos: Pos


@dataclass(frozen=True)
class For:
    targets: tuple[str, ...]
    iterable: Expr
    body: tuple[Statement, ...]
    pos: Pos


Statement = (ModelDecl | InputDecl | OutputDecl | Assign | Return | Assert | ExprStatement | BlockDef | SequenceDef
             | If | For)


@dataclass(frozen=True)
class Program:
    filename: str
    source: str
    statements: tuple[Statement, ...]


def assigned_names(statements: tuple[Statement, ...]) -> set[str]:
    """Every name a list of statements may bind (for marking them as failed when a condition fails)."""
    names: set[str] = set()
    for statement in statements:
        if isinstance(statement, Assign):
            names.add(statement.name)
        elif isinstance(statement, For):
            names.update(statement.targets)
            names |= assigned_names(statement.body)
        elif isinstance(statement, If):
            for _, body in statement.branches:
                names |= assigned_names(body)
            names |= assigned_names(statement.orelse)
    return names
