"""A kernel-compiling process: reads a JSON list of {module, path, signatures} on stdin, compiles each kernel
(Numba caches the machine code beside its module) and prints one line per kernel done, for the progress bar."""

import json
import sys

from backends.numba_cpu import blas  # noqa: F401  binds the BLAS symbol the kernels call
from backends.numba_cpu.kernels import compile_kernel


def main() -> None:
    for job in json.load(sys.stdin):
        compile_kernel(job["module"], job["path"], job["signatures"])
        print(job["module"], flush=True)


if __name__ == "__main__":
    main()
