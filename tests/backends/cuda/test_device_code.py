"""What the simulator cannot tell, checked with the simulator off, in subprocesses (this process runs numba.cuda in
the simulator, chosen when it was imported): every generated kernel compiles to PTX for compute capabilities 8.0
and 9.0 with no double-precision arithmetic and no local memory; without a GPU the backend says so in one line;
without numba-cuda it says how to install it; importing the backend never imports numba.cuda.

The CI set compiles one kernel per template (code that differs in more than its constants: the most unrolled
of each) among the kernels of every zoo model at -O0 and -O3, batch 1 and 32, and of every graph the simulator
tests run (about a minute on two cores); the slow set compiles every distinct kernel (several minutes).
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
from cnncomp.ops.activation import ACTIVATIONS

ROOT = Path(__file__).resolve().parents[3]


def run_without_simulator(args: list[str], timeout: int = 900, executable: str = sys.executable
                          ) -> subprocess.CompletedProcess:
    # The sweep lowers graphs without allocating them, and a GPU's memory, not this machine's, bounds U-Net at
    # batch 32 (a 5.5 GiB arena).
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0", "CNNCOMP_MEMORY_LIMIT": "none"}
    return subprocess.run([executable, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


SWEEP = """
import json, sys
from dataclasses import asdict
from backends.numba_cuda import ptx
from backends.numba_cuda.templates import conv
from cnncomp.driver import zoo_models
from tests.backends.cuda.test_blocks import BLOCKS
from tests.backends.cuda.test_ops import simulated_graphs

found = {}
for name in sorted(zoo_models()):
    for level in (0, 3):
        for batch in (1, 32):
            ptx.tasks(ptx.zoo_graph(name, level, batch), found)
default_target = conv.TARGET_BLOCKS
for graph, large_tiles in simulated_graphs():
    conv.TARGET_BLOCKS = 1 if large_tiles else default_target
    ptx.tasks(graph, found)
conv.TARGET_BLOCKS = default_target
for build in BLOCKS:
    ptx.tasks(build(), found)
chosen = ptx.representatives(found.values()) if sys.argv[1] == "representatives" else list(found.values())
results = ptx.compile_all(chosen, jobs=2)
print(json.dumps({"kernels": len(found), "compilations": [asdict(result) for result in results]}))
"""


def sweep(which: str, timeout: int) -> list[dict]:
    """Compile the kernels of every zoo model at -O0 and -O3 (batch 1 and 32) and of every graph the simulator
    tests run, in a subprocess with the simulator off; check each compiled for both compute capabilities, with
    neither double-precision arithmetic nor local memory."""
    result = run_without_simulator(["-c", SWEEP, which], timeout)
    assert result.returncode == 0, result.stderr[-5000:]
    compilations = json.loads(result.stdout)["compilations"]
    failed = [entry for entry in compilations if entry["error"] or entry["f64_instructions"] or entry["local_memory"]]
    assert failed == []
    for kernel in {(entry["module"], entry["signature"]) for entry in compilations}:
        assert sorted(entry["cc"] for entry in compilations
                      if (entry["module"], entry["signature"]) == kernel) == ["8.0", "9.0"]
    return compilations


def test_every_kernel_template_compiles_to_ptx():
    families = {entry["family"] for entry in sweep("representatives", timeout=900)}
    expected = {"conv2d_conv", "conv2d_pointwise", "conv2d_gated", "conv2d_separable", "depthwise_conv2d", "dense",
                "conv_transpose2d", "max_pool2d", "max_pool2d_indices", "avg_pool2d", "max_unpool2d_clear",
                "max_unpool2d_scatter", "global_avg_pool", "global_avg_pool_small", "adaptive_avg_pool2d", "lrn",
                "softmax_rows", "softmax_columns", "strided_copy", "pad_zeros", "pad_reflect", "pad_replicate",
                "binary_add", "binary_mul", "unary_affine", "upsample_nearest", "upsample_bilinear",
                "upsample_bicubic"}
    expected |= {f"unary_{act}" for act in ACTIVATIONS}
    assert expected <= families


@pytest.mark.slow
def test_every_kernel_compiles_to_ptx():
    sweep("all", timeout=3600)


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


def test_cli_compile_emits_readable_kernel_sources(tmp_path):
    """The issue's command, in the simulator: every kernel module of ResNet-18 written out, each importable text."""
    command = ["cnncomp", "compile", "resnet18", "-b", "numba-cuda", "--emit-source", str(tmp_path / "src"), "-o",
               str(tmp_path / "resnet18.cnnx")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                            env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
    assert result.returncode == 0, result.stderr
    sources = sorted((tmp_path / "src").glob("cnncomp_cuda_*.py"))
    assert len(sources) > 5
    families = set()
    for path in sources:
        text = path.read_text()
        compile(text, path.name, "exec")
        assert text.startswith('"""cnncomp numba-cuda kernel: ') and "def kernel(" in text
        families.add(text.splitlines()[0].split(": ")[1])
    assert {"conv2d_conv", "conv2d_pointwise", "max_pool2d", "global_avg_pool_small", "dense"} <= families


def test_cli_without_a_gpu_exits_with_one_line(tmp_path):
    command = ["cnncomp", "compile", "lenet5", "-b", "numba-cuda", "-o", str(tmp_path / "lenet5.cnnx")]
    result = run_without_simulator(command[1:], timeout=300, executable=command[0])
    if result.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert result.returncode == 1
    assert result.stderr == f"cnncomp: error: {NO_GPU}\n"
