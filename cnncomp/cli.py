"""The `cnncomp` command line. Errors are one line on stderr and a non-zero exit; `--debug` shows tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from cnncomp import __version__
from cnncomp.errors import CnnCompError

EXIT_ERROR = 1
EXIT_INTERNAL = 3
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool a closed pipe stopped
DEFAULT_BATCH = 32  # inputs per batch of `run --out`


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


def _add_shape_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input-shape", type=_input_shape, action="append", default=[], metavar="NAME=NxCxHxW",
                        help="an input's full shape, such as image=1x3x224x224 (repeatable); an ONNX model needs it "
                             "for symbolic dimensions other than the batch")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a conv or pool whose output size (N + 2P - F)/S + 1 is a fraction, instead of "
                             "rounding it down (the lecture's \"fractions are illegal\")")


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


def _load_graph(args: argparse.Namespace, batch: int | None, *, structure_only: bool = False) -> Any:
    """The model the command line names, with its --weights, at its --input-shape and then at `batch`. Fully
    convolutional, only the batch of --input-shape applies here: the image size applies once the classifier is
    convolutional (`_optimized`)."""
    from cnncomp import api

    shapes = dict(args.input_shape)
    weights = args.weights
    if args.fully_convolutional and shapes:
        graph = api.load_model(args.model, weights=weights, structure_only=structure_only, strict=args.strict,
                               **dict(args.param))
        graph = graph.with_input_shapes({name: (shape[0], *graph.node(name).type.shape[1:])
                                         for name, shape in shapes.items()})
    else:
        graph = api.load_model(args.model, weights=weights, input_shapes=shapes or None,
                               structure_only=structure_only, strict=args.strict, **dict(args.param))
    return graph if batch is None else graph.with_batch(batch)


def _pipeline(args: argparse.Namespace) -> list[str]:
    """The passes the command line's pipeline runs, by name, checked once before anything is loaded: an unknown
    --disable-pass, or a --dump-after pass that does not run, is one line."""
    from cnncomp.pipeline import PASSES, passes_for

    chosen = [p.__name__ for p in passes_for(args.opt_level, args.disable_pass, args.fully_convolutional)]
    if args.dump_after not in (None, "all", *chosen):
        why = "is not a pass" if args.dump_after not in PASSES else f"does not run at -O{args.opt_level}"
        raise UsageError(f"--dump-after {args.dump_after}: {why}; this pipeline runs: {', '.join(chosen) or 'none'}")
    return chosen


def _pipeline_options(args: argparse.Namespace, graph: Any) -> dict[str, Any]:
    """What `optimize` and `cnncomp.compile` take from the command line besides the level: the --dump-after hook,
    and, fully convolutional, the image size of --input-shape (applied after dense_to_conv; the batch is the
    graph's)."""
    from cnncomp.render import graph_text

    def dump(name: str, result: Any) -> None:
        if args.dump_after in ("all", name):
            print(f"# after {name}\n{graph_text(result)}", file=sys.stderr)

    shapes = ({name: (graph.node(name).type.batch, *shape[1:]) for name, shape in args.input_shape}
              if args.fully_convolutional else None)
    return {"after_pass": dump, "input_shapes": shapes}


def _report_passes(args: argparse.Namespace, runs: Sequence[Any], graph: Any) -> None:
    """--verbose: each pass's time and changes, and the memory plan a backend makes for the result, on stderr."""
    if not args.verbose:
        return
    from cnncomp.planner import describe_plan, memory_plan

    for run in runs:
        print(run.describe(), file=sys.stderr)
    print(f"memory plan: {describe_plan(memory_plan(graph))}", file=sys.stderr)


def _optimized(args: argparse.Namespace, graph: Any) -> Any:
    """The graph after the pipeline the command line asks for, with --dump-after and --verbose reports."""
    from cnncomp.pipeline import optimize

    graph, runs = optimize(graph, args.opt_level, args.disable_pass, args.fully_convolutional,
                           **_pipeline_options(args, graph))
    _report_passes(args, runs, graph)
    return graph


def cmd_summary(args: argparse.Namespace) -> int:
    from cnncomp.summary import format_table, summarize

    # With no pass to run, nothing reads the weights: skip drawing them (seconds for VGG-16's 138M).
    structure_only = not args.passes
    summary = summarize(_optimized(args, _load_graph(args, args.batch, structure_only=structure_only)))
    print(json.dumps(summary, indent=1) if args.json else format_table(summary))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from cnncomp.driver import load_model, zoo_models
    from cnncomp.summary import summarize

    rows = []
    for name, description in zoo_models().items():
        summary = summarize(load_model(name, structure_only=True))
        # The inputs as `summary --json` gives them: name and shape (a list, batch first).
        rows.append({"name": name, "inputs": summary["inputs"], "params": summary["params"],
                     "macs": summary["macs"], "description": description})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    header = ("Name", "Input", "Params", "MACs", "Description")
    cells = [(r["name"], ", ".join("x".join(map(str, i["shape"][1:])) for i in r["inputs"]), f"{r['params']:,}",
              f"{r['macs']:,}", r["description"]) for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(4)]
    for row in [header, *cells]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}  {row[4]}")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from cnncomp import render
    # Pictures need no weights; only passes read them.
    structure_only = not args.passes
    original = _load_graph(args, args.batch, structure_only=structure_only)
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

    from cnncomp import plugins

    onnx_export = plugins.exporter("onnx")
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise UsageError(f"{output}: an ONNX model is written as .onnx")
    graph = _optimized(args, _load_graph(args, args.batch))
    model = onnx_export.export(graph, output)
    parameters = sum(value.size for value in graph.params.values())
    opset = model.opset_import[0].version
    print(f"{graph.name}: {len(model.graph.node)} ONNX nodes (opset {opset}), {parameters:,} parameters in "
          f"{len(graph.params)} initializers -> {output} ({_megabytes(output.stat().st_size)})")
    return 0


