"""The Python API (`import cnncomp`): compile, call, batch variants, input checks, what a compiled model exposes,
fully convolutional models, the lazy top-level import, and the standalone program."""

import os
import runpy
import site
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cnncomp
from backends import reference
from cnncomp.errors import CnnCompError, InputError
from frontends.builder import Builder
from tests.helpers import assert_close, randomize

ROOT = Path(__file__).parents[1]
WEIGHTS = ROOT / "frontends" / "zoo" / "weights" / "lenet5_digits.npz"


@pytest.fixture(scope="module")
def lenet():
    return cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS), options={"progress": False})


def two_in_two_out() -> "cnncomp.ir.Graph":
    b = Builder("pair")
    x, y = b.input("x", (4, 6, 6)), b.input("y", (4, 6, 6))
    s = (x.conv(4, 3, padding="same", name="cx") + y).relu(name="sum")
    return randomize(b.build(s, s.global_avg_pool(name="pooled").flatten(name="flat")))


def test_compile_and_call_match_the_reference_backend(lenet, digits):
    x = digits[0][:1]
    graph = cnncomp.load_model("lenet5", weights=WEIGHTS, batch=1)
    expected = reference.run(graph, {"image": x})["logits"]
    actual = lenet(x)
    assert isinstance(actual, np.ndarray)
    assert_close(actual, expected)
    assert lenet.input_shapes == {"image": (1, 1, 32, 32)}
    assert lenet.output_shapes == {"logits": (1, 10)}
    assert lenet.backend == "numba-cpu" and lenet.opt_level == 2


def test_a_new_batch_size_compiles_its_variant_once(lenet, digits):
    x = digits[0][:5]
    first = lenet(x)
    again = lenet(x)
    assert lenet.variants.count({"image": (5, 1, 32, 32)}) == 1
    assert lenet.variants[0] == {"image": (1, 1, 32, 32)}
    np.testing.assert_array_equal(first, again)
    one_by_one = np.concatenate([lenet(x[i: i + 1]) for i in range(5)])
    assert_close(first, one_by_one)


@pytest.mark.parametrize("value,message", [
    (np.zeros((1, 1, 32, 32), np.float64), "input 'image': dtype float64, expected float32"),
    (np.zeros((1, 3, 32, 32), np.float32), "input 'image': shape 1x3x32x32, expected Nx1x32x32"),
    (np.zeros((1, 32, 32), np.float32), "input 'image': shape 1x32x32, expected Nx1x32x32"),
    ([[1.0]], "input 'image': expected a numpy array, got list"),
    ({"picture": np.zeros((1, 1, 32, 32), np.float32)}, "missing input 'image'"),
])
def test_wrong_inputs_are_one_line_input_errors(lenet, value, message):
    with pytest.raises(InputError) as error:
        lenet(value)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_several_inputs_take_a_dict_and_several_outputs_give_one():
    graph = two_in_two_out()
    model = cnncomp.compile(graph, opt_level=3)
    inputs = {name: np.random.default_rng(i).standard_normal((2, 4, 6, 6)).astype(np.float32)
              for i, name in enumerate("xy")}
    outputs = model(inputs)
    assert set(outputs) == {"sum", "flat"} and outputs["flat"].shape == (2, 4)
    expected = reference.run(graph.with_batch(2), inputs)
    for name in outputs:
        assert_close(outputs[name], expected[name])
    with pytest.raises(InputError, match="pass a dict of arrays"):
        model(inputs["x"])


def test_what_a_compiled_model_exposes(lenet, digits):
    assert lenet.source and all("def kernel" in text for text in lenet.source.values())
    plan = lenet.memory_plan
    assert plan["arena_bytes"] == lenet.stats["arena_bytes"]
    assert set(plan["tensors"]) >= {"image", "c1", "logits"}
    assert lenet.stats["kernels"] == len(lenet.source)
    profile = lenet.profile(digits[0][:1], repeat=2)
    assert [row["node"] for row in profile] == [step.node for step in lenet.executable.steps]
    assert abs(sum(row["percent"] for row in profile) - 100) < 1e-6
    assert str(profile).splitlines()[-3].startswith("sum (8 nodes)")
    assert lenet.preprocessing == {"channels": 1, "size": [32, 32], "mean": [0.0], "std": [1.0]}


