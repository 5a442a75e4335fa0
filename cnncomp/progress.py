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


class RateProgress:
    """A progress bar for a stream of work: `label [#####.....] done/total, rate unit/s, ETA m:ss`, redrawn at
    most ten times a second (on a terminal only)."""

    def __init__(self, total: int, label: str, unit: str, enabled: bool | None = None) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.show = sys.stderr.isatty() if enabled is None else enabled
        self.done = 0
        self.start = time.perf_counter()
        self._drawn = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if self.show and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            elapsed = now - self.start
            rate = self.done / elapsed if elapsed > 0 else 0.0
            left = (self.total - self.done) / rate if rate > 0 else 0.0
            width = 30
            filled = width * self.done // max(self.total, 1)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done:,}/{self.total:,}, "
                             f"{rate:,.0f} {self.unit}/s, ETA {int(left) // 60}:{int(left) % 60:02d} ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.show and self.done:
            sys.stderr.write("\n")
            sys.stderr.flush()
        self.show = False