def _megabytes(size: int) -> str:
    return f"{size / 2 ** 20:.1f} MiB"


def _csv(convert: Any, what: str) -> Any:
    """A comma-separated list argument (`--batch 1,8`, `-b numba-cpu,reference`)."""

    def parse(text: str) -> list[Any]:
        items = [item.strip() for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}, got {text!r}")
        return [convert(item) for item in items]

    return parse


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--param", type=_model_param, action="append", default=[], metavar="NAME=VALUE",
                        help="set a model parameter, such as classes=10 (repeatable)")
    parser.add_argument("--weights", metavar="FILE.npz",
                        help="load the model's weights from an .npz keyed node.param (such as c1.weight)")


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                        help="run on a local Dask cluster of N worker processes (listening on 127.0.0.1 only)")
    parser.add_argument("--threads-per-worker", type=_positive_int, default=None, metavar="T",
                        help="threads of each --workers process (default 1); each runs batches on one core")
    parser.add_argument("--scheduler", metavar="ADDRESS",
                        help="run on a running Dask cluster (tcp://HOST:PORT or tls://...; Dask's own security "
                             "settings apply)")
    parser.add_argument("--scheduler-file", metavar="FILE", help="the running cluster's scheduler file")


def _add_image_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mean", type=_floats, metavar="M[,M,M]",
                        help="per-channel mean images are normalized with: (pixel/255 - mean) / std "
                             "(default: ImageNet's for 3-channel models, 0 for 1-channel)")
    parser.add_argument("--std", type=_floats, metavar="S[,S,S]", help="per-channel std (see --mean)")


def _format_bytes(size: int) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024 or unit == "MiB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _compiled(args: argparse.Namespace, batch: int | None, graph: Any = None, threads: int | None = None) -> Any:
    """The model the command line names, compiled: an artifact (.cnnx) loaded, or a model description or zoo name
    (or its `graph`, loaded already) compiled after the pipeline the command line asks for; each call on `threads`
    cores (None: all), the `threads` option of `cnncomp.compile`."""
    from cnncomp import api
    from cnncomp.artifact import SUFFIX
    from cnncomp.data import default_preprocessing, with_normalization

    if str(args.model).endswith(SUFFIX):
        if args.param or args.weights or args.input_shape or args.strict:
            raise UsageError(f"{args.model}: an artifact is compiled already; --param, --weights, --input-shape and "
                             "--strict do not apply")
        model = api.load(args.model, backend=args.backend, threads=threads)
        model.preprocessing = with_normalization(model.preprocessing, args.mean, args.std)
        return model
    if graph is None:
        graph = _load_graph(args, batch)
    elif batch is not None:
        graph = graph.with_batch(batch)
    preprocessing = with_normalization(default_preprocessing(graph), args.mean, args.std)
    model = api.compile(graph, args.backend or api.DEFAULT_BACKEND, args.opt_level, batch=None,
                        fully_convolutional=args.fully_convolutional, disable=args.disable_pass, threads=threads,
                        preprocessing=preprocessing, **_pipeline_options(args, graph))
    _report_passes(args, model.pass_runs, model.graph)
    return model


def cmd_compile(args: argparse.Namespace) -> int:
    from cnncomp.data import check_writable

    standalone = args.emit == "standalone"
    output = Path(args.output) if args.output else None
    if output is not None:
        check_writable(output)
        if standalone:
            if output.suffix != ".py":
                raise UsageError(f"{output}: --emit standalone writes a Python program; name it .py")
            check_writable(output.with_suffix(".npz"))
    if args.emit_source and Path(args.emit_source).exists() and not Path(args.emit_source).is_dir():
        raise UsageError(f"--emit-source {args.emit_source}: exists and is not a folder")
    model = _compiled(args, args.batch if args.batch is not None or args.input_shape else 1)
    output = output or Path(f"{model.name}{'.py' if standalone else '.cnnx'}")
    written = model.save_standalone(output) if standalone else (model.save(output),)
    stats = model.stats
    if stats.get("kernels") is not None:
        what = (f"{stats['kernels']} kernels ({stats['compiled']} compiled, {stats['from_cache']} from the cache), "
                f"arena {_format_bytes(stats['arena_bytes'])}, scratch {_format_bytes(stats['scratch_bytes'])}")
    else:
        what = f"{model.backend} backend (no generated kernels)"
    if args.emit_source:
        what += f", {_write_sources(model, Path(args.emit_source))} kernel sources in {args.emit_source}"
    print(f"{model.name}: {what}, {model.compile_seconds:.1f} s -> {', '.join(map(str, written))}")
    return 0


