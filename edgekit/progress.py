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


@contextmanager
def task(description: str, total: float | None = None):
    """``with task("calibrating", total=n) as advance: advance(1)``."""
    if not enabled():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True), transient=True,
    ) as bar:
        tid = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(tid, n)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as advance:
        for item in items:
            yield item
            advance(1)
