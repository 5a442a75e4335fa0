"""Batch inference in one process (`cnncomp.batch`): which files a folder, glob or list names; one sample per input;
failed inputs as failed rows; results in input order; the folder's final files; resuming an interrupted run without
running its finished batches again. On Dask: tests/test_batch_dask.py."""

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnncomp
from cnncomp import batch
from cnncomp.data import DataError, list_inputs, read_image_folder, read_sample

ROOT = Path(__file__).parents[1]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"


@pytest.fixture(scope="module")
def lenet():
    return cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS), batch=4, options={"progress": False})


def write_digit_images(folder: Path, x: np.ndarray) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, digit in enumerate(x):
        path = folder / f"{index:03d}.png"
        Image.fromarray(np.rint(digit[0] * 255).astype(np.uint8), mode="L").save(path)
        paths.append(path)
    return paths


def test_folders_globs_and_files_in_order(tmp_path):
    for name in ["b.png", "a.npy", "c.txt", "sub/d.npz"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_inputs([tmp_path]) == [tmp_path / "a.npy", tmp_path / "b.png"]
    assert list_inputs([tmp_path], recursive=True) == [tmp_path / "a.npy", tmp_path / "b.png", tmp_path / "sub/d.npz"]
    assert list_inputs([str(tmp_path / "*.png"), tmp_path / "a.npy", tmp_path]) == [tmp_path / "b.png",
                                                                                    tmp_path / "a.npy"]
    with pytest.raises(DataError, match="no such file or folder"):
        list_inputs([tmp_path / "missing"])
    with pytest.raises(DataError, match="no file matches"):
        list_inputs([str(tmp_path / "*.jpg")])
    (tmp_path / "nested" / "deeper").mkdir(parents=True)
    (tmp_path / "nested" / "deeper" / "e.png").write_bytes(b"")
    with pytest.raises(DataError, match="no .* files in this folder .it has subfolders: add --recursive"):
        list_inputs([tmp_path / "nested"])


def test_one_sample_per_input(tmp_path, lenet, digits):
    x, _ = digits
    np.save(tmp_path / "one.npy", x[0])
    np.save(tmp_path / "batched.npy", x[:1])
    np.save(tmp_path / "two.npy", x[:2])
    shapes = lenet.input_shapes
    for name in ["one.npy", "batched.npy"]:
        sample = read_sample(str(tmp_path / name), shapes, lenet.preprocessing, lenet.name)
        assert sample["image"].shape == (1, 1, 32, 32)
        np.testing.assert_array_equal(sample["image"][0], x[0])
    with pytest.raises(DataError, match=r"two.npy: input 'image': an array of shape 2x1x32x32, expected one sample"):
        read_sample(str(tmp_path / "two.npy"), shapes, lenet.preprocessing, lenet.name)


def test_results_in_input_order_with_failed_inputs(tmp_path, lenet, digits):
    x, _ = digits
    paths = write_digit_images(tmp_path / "digits", x[:9])
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((3, 32, 32), np.float32))
    inputs = [*paths[:4], corrupt, *paths[4:], wrong]
    results = batch.run_many(lenet, inputs, batch=4)
    assert [r.input for r in results] == [str(p) for p in inputs]
    assert [r.index for r in results] == list(range(len(inputs)))
    assert [r.ok for r in results] == [True] * 4 + [False] + [True] * 5 + [False]
    assert results[4].error.startswith(f"{corrupt}: ")
    assert "expected one sample of 1x32x32" in results[-1].error
    # Each row equals the model called on that image alone.
    from cnncomp.data import load_image

    for result, path in zip([r for r in results if r.ok], paths, strict=True):
        expected = lenet(load_image(path, lenet.preprocessing, lenet.name))[0]  # batch 1: other sums' order
        np.testing.assert_allclose(result.outputs["logits"], expected, rtol=1e-5, atol=1e-5)


def test_arrays_and_iterator_form(lenet, digits):
    x, _ = digits
    results = list(cnncomp.iter_many(lenet, list(x[:10]), batch=3))
    assert sorted(r.index for r in results) == list(range(10))
    expected = lenet(x[:10])
    for result in results:
        assert result.input == f"[{result.index}]"
        np.testing.assert_allclose(result.outputs["logits"], expected[result.index], rtol=1e-5, atol=1e-5)


def test_artifact_bytes_and_path(tmp_path, lenet, digits):
    x, _ = digits
    path = lenet.save(tmp_path / "lenet5.cnnx")
    by_path = batch.run_many(path, list(x[:5]), batch=2)
    by_bytes = batch.run_many(path.read_bytes(), list(x[:5]), batch=2)
    for a, b in zip(by_path, by_bytes, strict=True):
        np.testing.assert_array_equal(a.outputs["logits"], b.outputs["logits"])