def _write_sources(model: Any, folder: Path) -> int:
    from cnncomp.data import write_atomically

    folder.mkdir(parents=True, exist_ok=True)
    write_atomically({folder / f"{name}.py": text.encode() for name, text in model.source.items()})
    return len(model.source)


def cmd_run(args: argparse.Namespace) -> int:
    from cnncomp.data import array_bytes, is_classifier_output, is_map_output, read_labels, write_atomically

    _check_cluster_options(args)
    if args.out is not None:
        return _run_many(args)
    output = _check_one_input(args)
    labels = read_labels(args.labels) if args.labels else None
    model, inputs = _model_and_inputs(args)
    outputs = model.run(inputs)
    shapes = ", ".join(f"{name} {'x'.join(map(str, value.shape))}" for name, value in outputs.items())
    print(f"{model.name} ({model.backend}, -O{model.opt_level}) on {args.input}: {shapes}")
    files: dict[Path, bytes] = {}
    for name, value in outputs.items():
        name_it = len(outputs) > 1
        if is_classifier_output(value.shape):
            _print_top_k(args, name, value, model.softmax_output, labels, name_it)
        elif is_map_output(value.shape):
            files.update(_class_maps(name, value, labels, output, name_it))
    if output is not None:
        files = {output: array_bytes(outputs, output.suffix if len(outputs) == 1 else ".npz"), **files}
        write_atomically(files)
        print(f"wrote {', '.join(map(str, files))}")
    return 0


def _check_one_input(args: argparse.Namespace) -> Path | None:
    """`run` without --out takes one input file; its -o, if given, must be writable .npy or .npz."""
    from cnncomp.data import check_writable

    if args.batch is not None or args.no_outputs or args.recursive or _on_dask(args):
        raise UsageError("--batch, --recursive, --no-outputs, --workers and --scheduler run many inputs; give "
                         "--out OUTDIR for their results")
    if len(args.input) != 1 or Path(args.input[0]).is_dir() or set("*?[") & set(args.input[0]):
        many = "several inputs" if len(args.input) != 1 else f"{args.input[0]} is not one file"
        raise UsageError(f"{many}: give --out OUTDIR to run them all (predictions.csv, outputs.npy)")
    (args.input,) = args.input
    output = Path(args.output) if args.output else None
    if output is not None:
        if output.suffix not in (".npy", ".npz"):
            raise UsageError(f"{output}: the output array is written as .npy (or .npz for several outputs)")
        check_writable(output)
    return output


