"""`cnncomp run` through the real entry point: the trained LeNet names the digit of a test image, outputs equal the
in-process model's, arrays and images in, class maps out, `--threads` handed to the compiled model, and every bad
input refused in one line with no file written."""

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnncomp
from cnncomp import api, cli
from cnncomp.data import load_image, softmax
from tests.helpers import assert_one_line_error, cnncomp_cli

ROOT = Path(__file__).parents[2]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
DIGIT_IMAGE = ROOT / "examples" / "images" / "digit_7.png"
FLOWER = ROOT / "examples" / "images" / "flower.jpg"


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    """LeNet with the trained weights, compiled by the CLI (so the kernel cache holds its kernels)."""
    path = tmp_path_factory.mktemp("run") / "lenet5.cnnx"
    result = cnncomp_cli("compile", "lenet5", "--weights", WEIGHTS, "-o", path)
    assert result.returncode == 0, result.stderr
    return path


def top_lines(stdout):
    return [line.split() for line in stdout.splitlines() if line.startswith("  ")]


def test_lenet_names_the_digit_of_a_test_image(artifact, tmp_path):
    result = cnncomp_cli("run", artifact, "-i", DIGIT_IMAGE, "-o", tmp_path / "out.npy")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"lenet5 (numba-cpu, -O2) on {DIGIT_IMAGE}: logits 1x10"
    ranks = top_lines(result.stdout)
    assert len(ranks) == 5 and ranks[0][:3] == ["1.", "class", "7"]
    # The written array is exactly what this process's model gives on the same image.
    model = cnncomp.load(artifact)
    expected = model(load_image(DIGIT_IMAGE, model.preprocessing, "lenet5"))
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    probabilities = softmax(expected)[0]
    assert ranks[0][3] == f"{100 * probabilities[7]:.2f}%"
    assert result.stdout.strip().endswith(f"wrote {tmp_path / 'out.npy'}")


def test_labels_and_top_k(artifact, tmp_path):
    labels = tmp_path / "digits.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    result = cnncomp_cli("run", artifact, "-i", DIGIT_IMAGE, "--labels", labels, "--top-k", "3")
    assert result.returncode == 0, result.stderr
    ranks = top_lines(result.stdout)
    assert len(ranks) == 3 and ranks[0][:2] == ["1.", "seven"]
    assert list(tmp_path.iterdir()) == [labels]  # without -o nothing is written


def test_arrays_in_any_batch_size_and_from_npz(artifact, digits, tmp_path):
    x = digits[0][:4]
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", image=x)
    model = cnncomp.load(artifact)
    for name in ("x.npy", "x.npz"):
        result = cnncomp_cli("run", artifact, "-i", tmp_path / name, "-o", tmp_path / f"{name}.out.npy")
        assert result.returncode == 0, result.stderr
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}.out.npy"), model(x))
        assert [line for line in result.stdout.splitlines() if "top-5" in line] == [
            f"logits[{i}] top-5:" for i in range(4)]
        predicted = [int(r[2]) for r in top_lines(result.stdout) if r[0] == "1."]
        assert predicted == list(model(x).argmax(axis=1))


def test_a_model_name_compiles_then_runs(digits, tmp_path):
    np.save(tmp_path / "x.npy", digits[0][:2])
    result = cnncomp_cli("run", "lenet5", "--weights", WEIGHTS, "-b", "reference", "-i", tmp_path / "x.npy",
                         "-o", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    expected = cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS), backend="reference")(digits[0][:2])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)


def test_threads_give_the_same_outputs(artifact, digits, tmp_path):
    x = digits[0][:2]
    np.save(tmp_path / "x.npy", x)
    result = cnncomp_cli("run", artifact, "-i", tmp_path / "x.npy", "--threads", "1", "-o", tmp_path / "y.npy")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), cnncomp.load(artifact)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("source", ["artifact", "zoo name"])
