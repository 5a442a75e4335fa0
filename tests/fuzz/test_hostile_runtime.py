"""Hostile runtime inputs to a compiled model, each case named after what it attacks: the only outcomes are the
model's outputs or a one-line InputError naming the input; NaN and inf propagate as IEEE says, one sample's
NaN never reaches another sample; a batch whose tensors would pass the memory limit is refused before anything
is allocated."""

import numpy as np
import pytest

import cnncomp
from cnncomp.errors import InputError
from tests.helpers import assert_close

BACKENDS = ["reference", "numba-cpu"]


@pytest.fixture(scope="module", params=BACKENDS)
def lenet(request):
    return cnncomp.compile("lenet5", backend=request.param, options={"progress": False}
                           if request.param == "numba-cpu" else None)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(7).standard_normal((4, 1, 32, 32)).astype(np.float32)


WRONG = {
    "rank 3": (np.zeros((1, 32, 32), np.float32), "input 'image': shape 1x32x32, expected Nx1x32x32"),
    "rank 5": (np.zeros((1, 1, 1, 32, 32), np.float32), "input 'image': shape 1x1x1x32x32, expected Nx1x32x32"),
    "wrong channels": (np.zeros((1, 3, 32, 32), np.float32), "input 'image': shape 1x3x32x32, expected Nx1x32x32"),
    "wrong plane": (np.zeros((1, 1, 31, 32), np.float32), "input 'image': shape 1x1x31x32, expected Nx1x32x32"),
    "empty batch": (np.zeros((0, 1, 32, 32), np.float32), "input 'image': shape 0x1x32x32, expected Nx1x32x32"),
    "float64": (np.zeros((1, 1, 32, 32), np.float64), "input 'image': dtype float64, expected float32"),
    "float16": (np.zeros((1, 1, 32, 32), np.float16), "input 'image': dtype float16, expected float32"),
    "integers": (np.zeros((1, 1, 32, 32), np.int32), "input 'image': dtype int32, expected float32"),
    "objects": (np.full((1, 1, 32, 32), None), "input 'image': dtype object, expected float32"),
    "a list": ([[1.0]], "input 'image': expected a numpy array, got list"),
    "a scalar": (np.float32(1.0), "input 'image': expected a numpy array, got float32"),
    "a misnamed input": ({"picture": np.zeros((1, 1, 32, 32), np.float32)}, "missing input 'image'"),
}


@pytest.mark.parametrize("attack", list(WRONG))
def test_wrong_input_is_a_one_line_input_error(lenet, attack):
    value, message = WRONG[attack]
    with pytest.raises(InputError) as error:
        lenet(value)
    assert message in str(error.value) and "\n" not in str(error.value)


LAYOUTS = {
    "fortran order": np.asfortranarray,
    "reversed rows": lambda x: x[:, :, ::-1, :],
    "every other pixel of a larger array": lambda x: np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)[:, :, ::2, ::2],
    "a read-only broadcast": lambda x: np.broadcast_to(x[:1], x.shape),
    "a slice of a wider array": lambda x: np.pad(x, ((0, 0), (0, 0), (0, 0), (0, 3)))[..., 2:34],
}


@pytest.mark.parametrize("attack", list(LAYOUTS))
def test_non_contiguous_input_gives_the_contiguous_result(lenet, images, attack):
    view = LAYOUTS[attack](images)
    assert not view.flags.c_contiguous or not view.flags.writeable
    assert_close(lenet(view), lenet(np.ascontiguousarray(view)))
    assert lenet(view).shape == (4, 10)


def test_nan_and_inf_stay_in_their_sample(lenet, images):
    clean = lenet(images)
    poisoned = images.copy()
    poisoned[0, 0, 5, 5], poisoned[1, 0, 9, 20], poisoned[2, 0, 30, 1] = np.nan, np.inf, -np.inf
    out = lenet(poisoned)
    assert np.isnan(out[0]).all()  # one NaN pixel reaches every class through the dense layers
    assert not np.isnan(out[1:]).any()  # LeNet's tanh maps +-inf to +-1
    assert_close(out[3], clean[3])
    expected = cnncomp.compile("lenet5", backend="reference")(poisoned)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))


def test_a_batch_beyond_the_memory_limit_is_refused_before_allocating(lenet):
    # A broadcast view: ten million images that take no memory, whose activations would take hundreds of GiB.
    huge = np.broadcast_to(np.zeros((1, 1, 32, 32), np.float32), (10_000_000, 1, 32, 32))
    with pytest.raises(InputError) as error:
        lenet(huge)
    message = str(error.value)
    assert "\n" not in message and "10000000x1x32x32" in message and "over the memory limit of 4.0 GiB" in message


def test_the_memory_limit_is_configurable(monkeypatch):
    model = cnncomp.compile("lenet5", backend="reference")
    monkeypatch.setenv("CNNCOMP_MEMORY_LIMIT", "1MiB")
    model(np.zeros((8, 1, 32, 32), np.float32))
    with pytest.raises(InputError, match=r"over the memory limit of 1.0 MiB \(set CNNCOMP_MEMORY_LIMIT"):
        model(np.zeros((64, 1, 32, 32), np.float32))