def _model_and_inputs(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The compiled model and its inputs read from args.input. A model description is compiled at the batch size
    of its inputs, and images are read as its input says: the inputs are read first."""
    from cnncomp.artifact import SUFFIX
    from cnncomp.data import default_preprocessing, read_inputs, with_normalization

    if str(args.model).endswith(SUFFIX):
        model = _compiled(args, None, threads=args.threads)
        return model, read_inputs(args.input, list(model.input_shapes), model.preprocessing, model.name)
    graph = _load_graph(args, None)
    preprocessing = with_normalization(default_preprocessing(graph), args.mean, args.std)
    inputs = read_inputs(args.input, [node.name for node in graph.inputs], preprocessing, graph.name)
    batches = {value.shape[0] for value in inputs.values() if getattr(value, "ndim", 0)}
    return _compiled(args, batches.pop() if len(batches) == 1 else None, graph, threads=args.threads), inputs


def _print_top_k(args: argparse.Namespace, name: str, value: Any, softmax_output: bool, labels: list[str] | None,
                 name_it: bool) -> None:
    """Each image's k best classes with their probabilities (softmax of the scores unless the model ends in one)."""
    from cnncomp.data import softmax, top_k

    scores = value.reshape(value.shape[0], -1)
    probabilities = scores if softmax_output else softmax(scores)
    if labels is not None and len(labels) < scores.shape[1]:
        raise UsageError(f"{args.labels}: {len(labels)} labels, but {name} has {scores.shape[1]} classes")
    k = min(args.top_k, scores.shape[1])
    for image, best in enumerate(top_k(probabilities, k)):
        print(f"{name}[{image}] top-{k}:" if name_it or scores.shape[0] > 1 else f"top-{k}:")
        for rank, index in enumerate(best, start=1):
            label = labels[index] if labels is not None else f"class {index}"
            print(f"  {rank}. {label:<24} {100 * probabilities[image, index]:6.2f}%")


def _class_maps(name: str, value: Any, labels: list[str] | None, output: Path | None,
                name_it: bool) -> dict[Path, bytes]:
    """Each image's class shares printed; with -o, its class map as a PNG beside the output array."""
    import numpy as np

    from cnncomp.data import class_map_png

    files = {}
    for image in range(value.shape[0]):
        classes = value[image].argmax(axis=0) if value.shape[1] > 1 else None
        if classes is not None:
            counts = np.bincount(classes.ravel(), minlength=value.shape[1])
            shares = ", ".join(
                f"{labels[c] if labels is not None and c < len(labels) else f'class {c}'} "
                f"{100 * counts[c] / classes.size:.1f}%" for c in np.argsort(-counts, kind="stable")[:5] if counts[c])
            print(f"{name}[{image}] class map {value.shape[2]}x{value.shape[3]}: {shares}")
        if output is not None:
            suffix = f"{'.' + name if name_it else ''}{f'.{image}' if value.shape[0] > 1 else ''}"
            files[output.with_name(f"{output.stem}{suffix}.png")] = class_map_png(value[image])
    return files


def _on_dask(args: argparse.Namespace) -> bool:
    return bool(args.workers or args.scheduler or args.scheduler_file)


def _check_cluster_options(args: argparse.Namespace) -> None:
    if args.workers and (args.scheduler or args.scheduler_file):
        raise UsageError("--workers starts a local cluster; --scheduler uses a running one: give one of them")
    if args.scheduler and args.scheduler_file:
        raise UsageError("give --scheduler or --scheduler-file, not both")
    if args.threads_per_worker is not None and not args.workers:
        raise UsageError("--threads-per-worker sets the threads of the --workers this command starts")
    if args.threads is not None and _on_dask(args):
        raise UsageError("--threads is for a run in this process; on Dask, each worker's threads run batches "
                         "side by side (--threads-per-worker)")
    if _on_dask(args):
        from cnncomp.batch import require_dask

        require_dask()


@contextlib.contextmanager
def _dask_client(args: argparse.Namespace) -> Iterator[Any]:
    """The Dask client the command line asks for (None: run in this process), closed afterwards."""
    if not _on_dask(args):
        yield None
        return
    import logging

    from cnncomp.batch import connect

    # Dask logs a lost connection with tracebacks; the command says it in one line.
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    cluster = connect(args.workers, args.threads_per_worker or 1, args.scheduler, args.scheduler_file)
    try:
        try:
            link = cluster.client.dashboard_link
        except (KeyError, AttributeError):  # a scheduler without a dashboard
            link = None
        where = args.scheduler or args.scheduler_file or f"local cluster of {args.workers} workers"
        print(f"Dask: {where}{f', dashboard {link}' if link else ''}", file=sys.stderr)
        yield cluster.client
    finally:
        cluster.close()


def _run_many(args: argparse.Namespace) -> int:
    from cnncomp import batch
    from cnncomp.data import list_inputs, read_labels

    if args.output:
        raise UsageError("-o/--output writes one input's array; with --out the outputs go to OUTDIR/outputs.npy")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    files = list_inputs(args.input, args.recursive)
    labels = read_labels(args.labels) if args.labels else None
    size = args.batch or DEFAULT_BATCH
    model = _compiled(args, size, threads=args.threads)
    with _dask_client(args) as client:
        summary = batch.run_to_folder(
            model, files, out, batch=size, client=client, preprocessing=model.preprocessing, top_k=args.top_k,
            labels=labels, write_outputs=not args.no_outputs,
            on_start=lambda where: print(f"{model.name} ({model.backend}, -O{model.opt_level}): {len(files):,} "
                                         f"inputs in batches of {size} on {where}", file=sys.stderr))
    print(summary.line(out))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from cnncomp.data import read_labelled_set, top_k_errors

    _check_cluster_options(args)
    if Path(args.data).is_dir() or _on_dask(args):
        return _eval_many(args)
    x, y = read_labelled_set(args.data)
    batch = min(args.batch, len(x))
    model = _compiled(args, batch)
    classes = _classes(args, model)
    if y.min() < 0 or y.max() >= classes:
        raise UsageError(f"{args.data}: labels range over {y.min()}..{y.max()}, but the model has {classes} classes")
    scores = np.concatenate([model(x[start: start + batch]).reshape(-1, classes) for start in range(0, len(x), batch)])
    _print_errors(args, model, top_k_errors(scores, y, args.top_k), len(y))
    return 0


def _classes(args: argparse.Namespace, model: Any) -> int:
    """The classifier's class count, after checking it has one N x classes output and enough classes."""
    import numpy as np

    if len(model.output_shapes) != 1:
        raise UsageError(f"model {model.name!r} has {len(model.output_shapes)} outputs; eval scores one classifier")
    ((output, shape),) = model.output_shapes.items()
    if shape[2:] not in ((), (1, 1)):
        raise UsageError(f"model {model.name!r}: output {output} is {'x'.join(map(str, shape))}, not N x classes")
    classes = int(np.prod(shape[1:]))
    too_large = [k for k in args.top_k if k > classes]
    if too_large:
        raise UsageError(f"--top-k {too_large[0]}: model {model.name!r} has only {classes} classes")
    return classes


def _eval_many(args: argparse.Namespace) -> int:
    """eval over a folder of class subfolders, or on Dask: the inputs go through `cnncomp.run_many`."""
    import numpy as np

    from cnncomp import batch
    from cnncomp.data import read_image_folder, read_labelled_set, top_k_errors

    if Path(args.data).is_dir():
        inputs, y, _ = read_image_folder(args.data)
    else:
        x, y = read_labelled_set(args.data)
        inputs = list(x)
    size = min(args.batch, len(y))
    model = _compiled(args, size)
    classes = _classes(args, model)
    if y.min() < 0 or y.max() >= classes:
        raise UsageError(f"{args.data}: labels range over {y.min()}..{y.max()}, but the model has {classes} classes")
    with _dask_client(args) as client:
        results = batch.run_many(model, inputs, batch=size, client=client, preprocessing=model.preprocessing)
    scored = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"cnncomp: note: {len(failed)} of {len(results)} inputs failed and are not scored; the first: "
              f"{failed[0].error}", file=sys.stderr)
    if not scored:
        raise UsageError(f"{args.data}: no input could be scored")
    scores = np.stack([next(iter(r.outputs.values())).reshape(classes) for r in scored])
    labels = y[[r.index for r in scored]]
    _print_errors(args, model, top_k_errors(scores, labels, args.top_k), len(labels))
    return 0


