"""The `cnncomp` command line. Errors are one line on stderr and a non-zero exit; `--debug` shows tracebacks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

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


def _model_param(text: str) -> tuple[str, Any]:
    """`--param NAME=VALUE`: ints, numbers, true and false become values; anything else stays text (a `.cnn`
    model reads text as a constant of its language, such as `[3, 4, 6, 3]`)."""
    name, equals, value = text.partition("=")
    if not equals or not name.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    value = value.strip()
    for convert in (int, float):
        try:
            return name.strip(), convert(value)
        except ValueError:
            pass
    return name.strip(), {"true": True, "false": False}.get(value, value)


def _input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """`--input-shape NAME=1x3x224x224`: an input's full shape, batch included."""
    name, equals, value = text.partition("=")
    try:
        shape = tuple(int(d) for d in value.lower().split("x"))
    except ValueError:
        shape = ()
    if not equals or not name.strip() or not shape or min(shape) <= 0:
        raise argparse.ArgumentTypeError(f"expected NAME=NxCxHxW with positive sizes, got {text!r}")
    return name.strip(), shape


def _add_input_shape_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="NAME=NxCxHxW",
                        help="an input's full shape, such as image=1x3x224x224 (repeatable); an ONNX model needs it "
                             "for symbolic dimensions other than the batch")


def _add_pipeline_options(parser: argparse.ArgumentParser, default_level: int) -> None:
    parser.add_argument("-O", dest="opt_level", type=int, choices=range(4), default=default_level, metavar="N",
                        help=f"optimization level 0-3: the graph after that pipeline (default {default_level})")
    parser.add_argument("--disable-pass", action="append", default=[], metavar="PASS",
                        help="leave this pass out of the pipeline (repeatable)")
    parser.add_argument("--dump-after", metavar="PASS|all", help="print the graph after this pass (or each) to stderr")
    parser.add_argument("--fully-convolutional", action="store_true",
                        help="convert the dense layers after a flatten to convolutions first (FCN), so the model "
                             "slides over larger inputs")
    parser.add_argument("--verbose", action="store_true", help="report each pass's time and changes on stderr")


def _optimized(args: argparse.Namespace, graph: Any) -> Any:
    """The graph after the pipeline the command line asks for, with --dump-after and --verbose reports."""
    from cnncomp.pipeline import PASSES, optimize, passes_for
    from cnncomp.render import graph_text

    chosen = [p.__name__ for p in passes_for(args.opt_level, args.disable_pass, args.fully_convolutional)]
    if args.dump_after not in (None, "all", *chosen):
        why = "is not a pass" if args.dump_after not in PASSES else f"does not run at -O{args.opt_level}"
        raise UsageError(f"--dump-after {args.dump_after}: {why}; this pipeline runs: {', '.join(chosen) or 'none'}")

    def dump(name: str, result: Any) -> None:
        if args.dump_after in ("all", name):
            print(f"# after {name}\n{graph_text(result)}", file=sys.stderr)

    graph, runs = optimize(graph, args.opt_level, args.disable_pass, args.fully_convolutional, after_pass=dump)
    if args.verbose:
        for run in runs:
            print(run.describe(), file=sys.stderr)
        if "memory_plan" in graph.meta:
            from cnncomp.passes.plan_memory import describe_plan

            print(f"memory plan: {describe_plan(graph.meta['memory_plan'])}", file=sys.stderr)
    return graph


