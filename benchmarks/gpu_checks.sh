#!/usr/bin/env bash
# The GPU checks in one run, for a machine with an NVIDIA GPU and no network (the device tool's lent machine):
# numba-cuda's tests with the simulator off (the slow set too; TESTS names others), then benchmarks/cuda_vs_torch.py.
#
#     OUT=results/ [TESTS=tests/backends/cuda/test_x.py] bash benchmarks/gpu_checks.sh [TEST_SECONDS] [BENCH_SECONDS] [cuda_vs_torch.py options]
#
# It uses the machine's python3 and its numba-cuda, numpy and PyTorch; what the project needs beyond those travels
# as wheels in .whl/ (lark and graphviz: `pip download --no-deps -d .whl lark graphviz`). Each step stops after
# its seconds, so that one run fits a short lease; logs and the benchmark's JSON go to $OUT.
set -u
out=${OUT:-gpu-results}
test_seconds=${1:-240}
bench_seconds=${2:-240}
shift $(( $# < 2 ? $# : 2 ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
# The arena limit guards host memory; a GPU with tens of GiB holds U-Net's 5.5 GiB arena at batch 32.
export CNNCOMP_MEMORY_LIMIT=${CNNCOMP_MEMORY_LIMIT:-32GiB}
site=$(mktemp -d)
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl || exit
fi
# Installed (not editable) for its entry points, which name the backends; the checkout comes first on the path.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" . || exit
# The tests run the `cnncomp` command too; an install with --target leaves no console script on the PATH.
mkdir -p "$site/bin" && printf '#!/bin/sh\nexec python3 -m cnncomp "$@"\n' >"$site/bin/cnncomp" && chmod +x "$site/bin/cnncomp"
export PYTHONPATH="$PWD:$site" PATH="$site/bin:$PATH"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import numba, numba_cuda, numpy, torch; print('numba', numba.__version__, 'numba-cuda',
numba_cuda.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"

timeout_option=$(python3 -c "import pytest_timeout" 2>/dev/null && echo "--timeout=120")
NUMBA_ENABLE_CUDASIM=0 timeout -s INT -k 15 "$test_seconds" python3 -m pytest ${TESTS:-tests/backends/cuda} -o addopts="" -q -rfE \
    -n 8 --dist worksteal -p no:cacheprovider -p no:benchmark $timeout_option 2>&1 | tee "$out/cuda_tests.log"
echo "cuda tests: exit ${PIPESTATUS[0]}"

NUMBA_ENABLE_CUDASIM=0 timeout -s INT -k 15 "$bench_seconds" python3 benchmarks/cuda_vs_torch.py --json "$out/cuda_vs_torch.json" \
    "$@" 2>&1 | tee "$out/cuda_vs_torch.log"
echo "cuda_vs_torch: exit ${PIPESTATUS[0]}"
