"""A child Python process that runs one case at a time under a time limit, so a case that hangs, exhausts memory or
kills the interpreter is reported as what it did instead of taking the test run down with it.

    with Sandbox(timeout=20) as sandbox:
        outcome = sandbox.run("tests.fuzz.hostile:load_cnn", [path])
        outcome.status   # "ok", "error" (an exception: its type and message), "timeout" or "crash" (exit code)

The child imports `module:function` and calls it with the JSON arguments; the function returns JSON data. The
child's address space is capped (`memory_bytes`), so an allocation the code under test should have refused fails
there (MemoryError) rather than in the machine's OOM killer. After a timeout or a crash the child is restarted.
Results travel on the child's original stdout; its stdout and stderr otherwise go to a log file, quoted in the
outcome of a crash.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import select
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[2]


@dataclass
class Outcome:
    status: str  # ok, error, timeout, crash
    value: Any = None
    error_type: str = ""
    error_bases: tuple[str, ...] = ()  # the exception's class and its bases, by name
    message: str = ""
    traceback: str = ""

    def describe(self) -> str:
        if self.status == "ok":
            return "ok"
        if self.status == "error":
            return f"{self.error_type}: {self.message}"
        return f"{self.status}: {self.message}"


class Sandbox:
    """A persistent child process; `run` sends it one call and waits at most `timeout` seconds."""

    def __init__(self, timeout: float = 30.0, memory_bytes: int | None = 6 << 30,
                 env: Mapping[str, str] | None = None) -> None:
        self.timeout = timeout
        self.memory_bytes = memory_bytes
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.log = tempfile.NamedTemporaryFile(prefix="sandbox-", suffix=".log", delete=False)  # noqa: SIM115
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _limit_memory(self) -> None:
        if self.memory_bytes is not None:
            resource.setrlimit(resource.RLIMIT_AS, (self.memory_bytes, self.memory_bytes))

    def _start(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.fuzz.sandbox"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self.log, env=self.env, cwd=ROOT, preexec_fn=self._limit_memory)
        return self.process

    def run(self, function: str, args: Sequence[Any] = (), timeout: float | None = None) -> Outcome:
        process = self._start()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps({"function": function, "args": list(args)}).encode() + b"\n")
            process.stdin.flush()
        except BrokenPipeError:
            return self._crashed()
        ready, _, _ = select.select([process.stdout], [], [], timeout or self.timeout)
        if not ready:
            self._kill()
            return Outcome("timeout", message=f"no answer within {timeout or self.timeout:.0f} s")
        line = process.stdout.readline()
        if not line:
            return self._crashed()
        return Outcome(**json.loads(line))

    def _crashed(self) -> Outcome:
        assert self.process is not None
        code = self.process.wait()
        self.log.flush()
        tail = Path(self.log.name).read_text(errors="replace")[-2000:]
        self.process = None
        return Outcome("crash", message=f"the interpreter died (exit code {code})", traceback=tail)

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def close(self) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill()
            self.process = None
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


def _serve() -> None:
    """The child: read one call per line, answer one outcome per line on the original stdout."""
    results = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything the code under test prints goes to the log, not into the answers
    sys.stdout = sys.stderr
    for line in sys.stdin:
        request = json.loads(line)
        module, _, name = request["function"].partition(":")
        try:
            value = getattr(importlib.import_module(module), name)(*request["args"])
            outcome = {"status": "ok", "value": value}
        except BaseException as exc:  # the point: report whatever the code under test raises
            outcome = {"status": "error", "error_type": type(exc).__name__, "message": str(exc),
                       "error_bases": [cls.__name__ for cls in type(exc).__mro__], "traceback": traceback.format_exc()}
        results.write(json.dumps(outcome) + "\n")
        results.flush()


if __name__ == "__main__":
    _serve()
