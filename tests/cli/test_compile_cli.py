"""`cnncomp compile` through the real entry point: the artifact, the closing line, kernel sources, the standalone
program, the progress bar on a terminal, and bad command lines (one line, exit 1, no file left behind)."""

import io
import os
import pty
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import cnncomp
from backends.numba_cpu import standalone

ROOT = Path(__file__).parents[2]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"


def cnncomp_cli(*args, cwd=ROOT, stderr=None, env=None):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=stderr is None,
                          stderr=stderr, text=True, cwd=cwd, timeout=600, env=env)


def assert_one_line_error(result, message):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncomp: error: "), result.stderr
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compile")
    result = cnncomp_cli("compile", "lenet5", "--weights", WEIGHTS, "-O", "3", "-o", folder / "lenet5.cnnx",
                         "--emit-source", folder / "src")
    assert result.returncode == 0, result.stderr
    return folder, result


def test_compile_writes_the_artifact_and_a_closing_line(compiled):
    folder, result = compiled
    line = result.stdout.strip()
    model = cnncomp.load(folder / "lenet5.cnnx")
    assert line.startswith(f"lenet5: {len(model.source)} kernels (")
    assert "compiled, " in line and "from the cache), arena 23.0 KiB, scratch " in line
    assert line.endswith(f"-> {folder / 'lenet5.cnnx'}")
    assert (model.backend, model.opt_level) == ("numba-cpu", 3)
    assert {p.stem for p in (folder / "src").iterdir()} == set(model.source)
    for name, text in model.source.items():
        assert (folder / "src" / f"{name}.py").read_text() == text


def test_compile_options_reach_the_artifact(tmp_path):
    result = cnncomp_cli("compile", "lenet5", "-b", "reference", "-O", "1", "--batch", "4", "--param", "classes=7",
                         "--disable-pass", "fold_constants", "-o", tmp_path / "small.cnnx")
    assert result.returncode == 0, result.stderr
    assert "reference backend (no generated kernels)" in result.stdout
    model = cnncomp.load(tmp_path / "small.cnnx")
    assert model.backend == "reference" and model.opt_level == 1 and model.disabled_passes == ("fold_constants",)
    assert model.input_shapes == {"image": (4, 1, 32, 32)} and model.output_shapes == {"logits": (4, 7)}


def test_default_output_is_named_after_the_model(tmp_path):
    result = cnncomp_cli("compile", "edge_detect", "-b", "reference", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "edge_detect.cnnx").is_file()


def test_emit_standalone_writes_the_program_and_its_weights(tmp_path):
    result = cnncomp_cli("compile", "lenet5", "--weights", WEIGHTS, "--emit", "standalone", "-o", tmp_path / "m.py")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(f"-> {tmp_path / 'm.py'}, {tmp_path / 'm.npz'}")
    # The same program and arrays the API writes (which tests/test_api.py runs without cnncomp).
    source, weights = standalone.program(cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS),
                                                         options={"progress": False}))
    assert (tmp_path / "m.py").read_text() == source
    with np.load(tmp_path / "m.npz") as written:
        assert set(written.files) == set(weights)
        for key in weights:
            np.testing.assert_array_equal(written[key], weights[key])


def test_progress_bar_over_kernels_on_a_terminal(tmp_path):
    """On a terminal (stderr a pty) the backend draws a bar over the kernels it compiles (an empty kernel cache
    here; from a warm cache there is nothing to wait for); in a pipe, nothing."""
    controller, terminal = pty.openpty()
    env = {**os.environ, "CNNCOMP_CACHE_DIR": str(tmp_path / "cache")}
    with os.fdopen(terminal, "w") as stderr:
        result = cnncomp_cli("compile", "lenet5", "-o", tmp_path / "m.cnnx", stderr=stderr, env=env)
    drawn = io.BytesIO()
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:
            break
        if not chunk:
            break
        drawn.write(chunk)
    os.close(controller)
    assert result.returncode == 0
    kernels = len(cnncomp.load(tmp_path / "m.cnnx").source)
    assert "compiling kernels [" in drawn.getvalue().decode()
    assert f"{kernels}/{kernels}" in drawn.getvalue().decode()
    quiet = cnncomp_cli("compile", "lenet5", "-o", tmp_path / "n.cnnx")
    assert quiet.stderr == ""


@pytest.mark.parametrize("args,message", [
    (["missing.cnn"], "missing.cnn: no such file"),
    (["lenet6"], "lenet6: no such file or zoo model; did you mean lenet5"),
    (["lenet5", "-b", "tpu"], "unknown backend 'tpu'"),
    (["lenet5", "--weights", "missing.npz"], "missing.npz: no such weights file"),
    (["lenet5", "--disable-pass", "fuse_everything"], "unknown pass 'fuse_everything'"),
    (["lenet5", "-b", "reference", "--emit", "standalone", "-o", "OUT/m.py"], "compile it with -b numba-cpu"),
    (["lenet5", "--emit", "standalone", "-o", "OUT/m.cnnx"], "name it .py"),
    (["lenet5", "-o", "OUT/no/such/folder/m.cnnx"], "folder OUT/no/such/folder does not exist"),
    (["lenet5", "-o", "OUT"], "it is a folder"),
])
def test_bad_command_lines_fail_in_one_line_and_write_nothing(tmp_path, args, message):
    args = [str(a).replace("OUT", str(tmp_path)) for a in args]
    result = cnncomp_cli("compile", *args, "--emit-source", tmp_path / "src", *([] if "-o" in args else
                                                                              ["-o", tmp_path / "m.cnnx"]))
    assert_one_line_error(result, message.replace("OUT", str(tmp_path)))
    assert list(tmp_path.iterdir()) == []


def test_the_artifact_is_a_zip_whose_manifest_comes_first(compiled):
    folder, _ = compiled
    with zipfile.ZipFile(folder / "lenet5.cnnx") as archive:
        assert archive.namelist()[0] == "manifest.json"
