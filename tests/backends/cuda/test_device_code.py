"""What the simulator cannot tell, checked with the simulator off, in subprocesses (this process runs numba.cuda in
the simulator, chosen when it was imported): every generated kernel compiles to PTX for compute capabilities 8.0
and 9.0 with no double-precision arithmetic and no local memory; without a GPU the backend says so in one line;
without numba-cuda it says how to install it; importing the backend never imports numba.cuda.

The CI set compiles one kernel per template (code that differs in more than its constants) found in every zoo
model at -O0 and -O3, at batch 1 and 32 (about 40 s); the slow set compiles every distinct kernel (a few minutes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from backends.numba_cuda import NO_GPU, NOT_INSTALLED

ROOT = Path(__file__).resolve().parents[3]


def run_without_simulator(args: list[str], timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=ROOT)


def sweep(*options: str, timeout: int = 900) -> list[dict]:
    result = run_without_simulator(["-m", "backends.numba_cuda.ptx", "--batch", "1", "32", "--jobs", "2", "--json",
                                    *options], timeout)
    assert result.returncode == 0, result.stderr[-5000:]
    compilations = json.loads(result.stdout)
    assert compilations and all(entry["error"] == "" for entry in compilations)
    assert all(entry["f64_instructions"] == 0 and not entry["local_memory"] for entry in compilations)
    for module in {entry["module"] for entry in compilations}:
        assert sorted(entry["cc"] for entry in compilations if entry["module"] == module) == ["8.0", "9.0"]
    return compilations


def test_every_kernel_template_of_the_zoo_compiles_to_ptx():
    compilations = sweep("--representatives")
    families = {entry["family"] for entry in compilations}
    assert {"conv2d_conv", "conv2d_pointwise", "conv2d_gated", "conv2d_separable", "depthwise_conv2d", "dense",
            "conv_transpose2d", "max_pool2d", "avg_pool2d", "global_avg_pool", "lrn", "softmax_rows",
            "strided_copy", "binary_add", "unary_relu"} <= families


@pytest.mark.slow
def test_every_kernel_of_the_zoo_compiles_to_ptx():
    sweep(timeout=3600)


def test_the_ptx_checks_find_double_precision_and_local_memory(tmp_path):
    """The checks of the sweep on kernels that break them: a float64 constant in float32 arithmetic, and a
    per-thread array indexed by a run-time value (which cannot live in registers)."""
    script = textwrap.dedent(f"""
        import json
        from numba import types
        from backends.numba_cuda.kernels import KernelSource
        from backends.numba_cuda.ptx import Task, compile_task
        header = "from numba import cuda, float32\\n\\n"
        kernels = {{
            "good": "@cuda.jit(cache=True)\\ndef kernel(x, n):\\n    x[0] = x[0] * float32(1.5)\\n",
            "f64": "@cuda.jit(cache=True)\\ndef kernel(x, n):\\n    x[0] = x[0] * 1.1\\n",
            "local": ("@cuda.jit(cache=True)\\ndef kernel(x, n):\\n    a = cuda.local.array(64, float32)\\n"
                      "    for i in range(64):\\n        a[i] = x[i]\\n    x[0] = a[n % 64]\\n"),
        }}
        signature = (types.Array(types.float32, 1, "C"), types.int64)
        report = {{}}
        for name, body in kernels.items():
            task = Task(KernelSource("check_" + name, header + body), signature, (name,))
            (result,) = compile_task(task, [(8, 0)], cache_dir={str(tmp_path)!r})
            report[name] = [result.error, result.f64_instructions, result.local_memory]
        print(json.dumps(report))
    """)
    result = run_without_simulator(["-c", script], timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["good"] == ["", 0, False]
    assert report["f64"][0] == "" and report["f64"][1] > 0 and not report["f64"][2]
    assert report["local"][0] == "" and report["local"][2]


NO_GPU_SCRIPT = """
from numba import cuda
if cuda.is_available():
    print("a GPU is here")
    raise SystemExit(0)
from cnncomp import plugins
from cnncomp.driver import load_model
from cnncomp.errors import CnnCompError
try:
    plugins.backend("numba-cuda").compile(load_model("lenet5"))
except CnnCompError as exc:
    print(type(exc).__name__, str(exc), sep="|")
"""


def test_without_a_gpu_and_the_simulator_the_backend_says_so_in_one_line():
    result = run_without_simulator(["-c", NO_GPU_SCRIPT], timeout=300)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "a GPU is here":
        pytest.skip("this machine has a GPU")
    assert result.stdout.strip() == f"CudaUnavailableError|{NO_GPU}"
    assert NO_GPU == "no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 to simulate)"


def test_without_numba_cuda_the_backend_says_how_to_install_it():
    """A CPU-only install: numba-cuda missing (an import of it fails, as when it is not installed)."""
    script = textwrap.dedent("""
        import sys
        sys.modules["numba_cuda"] = None
        import backends.numba_cuda as backend
        from cnncomp.errors import CnnCompError
        from tests.backends.cuda.test_executable import small_net
        try:
            backend.compile(small_net())
        except CnnCompError as exc:
            print(str(exc))
    """)
    result = run_without_simulator(["-c", script], timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == NOT_INSTALLED
    assert "pip install 'cnncomp[cuda]'" in NOT_INSTALLED


def test_importing_the_backend_never_imports_numba_cuda():
    script = ("import sys, backends.numba_cuda, backends.numba_cuda.lowering, backends.numba_cuda.ptx; "
              "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda'))))")
    result = run_without_simulator(["-c", script], timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
