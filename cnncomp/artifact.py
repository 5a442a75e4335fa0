"""The `.cnnx` artifact: a compiled model in one zip file.

Members:

    manifest.json       format version, cnncomp version, model name, backend, opt level, passes left out,
                        input and output shapes, image preprocessing (if the model takes images), and the
                        size and sha256 of every other member
    graph.json          the optimized graph (`Graph.to_json`; its meta holds the memory plan at -O3)
    weights.npz         its parameters (`np.savez`, read back with pickles refused)
    source/<module>.py  the generated kernels, for reading only

Loading checks, in this order and before anything is parsed: a zip file; member names that stay inside the
archive; no member or total larger than the limits, nor expanding like a zip bomb; the manifest's format no newer
than this cnncomp reads; exactly the members the manifest lists; each member's size and sha256. Nothing is
unpickled and no code from the file runs: the backend generates the kernels again from the graph (numba-cpu
finds them in its kernel cache). Writing is atomic: the file appears whole or not at all.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from cnncomp import __version__
from cnncomp.data import check_writable, write_atomically
from cnncomp.errors import CnnCompError
from cnncomp.ir import Graph

if TYPE_CHECKING:
    from cnncomp.api import CompiledModel

FORMAT_VERSION = 1
SUFFIX = ".cnnx"
MANIFEST = "manifest.json"
GRAPH = "graph.json"
WEIGHTS = "weights.npz"
SOURCE_FOLDER = "source"

MAX_MEMBERS = 10_000
MAX_MANIFEST_BYTES = 16 << 20
MAX_TOTAL_BYTES = 8 << 30  # the largest zoo model (VGG-19) holds 0.6 GB of weights
# Deflate compresses at most about 1000:1; our members (JSON, kernel sources, float weights) stay far below 100:1,
# so a large member that expands more than this is a zip bomb.
MAX_EXPANSION = 100
EXPANSION_CHECKED_FROM = 1 << 20


class ArtifactError(CnnCompError):
    """A `.cnnx` file that cannot be written, or that is not a sound artifact this cnncomp can load."""


# ----- writing -------------------------------------------------------------------------------------------------
def save(model: CompiledModel, path: str | Path) -> Path:
    """Write `model` to `path` (atomically); returns the path."""
    path = check_writable(path)
    write_atomically({path: lambda temporary: _write(model, temporary)})
    return path


def to_bytes(model: CompiledModel) -> bytes:
    """The artifact of `model`, as the bytes of its file (what a cluster's workers receive)."""
    buffer = io.BytesIO()
    _write(model, buffer)
    return buffer.getvalue()


def _write(model: CompiledModel, target: Path | io.BytesIO) -> None:
    weights = io.BytesIO()
    np.savez(weights, **model.graph.params)
    members = {GRAPH: model.graph.to_json().encode(), WEIGHTS: weights.getvalue()}
    members.update({f"{SOURCE_FOLDER}/{name}.py": text.encode() for name, text in model.source.items()})
    manifest = {
        "format": FORMAT_VERSION,
        "cnncomp_version": __version__,
        "model": model.graph.name,
        "backend": model.backend,
        "opt_level": model.opt_level,
        "disabled_passes": list(model.disabled_passes),
        "fully_convolutional": model.fully_convolutional,
        "inputs": _tensors(model.graph, [node.name for node in model.graph.inputs]),
        "outputs": _tensors(model.graph, model.graph.outputs),
        "preprocessing": model.preprocessing,
        "members": {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                    for name, data in members.items()},
    }
    with zipfile.ZipFile(target, "w") as archive:
        archive.writestr(MANIFEST, json.dumps(manifest, indent=1), zipfile.ZIP_DEFLATED)
        for name, data in members.items():
            # Weights barely compress; storing them makes loading a plain copy.
            archive.writestr(name, data, zipfile.ZIP_STORED if name == WEIGHTS else zipfile.ZIP_DEFLATED)


def _tensors(graph: Graph, names: list[str]) -> dict[str, dict[str, Any]]:
    return {name: {"shape": list(graph.node(name).shape), "dtype": graph.node(name).type.dtype} for name in names}


# ----- reading -------------------------------------------------------------------------------------------------
def read(path: str | Path, content: bytes | None = None) -> tuple[dict[str, Any], Graph]:
    """The manifest and the graph (with its weights) of a verified artifact: the file at `path`, or its `content`
    (a cluster's worker gets the bytes; `path` then only names them in errors)."""
    path = Path(path)
    manifest, members = _verified_members(path, content)
    try:
        with np.load(io.BytesIO(members[WEIGHTS]), allow_pickle=False) as archive:
            params = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path}: {WEIGHTS}: cannot read weights: {exc}") from None
    try:
        graph = Graph.from_json(members[GRAPH].decode("utf-8"), params)
        graph.validate()
    except (CnnCompError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {GRAPH}: {exc}") from None
    for kind, names in (("inputs", [node.name for node in graph.inputs]), ("outputs", graph.outputs)):
        if manifest[kind] != _tensors(graph, names):
            raise ArtifactError(f"{path}: the manifest's {kind} do not match the graph's")
    return manifest, graph


def _verified_members(path: Path, content: bytes | None) -> tuple[dict[str, Any], dict[str, bytes]]:
    if content is None and not path.is_file():
        raise ArtifactError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path if content is None else io.BytesIO(content)) as archive:
            infos = archive.infolist()
            _check_names_and_sizes(path, infos)
            by_name = {info.filename: info for info in infos}
            if MANIFEST not in by_name:
                raise ArtifactError(f"{path}: no {MANIFEST}; not a cnncomp artifact")
            manifest = _manifest(path, _read(path, archive, by_name[MANIFEST]))
            listed = manifest["members"]
            missing = sorted(set(listed) - set(by_name))
            if missing:
                raise ArtifactError(f"{path}: member {missing[0]} is listed in the manifest but missing")
            extra = sorted(set(by_name) - set(listed) - {MANIFEST})
            if extra:
                raise ArtifactError(f"{path}: unexpected member {extra[0]} (not listed in the manifest)")
            members = {}
            for name, expected in listed.items():
                data = _read(path, archive, by_name[name])
                if len(data) != expected["bytes"] or hashlib.sha256(data).hexdigest() != expected["sha256"]:
                    raise ArtifactError(f"{path}: member {name} does not match its sha256 in the manifest "
                                        "(corrupt or tampered with)")
                members[name] = data
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path}: not a cnncomp artifact, or truncated or corrupt ({exc})") from None
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return manifest, members


