"""The memory limit: no tensor, no node's parameters, no graph's parameters in all and no arena may take more bytes
than it, so a description, an imported model or an artifact asking for absurd sizes is refused with one line
naming the node (or graph), before anything is allocated, instead of exhausting the machine. Checked where
nodes are made (`Op.check`), where weights are drawn (`frontends.builder.initialize_params`) and where the arena
is planned or a saved plan is read (`cnncomp.planner`).

The limit is `$CNNCOMP_MEMORY_LIMIT` ("16GiB", "512MiB", "2e9" bytes; "none" for no limit), else 4 GiB: above every
zoo model's largest tensor and weight at batch 8 (VGG-19's first FC weight is 392 MiB).
"""

from __future__ import annotations

import os
import re

from cnncomp.errors import CnnCompError

ENV = "CNNCOMP_MEMORY_LIMIT"
DEFAULT_BYTES = 4 << 30
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}


def parse_bytes(text: str) -> int | None:
    """"4GiB" -> 4294967296, "1e9" -> 10**9, "none" -> None (no limit); CnnCompError for anything else."""
    if text.strip().lower() in ("none", "off"):
        return None
    found = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", text)
    if found is None or found[2].lower() not in UNITS:
        raise CnnCompError(f"{ENV}={text!r}: expected a size like 4GiB, 512MiB or 1e9 (bytes), or none")
    return int(float(found[1]) * UNITS[found[2].lower()])


def memory_limit() -> int | None:
    """Bytes one tensor, one node's parameters or one arena may take; None: no limit."""
    return parse_bytes(os.environ[ENV]) if os.environ.get(ENV) else DEFAULT_BYTES


def describe_bytes(count: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} bytes"


def over_limit(what: str, nbytes: int) -> str | None:
    """A one-line reason if `nbytes` exceeds the memory limit, else None."""
    limit = memory_limit()
    if limit is None or nbytes <= limit:
        return None
    return (f"{what} would take {describe_bytes(nbytes)}, over the memory limit of {describe_bytes(limit)} "
            f"(set {ENV} to change it)")
