"""Rich progress bars (on stderr) for anything that takes more than a second.

Disabled with ``EDGEKIT_NO_PROGRESS=1`` or when stderr is not a terminal and ``EDGEKIT_PROGRESS`` is unset.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def enabled() -> bool:
    if os.environ.get("EDGEKIT_NO_PROGRESS"):
        return False
    return bool(os.environ.get("EDGEKIT_PROGRESS")) or sys.stderr.isatty()


_active = None  # the one live rich Progress; nested tasks add rows to it (rich allows one live display)


@contextmanager
def task(description: str, total: float | None = None):
    """``with task("calibrating", total=n) as advance: advance(1)``. Nested tasks share one display."""
    global _active
    if not enabled():
        yield lambda n=1: None
        return
    if _active is not None:
        bar = _active
        tid = bar.add_task(description, total=total)
        try:
            yield lambda n=1: bar.advance(tid, n)
        finally:
            bar.remove_task(tid)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        _active = bar
        try:
            tid = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(tid, n)
        finally:
            _active = None


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as advance:
        for item in items:
            yield item
            advance(1)
