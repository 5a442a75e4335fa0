"""The `cnncomp` command line. Errors are one line on stderr and a non-zero exit; `--debug` shows tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from cnncomp import __version__
from cnncomp.errors import CnnCompError

EXIT_ERROR = 1
EXIT_INTERNAL = 3


class UsageError(CnnCompError):
    """A command line that cannot be carried out as given."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def cmd_summary(args: argparse.Namespace) -> int:
    from cnncomp.driver import load_model
    from cnncomp.summary import format_table, summarize

    graph = load_model(args.model, batch=args.batch)
    summary = summarize(graph)
    print(json.dumps(summary, indent=1) if args.json else format_table(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnncomp", description="A graph-IR compiler for convolutional networks.")
    parser.add_argument("--version", action="version", version=f"cnncomp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    summary = commands.add_parser(
        "summary", help="per-layer table: output shape, params, MACs, receptive field",
        description="Print each layer's output shape, parameter count, MACs and receptive field, with totals.",
    )
    summary.add_argument("model", metavar="MODEL", help="model description (a .py file defining build())")
    summary.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    summary.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    summary.set_defaults(run=cmd_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CnnCompError as exc:
        if args.debug:
            raise
        print(f"cnncomp: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cnncomp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if args.debug:
            raise
        print(f"cnncomp: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