def test_a_backend_that_cannot_time_its_kernels_says_so(digits, monkeypatch):
    model = cnncomp.compile("lenet5", backend="reference")

    def cannot(inputs, repeat):
        raise NotImplementedError

    monkeypatch.setattr(model.executable, "profile", cannot)
    with pytest.raises(CnnCompError, match="backend 'reference' cannot time its kernels"):
        model.profile(digits[0][:1])


def test_the_reference_backend_generates_no_source_and_profiles_each_operation(digits):
    model = cnncomp.compile("lenet5", backend="reference")
    assert model.source == {}
    assert model.memory_plan["arena_bytes"] > 0  # the plan is the graph's, whichever backend runs it
    profile = model.profile(digits[0][:1], repeat=2)
    assert [row["node"] for row in profile] == [node.name for node in model.graph.nodes if node.op != "input"]


def test_fully_convolutional_models_slide_over_larger_images(digits):
    """LeNet as an FCN: on a 40x40 image its 10 scores form a 3x3 map, position (i, j) being the classifier on
    the 32x32 window at (4i, 4j): the pools make the stride 4."""
    graph = cnncomp.load_model("lenet5", weights=WEIGHTS)
    fcn = cnncomp.compile(graph, opt_level=3, fully_convolutional=True)
    plain = cnncomp.compile(graph, opt_level=3)
    image = np.zeros((1, 1, 40, 40), np.float32)
    image[:, :, 3:35, 5:37] = digits[0][:1]
    scores = fcn(image)
    assert scores.shape == (1, 10, 3, 3)
    for i in range(3):
        for j in range(3):
            window = np.ascontiguousarray(image[:, :, 4 * i: 4 * i + 32, 4 * j: 4 * j + 32])
            assert_close(scores[:, :, i, j], plain(window))
    with pytest.raises(InputError, match="expected Nx1xHxW"):
        fcn(np.zeros((1, 3, 40, 40), np.float32))


def test_unknown_backend_and_missing_weights_are_clear_errors():
    with pytest.raises(CnnCompError, match="unknown backend 'tpu'"):
        cnncomp.compile("lenet5", backend="tpu")
    with pytest.raises(CnnCompError, match="no such weights file"):
        cnncomp.load_model("lenet5", weights="missing.npz")


def test_import_cnncomp_stays_light_and_never_imports_frontends_or_backends():
    check = ("import sys, cnncomp, cnncomp.ir; f = cnncomp.compile; "
             "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('frontends', 'backends')); "
             "print(','.join(bad)); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    light = subprocess.run([sys.executable, "-c", "import sys, cnncomp.ir; print('cnncomp.api' in sys.modules)"],
                           capture_output=True, text=True)
    assert light.stdout.strip() == "False"