def cmd_summary(args: argparse.Namespace) -> int:
    from cnncomp.driver import load_model
    from cnncomp.pipeline import passes_for
    from cnncomp.summary import format_table, summarize

    # With no pass to run, nothing reads the weights: skip drawing them (seconds for VGG-16's 138M).
    structure_only = not passes_for(args.opt_level, args.disable_pass, args.fully_convolutional)
    graph = load_model(args.model, batch=args.batch, structure_only=structure_only,
                       input_shapes=dict(args.input_shape), **dict(args.param))
    summary = summarize(_optimized(args, graph))
    print(json.dumps(summary, indent=1) if args.json else format_table(summary))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from cnncomp.driver import load_model, zoo_models
    from cnncomp.summary import summarize

    rows = []
    for name, description in zoo_models().items():
        summary = summarize(load_model(name, structure_only=True))
        inputs = ", ".join("x".join(map(str, i["shape"][1:])) for i in summary["inputs"])
        rows.append({"name": name, "input": inputs, "params": summary["params"], "macs": summary["macs"],
                     "description": description})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("Name", "Input", "Params", "MACs", "Description")
    cells = [(r["name"], r["input"], f"{r['params']:,}", f"{r['macs']:,}", r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(4)]
    for row in [header, *cells]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}  {row[4]}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from cnncomp import render
    from cnncomp.driver import load_model
    from cnncomp.pipeline import passes_for

    # Pictures need no weights; only passes read them.
    structure_only = not passes_for(args.opt_level, args.disable_pass, args.fully_convolutional)
    original = load_model(args.model, batch=args.batch, structure_only=structure_only,
                          input_shapes=dict(args.input_shape), **dict(args.param))
    graph = _optimized(args, original)
    if args.compare:
        before = "-O0" if not args.fully_convolutional else "-O0 (not fully convolutional)"
        dot = render.compare(original, graph, (before, f"-O{args.opt_level}"), cost=args.cost, block=args.block)
    else:
        dot = render.to_dot(graph, cost=args.cost, block=args.block, caption=f"-O{args.opt_level}")
    print(render.write(dot, args.output))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cnncomp.driver import load_model
    from cnncomp.onnx_export import OPSET, export

    output = Path(args.output)
    if output.suffix != ".onnx":
        raise UsageError(f"{output}: an ONNX model is written as .onnx")
    graph = _optimized(args, load_model(args.model, batch=args.batch, input_shapes=dict(args.input_shape),
                                        **dict(args.param)))
    model = export(graph, output)
    parameters = sum(value.size for value in graph.params.values())
    print(f"{graph.name}: {len(model.graph.node)} ONNX nodes (opset {OPSET}), {parameters:,} parameters in "
          f"{len(graph.params)} initializers -> {output} ({_megabytes(output.stat().st_size)})")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 2 ** 20:.1f} MiB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnncomp", description="A graph-IR compiler for convolutional networks.")
    parser.add_argument("--version", action="version", version=f"cnncomp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    summary = commands.add_parser(
        "summary", help="per-layer table: output shape, params, MACs, receptive field",
        description="Print each layer's output shape, parameter count, MACs and receptive field, with totals.",
    )
    summary.add_argument("model", metavar="MODEL",
                         help="model description (a .cnn file, a .py file defining build()) or zoo model name")
    summary.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    summary.add_argument("--param", type=_model_param, action="append", default=[], metavar="NAME=VALUE",
                         help="set a model parameter, such as classes=10 (repeatable)")
    summary.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    _add_input_shape_option(summary)
    _add_pipeline_options(summary, default_level=0)
    summary.set_defaults(run=cmd_summary)

    render = commands.add_parser(
        "render", help="draw the graph (svg, png, pdf or dot) with graphviz",
        description="Draw the graph after an optimization pipeline: ops with key attributes and output shapes, "
                    "tensor shapes on edges, what fused nodes absorbed, blocks as clusters.",
    )
    render.add_argument("model", metavar="MODEL",
                        help="model description (a .cnn file, a .py file defining build()) or zoo model name")
    render.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="picture to write; its suffix picks the format: .svg, .png, .pdf or .dot")
    render.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    render.add_argument("--param", type=_model_param, action="append", default=[], metavar="NAME=VALUE",
                        help="set a model parameter, such as classes=10 (repeatable)")
    render.add_argument("--compare", action="store_true", help="draw the graph before (-O0) and after side by side")
    render.add_argument("--cost", action="store_true", help="shade nodes by MACs and show each node's MACs")
    render.add_argument("--block", metavar="NAME", help="draw only this block of the model (e.g. layer1.0)")
    _add_input_shape_option(render)
    _add_pipeline_options(render, default_level=0)
    render.set_defaults(run=cmd_render)

    export = commands.add_parser(
        "export", help="write the model as an ONNX file (weights included)",
        description="Write the graph, after the pipeline -O asks for (default -O0: as written), as an ONNX model "
                    "with its weights as initializers, checked with onnx.checker; ONNX Runtime and other ONNX tools "
                    "run exactly this model. Needs the onnx package (pip install 'cnncomp[onnx]').",
    )
    export.add_argument("model", metavar="MODEL",
                        help="model description (a .cnn, .py or .onnx file) or zoo model name")
    export.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    export.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    export.add_argument("--param", type=_model_param, action="append", default=[], metavar="NAME=VALUE",
                        help="set a model parameter, such as classes=10 (repeatable)")
    _add_input_shape_option(export)
    _add_pipeline_options(export, default_level=0)
    export.set_defaults(run=cmd_export)

    zoo = commands.add_parser(
        "zoo", help="list the zoo's models: input shape, params, MACs",
        description="List the model zoo (the lecture's architectures as .cnn files): each model's input shape, "
                    "parameter count and MACs. Every command takes a zoo name where it takes a model file.",
    )
    zoo.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    zoo.set_defaults(run=cmd_zoo)
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