def _print_errors(args: argparse.Namespace, model: Any, errors: dict[int, int], samples: int) -> None:
    if args.json:
        print(json.dumps({"model": model.name, "data": str(args.data), "backend": model.backend,
                          "opt_level": model.opt_level, "samples": samples,
                          "errors": {str(k): n for k, n in errors.items()},
                          "error_rates": {str(k): n / samples for k, n in errors.items()}}, indent=1))
        return
    print(f"{model.name} on {args.data}: {samples} samples, {model.backend} -O{model.opt_level}")
    for k, n in errors.items():
        print(f"top-{k} error: {100 * n / samples:.2f}% ({n} of {samples})")


def cmd_profile(args: argparse.Namespace) -> int:
    from cnncomp.bench import random_inputs

    model = _compiled(args, args.batch if args.batch is not None or args.input_shape else 1, threads=args.threads)
    # An artifact runs at --batch by compiling that variant (`CompiledModel` does so on demand).
    shapes = {name: (args.batch or shape[0], *shape[1:]) for name, shape in model.input_shapes.items()}
    profile = model.profile(random_inputs(shapes), args.repeat)
    if args.json:
        print(json.dumps({"model": model.name, "backend": model.backend, "opt_level": model.opt_level,
                          "threads": model.threads, "inputs": [{"name": name, "shape": list(shape)}
                                                               for name, shape in shapes.items()],
                          **profile.as_dict()}, indent=1))
        return 0
    inputs = ", ".join(f"{name} {'x'.join(map(str, shape))}" for name, shape in shapes.items())
    print(f"{model.name} on {model.backend}, -O{model.opt_level}, {inputs} (random), threads: "
          f"{model.threads or 'all cores'}; median of {args.repeat} runs after one warm-up, slowest first")
    print(profile)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from cnncomp import bench, plugins
    from cnncomp.driver import load_model
    from cnncomp.summary import summarize

    for name in args.backend:
        plugins.backend(name)  # an unknown name fails now, not after minutes of measuring
    if args.weights and not Path(args.weights).is_file():
        raise UsageError(f"{args.weights}: no such weights file")
    macs = {model: summarize(load_model(model, batch=1, structure_only=True, **dict(args.param)))["macs"]
            for model in args.models}
    backends = list(dict.fromkeys(args.backend))
    peers, notes = bench.peers_available() if args.peers else ([], [])
    for note in notes:
        print(f"cnncomp: note: {note}", file=sys.stderr)
    peak = bench.matmul_peak_gflops()
    jobs = [bench.Job(model, backend, batch, args.opt_level, args.repeat, dict(args.param), args.weights, args.threads)
            for model in args.models for backend in [*backends, *(p for p in peers if p not in backends)]
            for batch in args.batch]
    records = []
    for number, job in enumerate(jobs, start=1):
        # A line per job on stderr, terminal or log: a whole run takes minutes.
        print(f"cnncomp: bench {number}/{len(jobs)}: {job.model} on {job.backend}, batch {job.batch}",
              file=sys.stderr, flush=True)
        try:
            records.append(bench.measure(job, macs[job.model] * job.batch, peak))
        except bench.BenchError as exc:
            if job.backend not in peers:
                raise
            print(f"cnncomp: note: peer skipped: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(records, indent=1))
        return 0
    print(f"numpy float32 matmul peak: {peak:.1f} GFLOP/s; {args.repeat} timed runs after one warm-up; "
          f"threads: {args.threads or 'all cores'}")
    for model in args.models:
        print()
        print(bench.table(model, macs[model], [r for r in records if r["model"] == model], peers))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from cnncomp import api
    from cnncomp.progress import RateProgress

    graph = _load_graph(args, args.batch)
    bar: RateProgress | None = None  # on a terminal, once the layer count is known

    def on_layer(done: int, total: int, layer: dict[str, Any]) -> None:
        nonlocal bar
        if not sys.stderr.isatty():  # a log: a line per layer
            print(f"cnncomp: tune {done}/{total}: {layer['nodes'][0]}: {layer['chosen']}", file=sys.stderr, flush=True)
            return
        bar = bar or RateProgress(total, f"tuning {graph.name}", "layers")
        bar.advance(1)

    report = api.tune(graph, args.backend or api.DEFAULT_BACKEND, batch=None, threads=args.threads, on_layer=on_layer)
    if bar is not None:
        bar.close()
    if args.json:
        print(json.dumps({"model": graph.name, "batch": graph.inputs[0].type.batch, **report}, indent=1))
        return 0
    layers = report["layers"]
    print(f"{graph.name}: {len(layers)} distinct conv2d layer{'s' if len(layers) != 1 else ''} measured in "
          f"{report['seconds']:.1f} s on {report['cpu']}, {report['threads']} threads -> {report['record']}")
    width = max([len("layer"), *(len(layer["nodes"][0]) + 5 for layer in layers)])
    print(f"{'layer':<{width}}  {'default':<10}  {'chosen':<10}  ms per algorithm (median)")
    for layer in layers:
        name = layer["nodes"][0] + (f" (+{len(layer['nodes']) - 1})" if len(layer["nodes"]) > 1 else "")
        times = ", ".join(f"{algorithm} {ms:.3f}" for algorithm, ms in sorted(layer["measured_ms"].items(),
                                                                              key=lambda item: item[1]))
        print(f"{name:<{width}}  {layer['default']:<10}  {layer['chosen']:<10}  {times}")
    return 0


MODEL_HELP = "model description (a .cnn file, a .py file defining build(), an .onnx file) or zoo model name"
ARTIFACT_HELP = "a .cnnx artifact, model description or zoo name"
THREADS_HELP = "cores the model uses (default: all); numba-cpu, torch and onnxruntime honour it"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cnncomp", description="A graph-IR compiler for convolutional networks.")
    parser.add_argument("--version", action="version", version=f"cnncomp {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add_command in (_summary_command, _render_command, _export_command, _zoo_command, _compile_command,
                        _run_command, _eval_command, _profile_command, _bench_command, _tune_command):
        add_command(commands)
    return parser


def _command(commands: Any, name: str, run: Any, help: str, description: str) -> argparse.ArgumentParser:  # noqa: A002
    command = commands.add_parser(name, help=help, description=description)
    command.set_defaults(run=run)
    return command


def _add_backend_option(parser: argparse.ArgumentParser, artifact: bool = True) -> None:
    default = "numba-cpu, or the artifact's" if artifact else "numba-cpu"
    parser.add_argument("-b", "--backend", default=None, metavar="NAME", help=f"backend (default {default})")


def _summary_command(commands: Any) -> None:
    summary = _command(commands, "summary", cmd_summary, "per-layer table: output shape, params, MACs, receptive field",
                       "Print each layer's output shape, parameter count, MACs and receptive field, with totals.")
    summary.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    summary.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    summary.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
    _add_model_options(summary)
    _add_shape_options(summary)
    _add_pipeline_options(summary, default_level=0)


def _render_command(commands: Any) -> None:
    render = _command(commands, "render", cmd_render, "draw the graph (svg, png, pdf or dot) with graphviz",
                      "Draw the graph after an optimization pipeline: ops with key attributes and output shapes, "
                      "tensor shapes on edges, what fused nodes absorbed, blocks as clusters.")
    render.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    render.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="picture to write; its suffix picks the format: .svg, .png, .pdf or .dot")
    render.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    render.add_argument("--compare", action="store_true", help="draw the graph before (-O0) and after side by side")
    render.add_argument("--cost", action="store_true", help="shade nodes by MACs and show each node's MACs")
    render.add_argument("--block", metavar="NAME", help="draw only this block of the model (e.g. layer1.0)")
    _add_model_options(render)
    _add_shape_options(render)
    _add_pipeline_options(render, default_level=0)


