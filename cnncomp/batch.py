"""Batch inference: many inputs through one compiled model, in this process or on Dask's distributed scheduler.

    results = cnncomp.run_many("lenet5.cnnx", paths, batch=64)                 # in this process
    results = cnncomp.run_many(model, paths, batch=64, client=Client(...))     # on a Dask cluster
    for result in cnncomp.iter_many(model, paths, client=client): ...          # as batches complete
    summary = run_to_folder(model, paths, "out/", batch=64, client=None)       # what `cnncomp run --out` does

An input is one sample: an image, a `.npy`, a `.npz` (see `cnncomp.data.read_sample`), or an array (or a dict of
arrays by input name) given directly. A bad input is a failed result with its message; the others go on. Inputs
go in batches of `batch`; a short batch is padded (zeros) to `batch` rows, so the model runs one batch size.

On Dask, the client reads each input file and sends its bytes with its batch (a worker may not see the client's
files), and the artifact's bytes go to every worker once, in a worker plugin: each worker process loads and
verifies it on its first batch (`cnncomp.load`, kernels from that machine's kernel cache) and keeps it. A call
uses one core: a worker runs as many batches at once as it has threads, so workers x threads is the cores used.
At most `IN_FLIGHT_PER_THREAD` batches per worker thread are submitted at a time (memory stays bounded on any
number of inputs). A worker that dies loses nothing: the scheduler runs its batches again elsewhere, and the
client takes each batch's result once.

`run_to_folder` writes each finished batch to `OUTDIR/.parts/` (atomically) as it arrives and the final files
(`predictions.csv`, `outputs.npy`, class maps under `maps/`) only when every batch is done; a part is named by a
hash of the model and of its inputs (path, size, modification time), so running the same command again skips
the batches done.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncomp.errors import CnnCompError
from cnncomp.progress import RateProgress

if TYPE_CHECKING:
    from cnncomp.api import CompiledModel

IN_FLIGHT_PER_THREAD = 4
PARTS = ".parts"
PREDICTIONS = "predictions.csv"
MAPS = "maps"

# What goes to a worker for one input: its name, and the file's bytes or the arrays by input name (or the
# message of a failure on the client, such as an unreadable file).
Entry = tuple[str, "bytes | dict[str, np.ndarray] | str"]


class BatchError(CnnCompError):
    """A batch run that cannot start or go on (no dask installed, a lost scheduler)."""


@dataclass(frozen=True)
class Result:
    """One input's outcome: `outputs` by name (one sample each, without the batch axis), or the `error`."""

    index: int
    input: str
    outputs: dict[str, np.ndarray] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ----- the inputs --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Input:
    name: str
    path: Path | None = None
    arrays: dict[str, np.ndarray] | None = None

    def fingerprint(self) -> str:
        if self.path is None:
            return _hash_arrays(hashlib.sha256(), self.arrays or {}).hexdigest()
        try:
            stat = self.path.stat()
        except OSError:
            return f"{self.path}:missing"
        return f"{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"

    def entry(self) -> Entry:
        if self.path is None:
            return self.name, self.arrays
        try:
            return self.name, self.path.read_bytes()
        except OSError as exc:
            return self.name, f"{self.name}: cannot read: {exc.strerror or exc}"


def _as_inputs(inputs: Iterable[Any], input_names: Sequence[str]) -> list[_Input]:
    """Files (str or Path) and arrays (one sample, or a dict of them by input name) as `_Input`s."""
    result = []
    for index, item in enumerate(inputs):
        if isinstance(item, (str, Path)):
            result.append(_Input(str(item), path=Path(item)))
        elif isinstance(item, Mapping):
            result.append(_Input(f"[{index}]", arrays={str(k): np.asarray(v) for k, v in item.items()}))
        elif len(input_names) == 1:
            result.append(_Input(f"[{index}]", arrays={input_names[0]: np.asarray(item)}))
        else:
            raise CnnCompError(f"input [{index}]: the model has inputs {', '.join(input_names)}; give a dict of "
                               "arrays by input name")
    return result


