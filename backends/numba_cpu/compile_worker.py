"""A kernel-compiling process: reads JSON lists of {module, path, signatures} from stdin, one list per line,
compiles each kernel (Numba caches the machine code beside its module) and prints one JSON line per kernel, for
the progress bar ({"done": module} or {"error": message}), then an empty line when the list is done. It runs
until stdin closes, so one process serves every compile of its parent."""

import json
import sys

from backends.numba_cpu import blas  # noqa: F401  binds the BLAS symbol the kernels call
from backends.numba_cpu.kernels import compile_kernel


def main() -> None:
    for line in sys.stdin:
        for job in json.loads(line):
            try:
                compile_kernel(job["module"], job["path"], job["signatures"])
                print(json.dumps({"done": job["module"]}))
            except Exception as error:  # reported to the parent, which raises it; the worker serves on
                print(json.dumps({"error": f"{job['module']}: {type(error).__name__}: {error}"}))
        print(flush=True)


if __name__ == "__main__":
    main()