def _export_command(commands: Any) -> None:
    export = _command(commands, "export", cmd_export, "write the model as an ONNX file (weights included)",
                      "Write the graph, after the pipeline -O asks for (default -O0: as written), as an ONNX model "
                      "with its weights as initializers, checked with onnx.checker; ONNX Runtime and other ONNX "
                      "tools run exactly this model. Needs the onnx package (pip install 'cnncomp[onnx]').")
    export.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    export.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    export.add_argument("--batch", type=_positive_int, default=None, help="batch size (default: the model's)")
    _add_model_options(export)
    _add_shape_options(export)
    _add_pipeline_options(export, default_level=0)


def _zoo_command(commands: Any) -> None:
    zoo = _command(commands, "zoo", cmd_zoo, "list the zoo's models: input shape, params, MACs",
                   "List the model zoo (the lecture's architectures as .cnn files): each model's input shape, "
                   "parameter count and MACs. Every command takes a zoo name where it takes a model file.")
    zoo.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")


def _compile_command(commands: Any) -> None:
    compile_ = _command(commands, "compile", cmd_compile,
                        "compile a model into an artifact (.cnnx) or a standalone Python program",
                        "Optimize a model and compile it for a backend; write the artifact (graph, weights, "
                        "manifest, kernel sources) or, with --emit standalone, one Python file that needs only "
                        "numpy, numba and scipy, with its weights in an .npz beside it.")
    compile_.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    compile_.add_argument("-o", "--output", metavar="FILE",
                          help="where to write (default: MODEL_NAME.cnnx, or MODEL_NAME.py with --emit standalone)")
    _add_backend_option(compile_, artifact=False)
    compile_.add_argument("--batch", type=_positive_int, default=None,
                          help="batch size (default 1, or --input-shape's; a loaded model compiles other sizes on "
                               "demand)")
    compile_.add_argument("--emit", choices=("artifact", "standalone"), default="artifact",
                          help="artifact: a .cnnx file (default); standalone: a .py program and its .npz weights")
    compile_.add_argument("--emit-source", metavar="DIR", help="also write the generated kernel modules into DIR")
    _add_shape_options(compile_)
    _add_model_options(compile_)
    _add_image_options(compile_)
    _add_pipeline_options(compile_, default_level=2)