# ----- running one batch (in this process or on a worker) --------------------------------------------------
def run_batch(model: CompiledModel, entries: Sequence[Entry], batch: int,
              preprocessing: Mapping[str, Any] | None) -> list[tuple[dict[str, np.ndarray] | None, str | None]]:
    """Each entry's outputs (one sample each) or error message, in order. The samples run in batches of `batch`
    rows (the last one padded with zeros)."""
    from cnncomp.data import DataError, one_sample, read_sample

    results: list[tuple[dict[str, np.ndarray] | None, str | None]] = [(None, None)] * len(entries)
    samples: dict[int, dict[str, np.ndarray]] = {}
    for position, (name, content) in enumerate(entries):
        try:
            if isinstance(content, str):
                raise DataError(content)
            if isinstance(content, bytes):
                samples[position] = read_sample(name, model.input_shapes, preprocessing, model.name, content)
            else:
                missing = [key for key in model.input_shapes if key not in content]
                if missing:
                    raise DataError(f"{name}: no array for input {missing[0]!r} (the model's inputs: "
                                    f"{', '.join(model.input_shapes)})")
                samples[position] = {key: one_sample(f"{name}: input {key!r}", content[key], shape)
                                     for key, shape in model.input_shapes.items()}
        except DataError as exc:
            results[position] = (None, str(exc))
    positions = list(samples)  # every sample has the compiled shape (one_sample checks it)
    for start in range(0, len(positions), batch):
        chunk = positions[start: start + batch]
        inputs = {key: np.concatenate([samples[p][key] for p in chunk]
                                      + [np.zeros_like(samples[chunk[0]][key])] * (batch - len(chunk)))
                  for key in model.input_shapes}
        try:
            outputs = model.run(inputs)
        except CnnCompError as exc:
            for p in chunk:
                results[p] = (None, f"{entries[p][0]}: {exc}")
            continue
        for row, p in enumerate(chunk):
            results[p] = ({key: np.array(value[row]) for key, value in outputs.items()}, None)
    return results


# ----- engines: this process, or a Dask client ----------------------------------------------------------------
Batch = tuple[str, list[_Input]]  # a key and its inputs


class _LocalEngine:
    def __init__(self, model: CompiledModel, batch: int, preprocessing: Mapping[str, Any] | None) -> None:
        self.model, self.batch, self.preprocessing = model, batch, preprocessing

    def run(self, batches: Iterable[Batch]) -> Iterator[tuple[str, list]]:
        for key, inputs in batches:
            yield key, run_batch(self.model, [item.entry() for item in inputs], self.batch, self.preprocessing)

    def describe(self) -> str:
        return "this process"


class _DaskEngine:
    def __init__(self, model: CompiledModel, batch: int, preprocessing: Mapping[str, Any] | None,
                 client: Any) -> None:
        from cnncomp import artifact
        from cnncomp.dask_worker import ArtifactPlugin

        self.client, self.batch = client, batch
        content = artifact.to_bytes(model)
        self.plugin_name = f"cnncomp-{model.name}-{hashlib.sha256(content).hexdigest()[:16]}"
        client.register_plugin(ArtifactPlugin(model.name, content, preprocessing), name=self.plugin_name)

    def _workers_and_threads(self) -> tuple[int, int]:
        workers = self.client.scheduler_info().get("workers", {})
        return len(workers), sum(info.get("nthreads", 1) for info in workers.values())

    def describe(self) -> str:
        workers, threads = self._workers_and_threads()
        return f"{workers} Dask worker{'s' * (workers != 1)}, {threads} threads"

    def _in_flight_limit(self) -> int:
        return max(2, IN_FLIGHT_PER_THREAD * self._workers_and_threads()[1])

    def run(self, batches: Iterable[Batch]) -> Iterator[tuple[str, list]]:
        from distributed import as_completed

        from cnncomp.dask_worker import run_batch_on_worker

        pending = iter(batches)
        futures = as_completed()
        submitted = 0

        def submit_next() -> bool:
            nonlocal submitted
            item = next(pending, None)
            if item is None:
                return False
            key, inputs = item
            future = self.client.submit(run_batch_on_worker, self.plugin_name, [i.entry() for i in inputs],
                                        self.batch, key=f"cnncomp-batch-{key}", pure=False)
            future.batch_key = key
            futures.add(future)
            submitted += 1
            return True

        try:
            while submitted < self._in_flight_limit() and submit_next():
                pass
            for future in futures:
                key = future.batch_key
                try:
                    results = future.result()
                finally:
                    future.release()
                yield key, results
                submit_next()
        finally:
            for future in list(futures.futures):
                future.cancel()

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a lost scheduler: nothing left to unregister from
            self.client.unregister_worker_plugin(self.plugin_name)


