import os

# Numba and BLAS threads must not fight on small machines; set before anything imports numba.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

from pathlib import Path  # noqa: E402  (after the environment is set)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

DIGITS = Path(__file__).parents[1] / "frontends" / "zoo" / "weights" / "digits_test.npz"


@pytest.fixture(scope="session")
def digits():
    """The shipped held-out digits: x (360 x 1 x 32 x 32 float32) and y (their labels)."""
    with np.load(DIGITS) as split:
        return split["x"], split["y"]