def _run_command(commands: Any) -> None:
    run = _command(commands, "run", cmd_run,
                   "run a model on an array or an image: top-k classes, output array, class map",
                   "Run a model (an artifact, a model description or a zoo name) on a .npy/.npz array or a "
                   "PNG/JPEG image (resized and normalized as the model says); print the top-k classes with their "
                   "probabilities, write the output array and, for segmentation models, a PNG of the class map.")
    run.add_argument("model", metavar="MODEL_OR_ARTIFACT", help=ARTIFACT_HELP)
    run.add_argument("-i", "--input", required=True, action="extend", nargs="+", metavar="INPUT",
                     help=".npy (one input), .npz (an array per input name) or a .png/.jpg image; with --out, "
                          "any number of files, folders (sorted) and glob patterns")
    run.add_argument("-o", "--output", metavar="OUT.npy",
                     help="write the output array (.npz for several outputs); class maps go beside it as .png")
    run.add_argument("--out", metavar="OUTDIR",
                     help="run every input, one sample each, in batches; write OUTDIR/predictions.csv (a row per "
                          "input: status, top-k, error), outputs.npy (a row per input; NaN for a failed one) and "
                          "class maps under OUTDIR/maps/. Finished batches are kept in OUTDIR/.parts: the same "
                          "command again resumes")
    run.add_argument("--batch", type=_positive_int, default=None, metavar="B",
                     help=f"inputs per batch with --out (default {DEFAULT_BATCH})")
    run.add_argument("--recursive", action="store_true", help="read input folders' subfolders too")
    run.add_argument("--no-outputs", action="store_true", help="with --out, do not write outputs.npy")
    run.add_argument("--top-k", type=_positive_int, default=5, metavar="K", help="classes to print (default 5)")
    run.add_argument("--labels", metavar="FILE", help="class names, one per line (line k names class k)")
    _add_backend_option(run)
    run.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=THREADS_HELP)
    _add_cluster_options(run)
    _add_shape_options(run)
    _add_model_options(run)
    _add_image_options(run)
    _add_pipeline_options(run, default_level=2)


def _eval_command(commands: Any) -> None:
    evaluate = _command(commands, "eval", cmd_eval, "top-1 and top-5 error of a classifier over a labelled set",
                        "The lecture's top-k error over a labelled set: the share of samples whose label is not "
                        "among the k classes the model scores highest. DATA is an .npz with 'x' (N inputs, "
                        "float32) and 'y' (N integer labels).")
    evaluate.add_argument("model", metavar="MODEL_OR_ARTIFACT", help=ARTIFACT_HELP)
    evaluate.add_argument("-d", "--data", required=True, metavar="DATA.npz|DIR",
                          help="labelled set: an .npz with arrays x and y, or a folder of class subfolders "
                               "(DIR/<class>/<image>; class k is the k-th subfolder name in sorted order)")
    evaluate.add_argument("--top-k", type=_csv(_positive_int, "positive integers"), default=[1, 5], metavar="K,...",
                          help="which top-k errors (default 1,5)")
    _add_backend_option(evaluate)
    evaluate.add_argument("--batch", type=_positive_int, default=64, help="samples per run (default 64)")
    evaluate.add_argument("--json", action="store_true", help="print machine-readable JSON")
    evaluate.set_defaults(threads=None)
    _add_cluster_options(evaluate)
    _add_shape_options(evaluate)
    _add_model_options(evaluate)
    _add_image_options(evaluate)
    _add_pipeline_options(evaluate, default_level=2)