@pytest.mark.parametrize("threads", [None, 2])
def test_threads_reach_the_compiled_model(monkeypatch, artifact, digits, tmp_path, capsys, source, threads):
    """`--threads N` is the `threads` option of the compiled model (`cnncomp.compile(..., threads=N)`); without
    it the backend uses all cores."""
    compiled = []

    class Recording(api.CompiledModel):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            compiled.append(self)

    monkeypatch.setattr(api, "CompiledModel", Recording)
    np.save(tmp_path / "x.npy", digits[0][:1])
    model = artifact if source == "artifact" else "lenet5"
    flags = [] if threads is None else ["--threads", str(threads)]
    assert cli.main(["run", str(model), "-b", "reference", "-i", str(tmp_path / "x.npy"), *flags]) == 0
    assert [m.options.get("threads") for m in compiled] == [threads]
    assert "logits 1x10" in capsys.readouterr().out


@pytest.mark.parametrize("threads", ["0", "-1", "all"])
def test_threads_must_be_a_positive_integer(threads):
    result = cnncomp_cli("run", "lenet5", "-i", DIGIT_IMAGE, "--threads", threads)
    assert result.returncode == 2 and "--threads: expected a positive integer" in result.stderr
    assert "Traceback" not in result.stderr


SEGMENTER = """\
# A small fully convolutional segmenter: per-pixel scores of 5 classes, like FCN's and U-Net's outputs
model segmenter(classes = 5)
input image: 3x48x64
x = image -> conv(8, 3, padding=same) -> relu -> max_pool(2) -> conv(16, 3, padding=same) -> relu
output scores = x -> upconv(classes, 2, stride=2)
"""


def test_segmentation_writes_the_class_map(tmp_path):
    (tmp_path / "segmenter.cnn").write_text(SEGMENTER)
    result = cnncomp_cli("run", tmp_path / "segmenter.cnn", "-i", FLOWER, "-o", tmp_path / "seg.npy")
    assert result.returncode == 0, result.stderr
    scores = np.load(tmp_path / "seg.npy")
    assert scores.shape == (1, 5, 48, 64)
    picture = Image.open(tmp_path / "seg.png")
    assert picture.mode == "P" and picture.size == (64, 48)
    np.testing.assert_array_equal(np.asarray(picture), scores[0].argmax(axis=0))
    assert "scores[0] class map 48x64: class " in result.stdout
    model = cnncomp.compile(cnncomp.load_model(tmp_path / "segmenter.cnn"), backend="reference", opt_level=0)
    image = load_image(FLOWER, model.preprocessing, "segmenter")  # ImageNet mean and std, resized and cropped
    np.testing.assert_allclose(scores, model(image), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_fcn_from_the_zoo_segments_an_image(tmp_path):
    """FCN-8s at 64x96 on the reference backend: VGG-16's 134M random weights take a while to draw."""
    args = ["fcn8s", "--param", "height=64", "--param", "width=96", "-b", "reference", "-O", "0"]
    result = cnncomp_cli("run", *args, "-i", FLOWER, "-o", tmp_path / "seg.npy")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "seg.npy").shape == (1, 21, 64, 96)
    assert Image.open(tmp_path / "seg.png").size == (96, 64)


def test_an_image_filter_writes_its_picture(tmp_path):
    result = cnncomp_cli("run", "edge_detect", "-b", "reference", "-i", DIGIT_IMAGE, "-o", tmp_path / "edges.npy")
    assert result.returncode == 0, result.stderr
    edges = np.load(tmp_path / "edges.npy")
    assert edges.shape == (1, 1, 64, 64)
    picture = np.asarray(Image.open(tmp_path / "edges.png"))
    assert picture.shape == (64, 64) and picture.min() == 0 and picture.max() == 255


def corrupt_artifacts(artifact, tmp_path):
    truncated = tmp_path / "truncated.cnnx"
    truncated.write_bytes(artifact.read_bytes()[:1000])
    with zipfile.ZipFile(artifact) as archive:
        content = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(content["manifest.json"])
    tampered, newer = tmp_path / "tampered.cnnx", tmp_path / "newer.cnnx"
    for path, changes in ((tampered, {"weights.npz": content["weights.npz"][:-8] + b"\1" * 8}),
                          (newer, {"manifest.json": json.dumps({**manifest, "format": 99}).encode()})):
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in {**content, **changes}.items():
                archive.writestr(name, data)
    return {"truncated": truncated, "tampered": tampered, "newer": newer}


