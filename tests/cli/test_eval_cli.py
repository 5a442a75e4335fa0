"""`cnncomp eval` through the real entry point: the trained LeNet's top-1 error on the held-out digits equals
PyTorch's, sample for sample, on every backend; top-k as the lecture defines it; bad data refused in one line."""

import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnncomp import plugins

ROOT = Path(__file__).parents[2]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"
DIGITS = ROOT / "frontends" / "zoo" / "weights" / "digits_test.npz"


def cnncomp_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "cnncomp", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=900, env=env)


def assert_one_line_error(result, message):
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnncomp: error: "), result.stderr
    assert message in lines[0], lines[0]


@pytest.fixture(scope="module")
def pytorch_scores():
    """PyTorch's logits for the held-out split: the training script's module with the shipped weights."""
    torch = pytest.importorskip("torch")
    spec = importlib.util.spec_from_file_location("train_lenet", ROOT / "tools" / "train_lenet.py")
    train_lenet = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_lenet)
    model = train_lenet.LeNet5()
    with np.load(WEIGHTS) as weights:
        model.load_state_dict({key: torch.from_numpy(weights[key]) for key in weights.files})
    with np.load(DIGITS) as split, torch.inference_mode():
        return model.eval()(torch.from_numpy(split["x"])).numpy(), split["y"]


@functools.cache
def cuda_usable() -> str | None:
    """Why numba-cuda is left out here, or None to run it: a real GPU only; the simulator takes seconds per digit."""
    if "numba-cuda" not in plugins.available(plugins.BACKENDS):
        return "the numba-cuda backend is not registered"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "numba-cuda's simulator runs each GPU thread in Python: far too slow for 360 digits"
    probe = subprocess.run([sys.executable, "-c", "from numba import cuda; print(cuda.is_available())"],
                           capture_output=True, text=True)
    return None if probe.stdout.strip() == "True" else "no CUDA GPU here (the simulator is too slow for 360 digits)"


BACKENDS = [
    "reference", "numba-cpu", "torch", "onnxruntime",
    pytest.param("numba-cuda", marks=pytest.mark.skipif(cuda_usable() is not None, reason=str(cuda_usable()))),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_top1_error_equals_pytorchs_on_every_backend(pytorch_scores, backend):
    if backend not in plugins.available(plugins.BACKENDS):
        pytest.skip(f"backend {backend} is not registered")
    logits, labels = pytorch_scores
    torch_errors = int((logits.argmax(axis=1) != labels).sum())
    torch_top5 = int((np.argsort(-logits, axis=1)[:, :5] != labels[:, None]).all(axis=1).sum())
    result = cnncomp_cli("eval", "lenet5", "--weights", WEIGHTS, "-d", DIGITS, "-b", backend, "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["samples"] == len(labels) == 360
    assert report["backend"] == backend
    assert report["errors"] == {"1": torch_errors, "5": torch_top5}
    assert report["error_rates"]["1"] == torch_errors / 360
    assert torch_errors == 9  # the figure tools/train_lenet.py printed when it made the weights


def test_eval_prints_the_lectures_top_k_errors_of_an_artifact(tmp_path):
    artifact = tmp_path / "lenet5.cnnx"
    assert cnncomp_cli("compile", "lenet5", "--weights", WEIGHTS, "-o", artifact).returncode == 0
    result = cnncomp_cli("eval", artifact, "-d", DIGITS, "--top-k", "1,2,10", "--batch", "100")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"lenet5 on {DIGITS}: 360 samples, numba-cpu -O2"
    assert lines[1] == "top-1 error: 2.50% (9 of 360)"
    assert lines[2].startswith("top-2 error: ") and lines[3] == "top-10 error: 0.00% (0 of 360)"


def test_top_k_counts_a_label_missing_from_the_k_best(tmp_path):
    """A hand-made set on the reference backend: the errors are what the lecture's definition gives."""
    from cnncomp.api import compile as compile_model
    from cnncomp.api import load_model

    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 1, 32, 32)).astype(np.float32)
    scores = compile_model(load_model("lenet5"), backend="reference", batch=20)(x)
    ranking = np.argsort(-scores, axis=1)
    y = ranking[np.arange(20), np.arange(20) % 10]  # sample i's label is its (i mod 10)-th best class
    np.savez(tmp_path / "set.npz", x=x, y=y)
    result = cnncomp_cli("eval", "lenet5", "-b", "reference", "-d", tmp_path / "set.npz", "--top-k", "1,3,5",
                         "--json")
    assert result.returncode == 0, result.stderr
    # label at rank r (0-based) is an error for top-k when r >= k: ranks 0..9, twice each
    assert json.loads(result.stdout)["errors"] == {"1": 18, "3": 14, "5": 10}


def test_bad_data_fails_in_one_line(tmp_path):
    np.savez(tmp_path / "no_labels.npz", x=np.zeros((2, 1, 32, 32), np.float32))
    np.savez(tmp_path / "big_labels.npz", x=np.zeros((2, 1, 32, 32), np.float32), y=np.array([3, 12]))
    np.savez(tmp_path / "small.npz", x=np.zeros((2, 1, 28, 28), np.float32), y=np.array([1, 2]))
    np.savez(tmp_path / "double.npz", x=np.zeros((2, 1, 32, 32)), y=np.array([1, 2]))
    np.savez(tmp_path / "mismatch.npz", x=np.zeros((2, 1, 32, 32), np.float32), y=np.array([1, 2, 3]))
    cases = [
        ("missing.npz", [], "missing.npz: no such file"),
        ("no_labels.npz", [], "needs arrays 'x' (inputs) and 'y' (labels)"),
        ("big_labels.npz", [], "labels range over 3..12, but the model has 10 classes"),
        ("small.npz", [], "input 'image': shape 2x1x28x28, expected Nx1x32x32"),
        ("double.npz", [], "input 'image': dtype float64, expected float32"),
        ("mismatch.npz", [], "2 inputs but 3 labels"),
        (DIGITS, ["--top-k", "1,11"], "--top-k 11: model 'lenet5' has only 10 classes"),
        (DIGITS, ["--weights", tmp_path / "none.npz"], "none.npz: no such weights file"),
    ]
    for data, extra, message in cases:
        result = cnncomp_cli("eval", "lenet5", "-b", "reference", "-d", tmp_path / data, *extra)
        assert_one_line_error(result, message)


@pytest.mark.slow
def test_numba_cuda_in_the_simulator_agrees_with_pytorch_on_a_subset(pytorch_scores, tmp_path):
    """Without a GPU, numba-cuda runs in numba-cuda's simulator (about 15 s per digit here): six digits, two of
    them ones PyTorch gets wrong, give PyTorch's errors."""
    if "numba-cuda" not in plugins.available(plugins.BACKENDS):
        pytest.skip("the numba-cuda backend is not registered")
    logits, labels = pytorch_scores
    wrong = np.flatnonzero(logits.argmax(axis=1) != labels)[:2]
    chosen = np.concatenate([np.arange(4), wrong])
    with np.load(DIGITS) as split:
        np.savez(tmp_path / "subset.npz", x=split["x"][chosen], y=split["y"][chosen])
    result = cnncomp_cli("eval", "lenet5", "--weights", WEIGHTS, "-d", tmp_path / "subset.npz", "-b", "numba-cuda",
                         "--json", env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr
    expected = int((logits[chosen].argmax(axis=1) != labels[chosen]).sum())
    assert expected == 2 and json.loads(result.stdout)["errors"]["1"] == expected
