"""The .cnnx artifact: what it holds, round trips in this process and a fresh one, atomic writes, and every way a
file can be unsound (each refused with one line, before anything in it is parsed, unpickled or run)."""

import hashlib
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnncomp
from cnncomp import artifact
from cnncomp.artifact import ArtifactError
from cnncomp.errors import CnnCompError
from frontends.builder import Builder

ROOT = Path(__file__).parents[1]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
DIGITS = ROOT / "frontends" / "zoo" / "weights" / "digits_test.npz"


@pytest.fixture(scope="module")
def lenet():
    return cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS), opt_level=3, options={"progress": False})


@pytest.fixture(scope="module")
def saved(lenet, tmp_path_factory):
    return lenet.save(tmp_path_factory.mktemp("artifact") / "lenet5.cnnx")


@pytest.fixture(scope="module")
def digits():
    with np.load(DIGITS) as split:
        return split["x"][:8]


def members(path):
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def rewrite(source, target, members_, manifest=None, rehash=False):
    """Write `members_` (name -> bytes) as a zip; `manifest` replaces the manifest, `rehash` recomputes hashes."""
    members_ = dict(members_)
    manifest = manifest if manifest is not None else json.loads(members_["manifest.json"])
    if rehash:
        manifest["members"] = {name: {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                               for name, data in members_.items() if name != "manifest.json"}
    members_["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members_.items():
            archive.writestr(name, data)
    return target


def test_the_artifact_holds_graph_weights_manifest_and_sources(lenet, saved):
    content = members(saved)
    manifest = json.loads(content["manifest.json"])
    assert manifest["format"] == artifact.FORMAT_VERSION and manifest["cnncomp_version"] == cnncomp.__version__
    assert (manifest["model"], manifest["backend"], manifest["opt_level"]) == ("lenet5", "numba-cpu", 3)
    assert manifest["inputs"] == {"image": {"shape": [1, 1, 32, 32], "dtype": "float32"}}
    assert manifest["outputs"] == {"logits": {"shape": [1, 10], "dtype": "float32"}}
    assert manifest["preprocessing"] == {"channels": 1, "size": [32, 32], "mean": [0.0], "std": [1.0]}
    assert set(content) == {"manifest.json", *manifest["members"]}
    for name, entry in manifest["members"].items():
        assert entry == {"bytes": len(content[name]), "sha256": hashlib.sha256(content[name]).hexdigest()}
    assert "memory_plan" not in json.loads(content["graph.json"]).get("meta", {})  # each backend plans its own
    with np.load(io.BytesIO(content["weights.npz"]), allow_pickle=False) as weights:
        assert set(weights.files) == set(lenet.graph.params)
        np.testing.assert_array_equal(weights["c1.weight"], lenet.graph.params["c1.weight"])
    sources = {name.removeprefix("source/").removesuffix(".py"): data.decode()
               for name, data in content.items() if name.startswith("source/")}
    assert sources == lenet.source


def test_loaded_model_is_the_saved_one(lenet, saved, digits):
    loaded = cnncomp.load(saved)
    assert loaded.graph.to_json() == lenet.graph.to_json()
    assert (loaded.backend, loaded.opt_level, loaded.preprocessing) == (lenet.backend, 3, lenet.preprocessing)
    np.testing.assert_array_equal(loaded(digits[:1]), lenet(digits[:1]))
    np.testing.assert_array_equal(loaded(digits), lenet(digits))  # a batch variant, compiled on demand
    assert cnncomp.load(saved, backend="reference").backend == "reference"


def test_a_fresh_process_gives_identical_outputs(lenet, saved, digits, tmp_path):
    np.save(tmp_path / "x.npy", digits)
    script = ("import sys, numpy as np, cnncomp; m = cnncomp.load(sys.argv[1]); "
              "np.save(sys.argv[3], m(np.load(sys.argv[2])))")
    done = subprocess.run([sys.executable, "-c", script, str(saved), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), lenet(digits))


def test_kernels_are_generated_again_never_taken_from_the_file(saved, tmp_path, digits):
    """Sources rewritten to fail, hashes updated to match: loading still works, with the kernels of the graph."""
    content = members(saved)
    poisoned = {name: (b"raise SystemExit('ran code from the artifact')\n" if name.startswith("source/") else data)
                for name, data in content.items()}
    path = rewrite(saved, tmp_path / "poisoned.cnnx", poisoned, rehash=True)
    loaded = cnncomp.load(path)
    assert all("SystemExit" not in text for text in loaded.source.values())
    assert loaded(digits[:1]).shape == (1, 10)


def test_weights_are_never_unpickled(saved, tmp_path):
    buffer = io.BytesIO()
    np.savez(buffer, **{"c1.weight": np.array([{"evil": 1}], dtype=object)})
    content = {**members(saved), "weights.npz": buffer.getvalue()}
    path = rewrite(saved, tmp_path / "pickled.cnnx", content, rehash=True)
    with pytest.raises(ArtifactError, match="weights.npz: cannot read weights: .*allow_pickle") as error:
        cnncomp.load(path)
    assert "\n" not in str(error.value)


def bad_artifacts(saved, tmp_path):
    content = members(saved)
    manifest = json.loads(content["manifest.json"])
    truncated = tmp_path / "truncated.cnnx"
    truncated.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    not_zip = tmp_path / "not_zip.cnnx"
    not_zip.write_text("hello")
    tampered = dict(content)
    tampered["graph.json"] = content["graph.json"].replace(b'"tanh"', b'"relu"', 1)
    bomb = {**content, "weights.npz": b"\0" * (64 << 20)}
    newer = {**manifest, "format": artifact.FORMAT_VERSION + 1, "cnncomp_version": "9.0"}
    flipped = {}
    with zipfile.ZipFile(saved) as archive:
        for member in ("graph.json", "weights.npz"):
            info = archive.getinfo(member)
            data = bytearray(saved.read_bytes())
            data[info.header_offset + 60 + info.compress_size // 2] ^= 0x10  # a bit inside the compressed member
            flipped[member] = tmp_path / f"flipped_{member}.cnnx"
            flipped[member].write_bytes(bytes(data))
    swapped = {**content, "graph.json": content["weights.npz"], "weights.npz": content["graph.json"]}
    other = Builder("other")
    other_manifest = members(cnncomp.compile(other.build(other.input("x", (1, 4, 4)).relu()), backend="reference")
                             .save(tmp_path / "other.cnnx"))["manifest.json"]
    untrained = cnncomp.compile("lenet5", opt_level=3, options={"progress": False})  # random weights
    untrained_manifest = members(untrained.save(tmp_path / "untrained.cnnx"))["manifest.json"]
    return {
        "missing": (tmp_path / "nothing.cnnx", "no such file"),
        "bit flipped in the graph": (flipped["graph.json"], "member graph.json is corrupt"),
        "bit flipped in the weights": (flipped["weights.npz"], "member weights.npz is corrupt"),
        "members swapped": (rewrite(saved, tmp_path / "swapped.cnnx", swapped),
                            "member graph.json does not match its sha256 in the manifest"),
        "manifest of another model": (rewrite(saved, tmp_path / "foreign.cnnx", content,
                                              manifest=json.loads(other_manifest)), "not listed in the manifest"),
        "manifest of other weights": (rewrite(saved, tmp_path / "reweighted.cnnx", content,
                                              manifest=json.loads(untrained_manifest)),
                                      "member weights.npz does not match its sha256 in the manifest"),
        "not a zip": (not_zip, "not a cnncomp artifact, or truncated or corrupt"),
        "truncated": (truncated, "not a cnncomp artifact, or truncated or corrupt"),
        "tampered": (rewrite(saved, tmp_path / "tampered.cnnx", tampered),
                     "member graph.json does not match its sha256 in the manifest"),
        "newer format": (rewrite(saved, tmp_path / "newer.cnnx", content, manifest=newer),
                         f"artifact format {artifact.FORMAT_VERSION + 1} (written by cnncomp 9.0) is newer than this "
                         f"cnncomp {cnncomp.__version__} reads (format {artifact.FORMAT_VERSION}); upgrade cnncomp"),
        "missing member": (rewrite(saved, tmp_path / "missing.cnnx",
                                   {k: v for k, v in content.items() if k != "weights.npz"}),
                           "member weights.npz is listed in the manifest but missing"),
        "extra member": (rewrite(saved, tmp_path / "extra.cnnx", {**content, "notes.txt": b"hi"}),
                         "unexpected member notes.txt (not listed in the manifest)"),
        "path escape": (rewrite(saved, tmp_path / "escape.cnnx", {**content, "../evil.py": b"x"}, rehash=True),
                        "unsafe member name '../evil.py'"),
        "absolute path": (rewrite(saved, tmp_path / "absolute.cnnx", {**content, "/etc/evil": b"x"}, rehash=True),
                          "unsafe member name '/etc/evil'"),
        "zip bomb": (rewrite(saved, tmp_path / "bomb.cnnx", bomb, rehash=True),
                     "member weights.npz would expand"),
        "no manifest": (rewrite(saved, tmp_path / "plain.cnnx", {}, manifest={"hello": 1}),
                        "manifest.json has no format version"),
        "manifest not json": (_raw_zip(tmp_path / "json.cnnx", {"manifest.json": b"{nope"}),
                              "manifest.json is not valid JSON"),
        "manifest without members": (rewrite(saved, tmp_path / "fields.cnnx", content,
                                             manifest={k: v for k, v in manifest.items() if k != "members"}),
                                     "'members' is missing"),
    }


def _raw_zip(path, content):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return path


CASES = ["missing", "bit flipped in the graph", "bit flipped in the weights", "members swapped",
         "manifest of another model", "manifest of other weights", "not a zip", "truncated", "tampered",
         "newer format", "missing member", "extra member",
         "path escape", "absolute path", "zip bomb", "no manifest", "manifest not json", "manifest without members"]


@pytest.mark.parametrize("case", CASES)
def test_unsound_artifacts_are_refused_with_one_line(saved, tmp_path, case):
    path, message = bad_artifacts(saved, tmp_path)[case]
    with pytest.raises(ArtifactError) as error:
        cnncomp.load(path)
    assert message in str(error.value)
    assert "\n" not in str(error.value) and str(error.value).startswith(str(path))


def test_writing_is_atomic(lenet, tmp_path, monkeypatch):
    with pytest.raises(CnnCompError, match="folder .* does not exist"):
        lenet.save(tmp_path / "missing" / "m.cnnx")
    target = tmp_path / "m.cnnx"
    target.write_bytes(b"the previous file")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", fail)
    with pytest.raises(CnnCompError, match="No space left on device"):
        lenet.save(target)
    assert target.read_bytes() == b"the previous file"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cnnx"]  # no temporary left behind