def _profile_command(commands: Any) -> None:
    profile = _command(commands, "profile", cmd_profile,
                       "per-kernel times, shares, GFLOP/s and algorithms, against the whole call",
                       "Time a compiled model on random inputs (seeded): each node's kernel time (the median over "
                       "--repeat runs, after one warm-up), its share of all kernels' time, GFLOP/s (2 FLOPs per "
                       "MAC of the optimized node) and the algorithm the backend chose (numba-cpu: Winograd, "
                       "im2col+gemm, direct, ...), slowest first; then the kernels' sum against the median of as "
                       "many whole calls, timed apart, so the time outside the kernels shows. Backends that run "
                       "operation by operation (reference, torch, onnxruntime) time each operation.")
    profile.add_argument("model", metavar="MODEL_OR_ARTIFACT", help=ARTIFACT_HELP)
    _add_backend_option(profile)
    profile.add_argument("--batch", type=_positive_int, default=None,
                         help="batch size (default 1, or --input-shape's, or the artifact's)")
    profile.add_argument("--repeat", type=_positive_int, default=10,
                         help="timed runs, of the kernels and of whole calls (default 10)")
    profile.add_argument("--threads", type=_positive_int, default=None, metavar="N", help=THREADS_HELP)
    profile.add_argument("--json", action="store_true",
                         help="print {model, backend, opt_level, threads, inputs, repeat, rows (slowest first: node, "
                              "kernel, algorithm, ms, percent, macs, gflops), kernel_ms, gflops, end_to_end_ms, "
                              "outside_ms}")
    profile.set_defaults(mean=None, std=None)  # random inputs: no image normalization
    _add_shape_options(profile)
    _add_model_options(profile)
    _add_pipeline_options(profile, default_level=3)  # as `bench` measures our backends


def _bench_command(commands: Any) -> None:
    bench = _command(commands, "bench", cmd_bench,
                     "latency, GFLOP/s, compile time and memory on backends, against PyTorch and ONNX Runtime",
                     "Benchmark models on backends: a 0.2 s warm-up, then repeated timed runs, each model, backend and "
                     "batch in fresh processes over an empty kernel cache (compile time cold, then warm). Prints "
                     "min, median and max latency (a wide spread shows an unstable run), images/s, GFLOP/s (2 "
                     "FLOPs per MAC), the share of this machine's numpy matmul rate, compile times and peak memory; "
                     "--peers adds PyTorch eager and ONNX Runtime on the same graph and weights, with the ratio to "
                     "each.")
    bench.add_argument("models", nargs="+", metavar="MODEL", help="model descriptions or zoo names")
    bench.add_argument("-b", "--backend", type=_csv(str, "backend names"), default=["numba-cpu"], metavar="NAME,...",
                       help="backends to measure (default numba-cpu)")
    bench.add_argument("--batch", type=_csv(_positive_int, "positive integers"), default=[1], metavar="N,...",
                       help="batch sizes (default 1)")
    bench.add_argument("--repeat", type=_positive_int, default=10, help="timed runs after the warm-up (default 10)")
    bench.add_argument("--peers", action="store_true",
                       help="also run PyTorch eager (backend torch) and ONNX Runtime (backend onnxruntime)")
    bench.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="cores each run uses, ours and the peers' (default: all); numba-cpu, torch and "
                            "onnxruntime honour it")
    bench.add_argument("-O", dest="opt_level", type=int, choices=range(4), default=3, metavar="N",
                       help="optimization level of our backends (default 3); peers run the graph as written")
    bench.add_argument("--json", action="store_true",
                       help="print a list of records {model, backend, batch, threads (null: all cores), median_ms, "
                            "min_ms, max_ms, images_per_s, gflops, peak_fraction, compile_cold_s, compile_warm_s, "
                            "peak_rss_mb}")
    _add_model_options(bench)


def _tune_command(commands: Any) -> None:
    tune = _command(commands, "tune", cmd_tune,
                    "measure each layer's algorithms on this machine; -O3 then uses the fastest",
                    "Time every algorithm the backend can compute each distinct conv2d layer of the -O3 graph with "
                    "(numba-cpu: Winograd F(4x4)/F(2x2), im2col+gemm, direct, gemm for 1x1; the median of a few "
                    "runs on random inputs, each checked against the reference) on this machine, and store the "
                    "fastest in the tuning record beside the kernel cache ($CNNCOMP_CACHE_DIR), keyed by the CPU, "
                    "the thread count and the layer. `compile -O3` (and run, profile, bench at -O3) use it; other "
                    "levels, and layers the record does not name, get the defaults.")
    tune.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    _add_backend_option(tune, artifact=False)
    tune.add_argument("--batch", type=_positive_int, default=1, help="batch size to tune for (default 1)")
    tune.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                      help="cores a call uses, as the model will run (default: all); the record is per thread count")
    tune.add_argument("--json", action="store_true",
                      help="print {model, batch, backend, cpu, threads, record, seconds, layers: [{layer, nodes, "
                           "default, chosen, measured_ms, rejected}]}")
    tune.set_defaults(fully_convolutional=False)
    _add_shape_options(tune)
    _add_model_options(tune)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "disable_pass"):  # a command with the pipeline options
            args.passes = _pipeline(args)
        return args.run(args)
    except CnnCompError as exc:
        if args.debug:
            raise
        print(f"cnncomp: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cnncomp: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`cnncomp summary ... | head`): stop quietly, as Unix tools do, and keep Python from
        # complaining when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if args.debug:
            raise
        print(f"cnncomp: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)",
              file=sys.stderr)
        return EXIT_INTERNAL