def _check_names_and_sizes(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    if len(infos) > MAX_MEMBERS:
        raise ArtifactError(f"{path}: {len(infos)} members; an artifact has at most {MAX_MEMBERS}")
    seen = set()
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name).parts
        if (not name or name.startswith("/") or "\\" in name or ".." in parts or ":" in name or info.is_dir()
                or name != str(PurePosixPath(name))):
            raise ArtifactError(f"{path}: unsafe member name {name!r} (outside the archive or not a plain file)")
        if name in seen:
            raise ArtifactError(f"{path}: member {name} appears twice")
        seen.add(name)
        if (info.file_size > EXPANSION_CHECKED_FROM
                and info.file_size > MAX_EXPANSION * max(info.compress_size, 1)):
            raise ArtifactError(f"{path}: member {name} would expand {info.file_size // max(info.compress_size, 1)}x "
                                f"to {info.file_size:,} bytes; refusing a likely zip bomb")
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise ArtifactError(f"{path}: members total {total:,} bytes, over the limit of {MAX_TOTAL_BYTES:,}")


def _read(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    """A member's bytes; zipfile never yields more than the declared size, and checks the CRC at the end."""
    limit = MAX_MANIFEST_BYTES if info.filename == MANIFEST else MAX_TOTAL_BYTES
    if info.file_size > limit:
        raise ArtifactError(f"{path}: member {info.filename} is {info.file_size:,} bytes, over the limit of {limit:,}")
    try:
        with archive.open(info) as member:
            return member.read(info.file_size + 1)
    except (zipfile.BadZipFile, EOFError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise ArtifactError(f"{path}: member {info.filename} is corrupt ({exc})") from None
    except Exception as exc:  # zlib.error and friends on damaged compressed data
        raise ArtifactError(f"{path}: member {info.filename} is corrupt ({type(exc).__name__}: {exc})") from None


def _manifest(path: Path, data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ArtifactError(f"{path}: {MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        raise ArtifactError(f"{path}: {MANIFEST} has no format version; not a cnncomp artifact")
    version = manifest["format"]
    if version > FORMAT_VERSION:
        made_by = manifest.get("cnncomp_version", "a newer cnncomp")
        raise ArtifactError(f"{path}: artifact format {version} (written by cnncomp {made_by}) is newer than this "
                            f"cnncomp {__version__} reads (format {FORMAT_VERSION}); upgrade cnncomp")
    if version < 1:
        raise ArtifactError(f"{path}: unknown artifact format {version}")
    expected = {"cnncomp_version": str, "model": str, "backend": str, "opt_level": int, "disabled_passes": list,
                "fully_convolutional": bool, "inputs": dict, "outputs": dict, "members": dict}
    for key, kind in expected.items():
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(f"{path}: {MANIFEST}: {key!r} is missing or not a {kind.__name__}")
    if not isinstance(manifest.get("preprocessing"), dict | type(None)):
        raise ArtifactError(f"{path}: {MANIFEST}: 'preprocessing' is not an object")
    for name in (GRAPH, WEIGHTS):
        if name not in manifest["members"]:
            raise ArtifactError(f"{path}: {MANIFEST} does not list {name}")
    for name, entry in manifest["members"].items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int)
                or not isinstance(entry.get("sha256"), str)):
            raise ArtifactError(f"{path}: {MANIFEST}: member {name!r} has no size and sha256")
    return manifest
