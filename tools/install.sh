#!/usr/bin/env bash
# Install cnncomp with its development tools, Dask (batch inference on a cluster) and the numba-cuda backend's
# package (its tests run without a GPU)
# into the current Python environment, and Debian's graphviz
# (the `dot` renderer the graphviz Python package needs) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v dot >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "installing graphviz (dot) with apt-get ..." >&2
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null
    else
        echo "warning: graphviz's 'dot' is missing and apt-get is not usable here; install graphviz to render graphs" >&2
    fi
fi

python -m pip install --quiet --disable-pip-version-check -e '.[dev,cuda,dask]'
