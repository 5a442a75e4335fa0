"""The CUDA backend's tests run its kernels in numba-cuda's simulator unless NUMBA_ENABLE_CUDASIM is set (set it to
0 on a machine with a GPU to run them there).

numba.cuda reads the setting when it is first imported, and numba's config module, which holds it, re-reads the
environment whenever numba compiles anything; so it is set in the environment here, before any test imports
numba.cuda, and the config re-read at once. It changes nothing for the CPU backend, which never imports
numba.cuda. The PTX checks and the no-GPU message run in subprocesses with the simulator off.
"""

import importlib.util
import os
import sys

import pytest

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

from numba.core import config  # noqa: E402

config.reload_config()

if importlib.util.find_spec("numba_cuda") is None:
    collect_ignore_glob = ["test_*.py"]
    sys.stderr.write("tests/backends/cuda: numba-cuda is not installed (pip install 'cnncomp[cuda]'); skipped\n")


@pytest.fixture(scope="session")
def cuda():
    """numba.cuda, in the simulator unless NUMBA_ENABLE_CUDASIM=0 and a GPU is there."""
    from backends.numba_cuda import cuda_module

    return cuda_module()