@pytest.mark.parametrize("case,message", [
    ("missing input", "nothing.npy: no such file"),
    ("wrong channels", "flower.jpg: a 3-channel image (mode RGB), but model 'lenet5' takes 1-channel (grayscale)"),
    ("wrong shape", "input 'image': shape 1x1x28x28, expected Nx1x32x32"),
    ("wrong dtype", "input 'image': dtype float64, expected float32"),
    ("not an image", "not a PNG or JPEG image Pillow can read"),
    ("npz without the input", "no array named 'image'"),
    ("unwritable output", "folder OUT/missing does not exist"),
    ("wrong output suffix", "written as .npy"),
    ("too few labels", "2 labels, but logits has 10 classes"),
    ("truncated artifact", "truncated.cnnx: not a cnncomp artifact, or truncated or corrupt"),
    ("tampered artifact", "member weights.npz does not match its sha256"),
    ("newer artifact", "artifact format 99 (written by cnncomp 0.1.0) is newer than this cnncomp"),
    ("missing model", "lenet55: no such file or zoo model"),
])
def test_bad_inputs_fail_in_one_line_and_write_nothing(artifact, tmp_path, case, message):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    np.save(inputs / "small.npy", np.zeros((1, 1, 28, 28), np.float32))
    np.save(inputs / "double.npy", np.zeros((1, 1, 32, 32)))
    np.savez(inputs / "two.npz", a=np.zeros((1, 1, 32, 32), np.float32), b=np.zeros((1, 1, 32, 32), np.float32))
    (inputs / "fake.png").write_text("not a picture")
    (inputs / "two.txt").write_text("zero\none\n")
    bad = corrupt_artifacts(artifact, inputs)
    out = tmp_path / "out"
    out.mkdir()
    model, source, extra = artifact, DIGIT_IMAGE, []
    output = out / "y.npy"
    if case == "missing input":
        source = inputs / "nothing.npy"
    elif case == "wrong channels":
        source = FLOWER
    elif case == "wrong shape":
        source = inputs / "small.npy"
    elif case == "wrong dtype":
        source = inputs / "double.npy"
    elif case == "not an image":
        source = inputs / "fake.png"
    elif case == "npz without the input":
        source = inputs / "two.npz"
    elif case == "unwritable output":
        output = out / "missing" / "y.npy"
        message = message.replace("OUT", str(out))
    elif case == "wrong output suffix":
        output = out / "y.png"
    elif case == "too few labels":
        extra = ["--labels", inputs / "two.txt"]
    elif case.endswith("artifact"):
        model = bad[case.split()[0]]
    elif case == "missing model":
        model = "lenet55"
    result = cnncomp_cli("run", model, "-i", source, "-o", output, *extra)
    assert_one_line_error(result, message)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("extra", "message"), [
    (["-i", DIGIT_IMAGE], "several inputs: give --out OUTDIR to run them all"),
    (["--workers", "2"], "--workers and --scheduler run many inputs; give --out OUTDIR"),
    (["--out", "x", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "give one of them"),
    (["--out", "x", "--threads-per-worker", "2"], "--threads-per-worker sets the threads of the --workers"),
    (["--out", "x", "--workers", "2", "--threads", "2"], "--threads is for a run in this process"),
    (["--out", "x", "-o", "y.npy"], "with --out the outputs go to OUTDIR/outputs.npy"),
])
def test_many_inputs_options_are_checked_in_one_line(extra, message, tmp_path):
    result = cnncomp_cli("run", "lenet5", "-i", DIGIT_IMAGE, *extra, cwd=tmp_path)
    assert_one_line_error(result, message)


def test_a_folder_without_out_says_to_give_out(tmp_path):
    assert_one_line_error(cnncomp_cli("run", "lenet5", "-i", tmp_path), f"{tmp_path} is not one file: give --out")


def test_unreachable_scheduler_is_one_line(tmp_path):
    pytest.importorskip("distributed")
    result = cnncomp_cli("run", "lenet5", "-i", DIGIT_IMAGE, "--out", tmp_path / "out", "--scheduler",
                         "tcp://127.0.0.1:1")
    assert_one_line_error(result, "cannot connect to the Dask scheduler at tcp://127.0.0.1:1")