def test_folder_run_writes_predictions_and_outputs(tmp_path, lenet, digits):
    x, y = digits
    paths = write_digit_images(tmp_path / "digits", x[:10])
    (tmp_path / "digits" / "zz-corrupt.png").write_bytes(b"garbage")
    labels = [f"digit {k}" for k in range(10)]
    out = tmp_path / "out"
    summary = batch.run_to_folder(lenet, list_inputs([tmp_path / "digits"]), out, batch=4, top_k=3, labels=labels,
                                  progress=False)
    assert (summary.inputs, summary.done, summary.failed, summary.resumed) == (11, 10, 1, 0)
    assert summary.line(out).startswith(f"11 inputs, 10 done, 1 failed (see {out / 'predictions.csv'}), ")
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["input"] for row in rows] == [*map(str, paths), str(tmp_path / "digits" / "zz-corrupt.png")]
    assert rows[-1]["status"] == "failed" and "not a PNG or JPEG" in rows[-1]["error"]
    assert list(rows[0]) == ["input", "status", "class_1", "label_1", "probability_1", "class_2", "label_2",
                             "probability_2", "class_3", "label_3", "probability_3", "error"]
    outputs = np.load(out / "outputs.npy")
    assert outputs.shape == (11, 10) and outputs.dtype == np.float32
    assert np.isnan(outputs[-1]).all() and not np.isnan(outputs[:-1]).any()
    predicted = [int(row["class_1"]) for row in rows[:-1]]
    assert predicted == list(outputs[:-1].argmax(axis=1))
    assert [row["label_1"] for row in rows[:-1]] == [labels[k] for k in predicted]
    assert np.mean(np.array(predicted) == y[:10]) >= 0.9
    assert not list(out.glob(".*.tmp")) and not list(out.glob("*.tmp"))


def test_map_models_write_a_png_per_input(tmp_path):
    model = cnncomp.compile("edge_detect", batch=2, options={"progress": False})
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for index in range(3):
        Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8), mode="L").save(folder / f"{index}.png")
    out = tmp_path / "out"
    batch.run_to_folder(model, list_inputs([folder]), out, batch=2, progress=False, write_outputs=False)
    with open(out / "predictions.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [row["map"] for row in rows] == ["maps/0-0.png", "maps/1-1.png", "maps/2-2.png"]
    for row in rows:
        with Image.open(out / row["map"]) as image:
            assert image.size == (64, 64)
    assert not (out / "outputs.npy").exists()


def test_interrupted_run_resumes_without_running_finished_batches(tmp_path, lenet, digits, monkeypatch):
    x, _ = digits
    inputs = write_digit_images(tmp_path / "digits", x[:20])
    out = tmp_path / "out"
    complete = batch.run_to_folder(lenet, inputs, tmp_path / "reference", batch=4, progress=False)
    assert complete.done == 20

    real_write_part = batch._write_part
    written = []

    def interrupted_after_two(path, *args):
        if len(written) == 2:
            raise KeyboardInterrupt  # Ctrl-C after two batches were written
        real_write_part(path, *args)
        written.append(path)

    monkeypatch.setattr(batch, "_write_part", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        batch.run_to_folder(lenet, inputs, out, batch=4, progress=False)
    assert sorted((out / ".parts").iterdir()) == sorted(written)
    assert not (out / "predictions.csv").exists()
    monkeypatch.setattr(batch, "_write_part", real_write_part)
    times = {path: path.stat().st_mtime_ns for path in written}

    ran = []
    real_run_batch = batch.run_batch

    def counted(model, entries, *args):
        ran.append([name for name, _ in entries])
        return real_run_batch(model, entries, *args)

    monkeypatch.setattr(batch, "run_batch", counted)
    resumed = batch.run_to_folder(lenet, inputs, out, batch=4, progress=False)
    assert (resumed.done, resumed.resumed) == (20, 8)
    assert [names[0] for names in ran] == [str(inputs[8]), str(inputs[12]), str(inputs[16])]
    assert {path: path.stat().st_mtime_ns for path in written} == times
    assert (out / "predictions.csv").read_text() == (tmp_path / "reference" / "predictions.csv").read_text()
    np.testing.assert_array_equal(np.load(out / "outputs.npy"), np.load(tmp_path / "reference" / "outputs.npy"))

    # A changed input is run again; the other batches are not.
    ran.clear()
    Image.fromarray(np.zeros((32, 32), np.uint8), mode="L").save(inputs[0])
    again = batch.run_to_folder(lenet, inputs, out, batch=4, progress=False)
    assert again.resumed == 16 and [names[0] for names in ran] == [str(inputs[0])]


def test_image_folder_labels(tmp_path, digits):
    x, y = digits
    for digit in range(3):
        write_digit_images(tmp_path / "set" / str(digit), x[y == digit][:2])
    files, labels, classes = read_image_folder(tmp_path / "set")
    assert classes == ["0", "1", "2"]
    assert list(labels) == [0, 0, 1, 1, 2, 2]
    assert files[2] == tmp_path / "set" / "1" / "000.png"
    with pytest.raises(DataError, match="no class subfolders"):
        read_image_folder(tmp_path / "set" / "0")
