"""A progress bar on stderr for work that takes more than a moment; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], total: int, label: str, enabled: bool | None = None) -> Iterator[T]:
    """Yield `items`, drawing `label [#####.....] k/total` after each one (on a terminal only)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    start = time.perf_counter()
    width = 30
    for done, item in enumerate(items, start=1):
        yield item
        if show:
            filled = width * done // max(total, 1)
            elapsed = time.perf_counter() - start
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {elapsed:.1f}s")
            sys.stderr.flush()
    if show:
        sys.stderr.write("\n")