@dataclass
class _Cluster:
    """The Dask client a run uses: the caller's, one on a running scheduler, or an embedded LocalCluster."""

    client: Any
    owned: list[Any] = field(default_factory=list)  # what this run started and must close

    def close(self) -> None:
        for thing in self.owned:
            with contextlib.suppress(Exception):  # closing after a lost scheduler
                thing.close()


def require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise BatchError("running on Dask needs dask.distributed: pip install 'cnncomp[dask]'") from None


def connect(workers: int | None = None, threads_per_worker: int = 1, scheduler: str | None = None,
            scheduler_file: str | None = None) -> _Cluster:
    """A Dask client: on the scheduler at `scheduler` (or named by `scheduler_file`), with the cluster's own
    security settings from Dask's configuration; or on a new LocalCluster of `workers` processes of
    `threads_per_worker` threads each, listening on the loopback interface only."""
    require_dask()
    import logging

    from distributed import Client, LocalCluster

    try:
        if scheduler or scheduler_file:
            client = Client(scheduler, scheduler_file=scheduler_file, timeout="20s")
            return _Cluster(client, [client])
        threads = str(threads_per_worker)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                               host="127.0.0.1", dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR,
                               preload=["cnncomp.dask_worker"],
                               env={"NUMBA_NUM_THREADS": threads, "OMP_NUM_THREADS": threads,
                                    "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        client = Client(cluster)
        return _Cluster(client, [client, cluster])
    except (OSError, TimeoutError) as exc:
        where = scheduler or scheduler_file or "a local cluster"
        raise BatchError(f"cannot connect to the Dask scheduler at {where}: {exc}") from None


def _engine(model: CompiledModel, batch: int, preprocessing: Mapping[str, Any] | None, client: Any):
    if client is None:
        return _LocalEngine(model, batch, preprocessing)
    return _DaskEngine(model, batch, preprocessing, client)


def _model(model: CompiledModel | str | Path | bytes, threads: int | None = None) -> CompiledModel:
    from cnncomp import api

    if isinstance(model, api.CompiledModel):
        return model
    if isinstance(model, bytes):
        return api.load("artifact.cnnx", content=model, threads=threads)
    return api.load(model, threads=threads)


def _batches(inputs: Sequence[_Input], batch: int) -> list[list[_Input]]:
    return [list(inputs[start: start + batch]) for start in range(0, len(inputs), batch)]


# ----- the Python API ----------------------------------------------------------------------------------------
def iter_many(model: CompiledModel | str | Path | bytes, inputs: Iterable[Any], *, batch: int = 32,
              client: Any = None, preprocessing: Mapping[str, Any] | None = None) -> Iterator[Result]:
    """Run `model` (compiled, or an artifact's path or bytes) on every input (file paths, or arrays of one
    sample), yielding each input's Result as its batch completes (`Result.index` is its place in `inputs`).
    With a `dask.distributed.Client`, batches run on its cluster."""
    from cnncomp.runtime import positive_count

    batch = positive_count("batch", batch, "inputs per batch")
    compiled = _model(model)
    preprocessing = compiled.preprocessing if preprocessing is None else dict(preprocessing)
    items = _as_inputs(inputs, list(compiled.input_shapes))
    chunks = _batches(items, batch)
    engine = _engine(compiled, batch, preprocessing, client)
    starts = {str(number): number * batch for number in range(len(chunks))}
    try:
        for key, outcomes in engine.run((str(number), chunk) for number, chunk in enumerate(chunks)):
            start = starts[key]
            for offset, (outputs, error) in enumerate(outcomes):
                yield Result(start + offset, items[start + offset].name, outputs, error)
    finally:
        if isinstance(engine, _DaskEngine):
            engine.close()


def run_many(model: CompiledModel | str | Path | bytes, inputs: Iterable[Any], *, batch: int = 32,
             client: Any = None, preprocessing: Mapping[str, Any] | None = None) -> list[Result]:
    """Every input's Result, in input order (see `iter_many`)."""
    results = list(iter_many(model, inputs, batch=batch, client=client, preprocessing=preprocessing))
    return sorted(results, key=lambda result: result.index)


# ----- runs into a folder: parts, resume, final files --------------------------------------------------------
@dataclass
class Summary:
    inputs: int
    done: int
    failed: int
    resumed: int  # inputs whose batch was done by an earlier run
    seconds: float  # running the batches this run computed
    files: list[Path]

    @property
    def images_per_second(self) -> float:
        computed = self.inputs - self.resumed
        return computed / self.seconds if self.seconds > 0 else 0.0

    def line(self, out: Path) -> str:
        text = f"{self.inputs:,} inputs, {self.done:,} done, {self.failed:,} failed"
        if self.failed:
            text += f" (see {out / PREDICTIONS})"
        if self.resumed:
            text += f", {self.resumed:,} from an earlier run"
        return f"{text}, {self.images_per_second:,.0f} img/s" if self.resumed < self.inputs else text


def model_fingerprint(model: CompiledModel, preprocessing: Mapping[str, Any] | None) -> str:
    """A hash of what decides a model's outputs: its graph, weights, backend and preprocessing."""
    digest = _hash_arrays(hashlib.sha256(model.graph.to_json().encode()), model.graph.params)
    digest.update(json.dumps([model.backend, preprocessing], sort_keys=True).encode())
    return digest.hexdigest()


def _hash_arrays(digest: Any, arrays: Mapping[str, np.ndarray]) -> Any:
    """`digest` updated with each array's name, dtype, shape and bytes, in name order."""
    for name, value in sorted(arrays.items()):
        digest.update(f"{name}{value.dtype}{value.shape}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest


def run_to_folder(model: CompiledModel, inputs: Sequence[str | Path], out: str | Path, *, batch: int = 32,
                  client: Any = None, preprocessing: Mapping[str, Any] | None = None, top_k: int = 5,
                  labels: Sequence[str] | None = None, write_outputs: bool = True,
                  progress: bool | None = None, on_start: Callable[[str], None] | None = None) -> Summary:
    """Run `model` on every input file and write OUTDIR/predictions.csv, outputs.npy (or .npz for several
    outputs) and maps/ (see the module doc). Finished batches from an earlier run of the same model on the same
    inputs are taken from OUTDIR/.parts instead of run again."""
    from cnncomp.runtime import positive_count

    batch = positive_count("batch", batch, "inputs per batch")
    out = Path(out)
    preprocessing = model.preprocessing if preprocessing is None else dict(preprocessing)
    _check_labels(model, labels)
    items = _as_inputs(inputs, list(model.input_shapes))
    parts = out / PARTS
    try:
        parts.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BatchError(f"cannot create {parts}: {exc.strerror or exc}") from None
    fingerprint = model_fingerprint(model, preprocessing)
    chunks = _batches(items, batch)
    keys = [_batch_key(fingerprint, batch, chunk) for chunk in chunks]
    paths = {key: parts / f"{number:06d}-{key}.npz" for number, key in enumerate(keys)}
    to_run = [(key, chunk) for key, chunk in zip(keys, chunks, strict=True) if not paths[key].is_file()]
    resumed = sum(len(chunk) for key, chunk in zip(keys, chunks, strict=True) if paths[key].is_file())
    engine = _engine(model, batch, preprocessing, client)
    if on_start is not None:
        on_start(engine.describe())
    bar = RateProgress(len(items) - resumed, "running", "img", progress)
    started = time.perf_counter()
    try:
        chunks_by_key = dict(to_run)
        for key, outcomes in engine.run(to_run):
            chunk = chunks_by_key[key]
            _write_part(paths[key], [item.name for item in chunk], outcomes, model.output_shapes)
            bar.advance(len(chunk))
    except KeyboardInterrupt:
        bar.close()
        done = sum(path.is_file() for path in paths.values())
        print(f"cnncomp: {done} of {len(paths)} batches are done and kept in {parts}; run the same command "
              "again to resume", file=sys.stderr)
        raise
    except CnnCompError:
        raise
    except Exception as exc:
        if client is None or not _is_connection_error(exc):
            raise
        done = sum(path.is_file() for path in paths.values())
        raise BatchError(f"lost the Dask scheduler ({type(exc).__name__}); {done} of {len(paths)} batches are done "
                         f"and kept in {parts}: run the same command again to resume") from None
    finally:
        if isinstance(engine, _DaskEngine):
            engine.close()
    seconds = time.perf_counter() - started
    bar.close()
    done, failed, files = _assemble(out, [paths[key] for key in keys], model, top_k, labels, write_outputs,
                                    len(items))
    return Summary(len(items), done, failed, resumed, seconds, files)


def _check_labels(model: CompiledModel, labels: Sequence[str] | None) -> None:
    from cnncomp.data import is_classifier_output

    for name, shape in model.output_shapes.items():
        classes = int(np.prod(shape[1:]))
        if labels is not None and is_classifier_output(shape) and len(labels) < classes:
            raise BatchError(f"{len(labels)} labels, but output {name} has {classes} classes")


def _is_connection_error(exc: BaseException) -> bool:
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (CommClosedError, OSError, TimeoutError)) or type(exc).__name__ == "CancelledError"


def _batch_key(fingerprint: str, batch: int, chunk: Sequence[_Input]) -> str:
    digest = hashlib.sha256(f"{fingerprint}:{batch}".encode())
    for item in chunk:
        digest.update(item.fingerprint().encode())
    return digest.hexdigest()[:20]


def _write_part(path: Path, names: list[str], outcomes: list, output_shapes: Mapping[str, tuple[int, ...]]) -> None:
    from cnncomp.data import write_atomically

    arrays: dict[str, np.ndarray] = {"names": np.asarray(names, dtype=str),
                                     "errors": np.asarray([error or "" for _, error in outcomes], dtype=str)}
    for name, shape in output_shapes.items():
        rows = [outputs[name] if outputs is not None else None for outputs, _ in outcomes]
        sample_shape = next((row.shape for row in rows if row is not None), tuple(shape[1:]))
        arrays[f"output.{name}"] = np.stack([row if row is not None else np.full(sample_shape, np.nan, np.float32)
                                             for row in rows]).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomically({path: buffer.getvalue()})


def _read_part(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def _assemble(out: Path, part_paths: list[Path], model: CompiledModel, top_k: int,
              labels: Sequence[str] | None, write_outputs: bool, total: int) -> tuple[int, int, list[Path]]:
    """The final files from the parts, in input order, written atomically together."""
    from cnncomp.data import class_map_png, is_classifier_output, is_map_output, softmax, write_atomically
    from cnncomp.data import top_k as best_of

    output_names = list(model.output_shapes)
    classifiers = [n for n in output_names if is_classifier_output(model.output_shapes[n])]
    maps = [n for n in output_names if is_map_output(model.output_shapes[n])]
    prefix = (lambda name: f"{name}:") if len(classifiers) > 1 else (lambda name: "")
    header = ["input", "status"]
    for name in classifiers:
        classes = int(np.prod(model.output_shapes[name][1:]))
        for rank in range(1, min(top_k, classes) + 1):
            header += [f"{prefix(name)}class_{rank}", *([f"{prefix(name)}label_{rank}"] if labels else []),
                       f"{prefix(name)}probability_{rank}"]
    header += [f"map{'.' + n if len(maps) > 1 else ''}" for n in maps] + ["error"]
    width = len(str(max(total - 1, 0)))
    rows: list[list[str]] = []
    map_files: dict[Path, bytes] = {}
    done = failed = 0
    index = 0
    for path in part_paths:
        part = _read_part(path)
        for row_in_part, (name, error) in enumerate(zip(part["names"], part["errors"], strict=True)):
            row = [str(name), "failed" if error else "ok"]
            if error:
                failed += 1
                row += [""] * (len(header) - 3) + [str(error)]
                rows.append(row)
                index += 1
                continue
            done += 1
            for output in classifiers:
                scores = part[f"output.{output}"][row_in_part].reshape(1, -1)
                probabilities = scores if model.softmax_output else softmax(scores)
                for cls in best_of(probabilities, min(top_k, scores.shape[1]))[0]:
                    row += [str(cls), *([labels[cls]] if labels else []), f"{probabilities[0, cls]:.6f}"]
            for output in maps:
                stem = Path(str(name)).stem if not str(name).startswith("[") else "array"
                file = Path(MAPS) / f"{index:0{width}d}-{stem}{'.' + output if len(maps) > 1 else ''}.png"
                map_files[out / file] = class_map_png(part[f"output.{output}"][row_in_part])
                row.append(str(file))
            rows.append([*row, ""])
            index += 1
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    files: dict[Path, Any] = {out / PREDICTIONS: text.getvalue().encode()}
    if write_outputs:
        single = len(output_names) == 1
        target = out / ("outputs.npy" if single else "outputs.npz")
        files[target] = _outputs_writer(part_paths, output_names, single)
    if map_files:
        (out / MAPS).mkdir(exist_ok=True)
        files.update(map_files)
    write_atomically(files)
    return done, failed, list(files)


def _outputs_writer(part_paths: list[Path], output_names: list[str], single: bool) -> Callable[[Path], None]:
    """Writes the outputs (one row per input, NaN rows for failed inputs) part by part, never all in memory."""

    def write(temporary: Path) -> None:
        if single:
            (name,) = output_names
            _write_rows(temporary, part_paths, f"output.{name}")
            return
        import zipfile

        with zipfile.ZipFile(temporary, "w", allowZip64=True) as archive:
            for name in output_names:
                staging = temporary.with_name(temporary.name + f".{len(name)}.npy")
                try:
                    _write_rows(staging, part_paths, f"output.{name}")
                    archive.write(staging, f"{name}.npy")
                finally:
                    staging.unlink(missing_ok=True)

    return write


def _write_rows(path: Path, part_paths: list[Path], key: str) -> None:
    shapes = []
    for part_path in part_paths:
        with np.load(part_path, allow_pickle=False) as archive:
            shapes.append(archive[key].shape)
    rows = sum(shape[0] for shape in shapes)
    sample_shape = shapes[0][1:] if shapes else ()
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, *sample_shape))
    start = 0
    for part_path, shape in zip(part_paths, shapes, strict=True):
        with np.load(part_path, allow_pickle=False) as archive:
            array[start: start + shape[0]] = archive[key]
        start += shape[0]
    array.flush()
    del array