# ----- the standalone program --------------------------------------------------------------------------------
def without_cnncomp_env() -> dict[str, str]:
    """An environment where only the installed libraries are importable: `python -S` skips site's .pth files
    (so cnncomp's editable install is not found), PYTHONPATH names the site-packages folders but not the checkout."""
    paths = [p for p in site.getsitepackages() if Path(p).is_dir() and Path(p).resolve() != ROOT.resolve()]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def test_standalone_program_runs_without_cnncomp(tmp_path, lenet, digits):
    program, weights = lenet.save_standalone(tmp_path / "lenet5.py")
    assert weights == tmp_path / "lenet5.npz" and weights.is_file()
    text = program.read_text()
    assert "needs numpy, numba and scipy" in text.lower()
    assert "import cnncomp" not in text and "from backends" not in text
    assert all(f": {name} " in text for name in lenet.source)  # every generated module, inlined
    x = digits[0]  # all of them: the program takes any batch, one (its compiled batch) at a time
    np.save(tmp_path / "x.npy", x)
    env = without_cnncomp_env()
    probe = subprocess.run([sys.executable, "-S", "-c", "import numba, scipy; import cnncomp"], env=env,
                           capture_output=True, text=True, cwd=tmp_path)
    assert "No module named 'cnncomp'" in probe.stderr  # the premise: cnncomp cannot be imported here
    result = subprocess.run([sys.executable, "-S", str(program), "x.npy", "-o", "y.npy"], env=env,
                            capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"y.npy: logits {len(x)}x10"
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.concatenate([lenet(sample[None]) for sample in x]))
    np.save(tmp_path / "wrong.npy", np.zeros((1, 1, 28, 28), np.float32))
    wrong = subprocess.run([sys.executable, "-S", str(program), "wrong.npy", "-o", "z.npy"], env=env,
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == ("lenet5.py: error: input 'image': float32 1x1x28x28, expected float32 "
                                    "Nx1x32x32 (any batch N >= 1)")
    assert not (tmp_path / "z.npy").exists()


def test_standalone_program_takes_any_batch_its_compiled_batch_at_a_time(tmp_path, digits):
    """Compiled for 4, given 10: two whole batches and one of 2 padded with zeros, each sample as the compiled
    model computes it."""
    model = cnncomp.compile(cnncomp.load_model("lenet5", weights=WEIGHTS), batch=4, options={"progress": False})
    program, weights = model.save_standalone(tmp_path / "lenet5_b4.py")
    run = runpy.run_path(str(program))["Model"](weights)
    x = digits[0][:10]
    expected = np.concatenate([model(x[:4]), model(x[4:8]), model(np.concatenate([x[8:], np.zeros_like(x[:2])]))[:2]])
    np.testing.assert_array_equal(run({"image": x})["logits"], expected)
    np.testing.assert_array_equal(run({"image": x[:1]})["logits"], expected[:1])
    with pytest.raises(ValueError, match="expected float32 Nx1x32x32"):
        run({"image": x[:0]})


@pytest.mark.slow
def test_standalone_program_of_a_model_with_every_kind_of_argument(tmp_path):
    """EfficientNet's blocks at a small size: depthwise, gated pointwise (SE), Winograd-free convs, constants.
    Slow: the program's kernels compile afresh beside the new file (Numba caches per source file)."""
    graph = cnncomp.load_model("efficientnet_b0", batch=1)
    graph = graph.with_input_shapes({"image": (1, 3, 32, 32)})
    model = cnncomp.compile(graph, opt_level=3, batch=None, options={"progress": False})
    program, _ = model.save_standalone(tmp_path / "effnet.py")
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run([sys.executable, "-S", str(program), "x.npy", "-o", "y.npy"], env=without_cnncomp_env(),
                            capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    assert_close(np.load(tmp_path / "y.npy"), model(x))


def test_standalone_needs_numba_cpu():
    with pytest.raises(CnnCompError, match="compile it with -b numba-cpu"):
        cnncomp.compile("lenet5", backend="reference").save_standalone("lenet5.py")


@pytest.mark.slow
def test_standalone_program_in_a_fresh_venv_without_cnncomp(tmp_path, lenet, digits):
    """A plain venv (no system site-packages) with numpy, numba and scipy installed by pip."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    versions = [f"{name}=={__import__(name).__version__}" for name in ("numpy", "numba", "scipy")]
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", *versions], check=True, timeout=900)
    assert subprocess.run([str(python), "-c", "import cnncomp"], capture_output=True, cwd=tmp_path).returncode != 0
    program, _ = lenet.save_standalone(tmp_path / "lenet5.py")
    x = digits[0][:1]
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run([str(python), str(program), "x.npy", "-o", "y.npy"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), lenet(x))
