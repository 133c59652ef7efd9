"""Progress on stderr for anything that takes more than a second, on a terminal and in logs alike.

- On a terminal: rich progress bars (nested tasks share one display).
- Otherwise (CI logs, ``| tee``, ``| cat``): plain lines, one when a command or one of its stages starts and ends, and while
  anything runs at most one every ``EDGEKIT_PROGRESS_INTERVAL`` seconds (default 10) naming the innermost task
  with step/total, elapsed time and ETA. A background heartbeat writes those lines, so a long call that reports
  no steps (an export, a compile) still shows that it is alive.

``EDGEKIT_NO_PROGRESS=1`` turns all of it off; ``EDGEKIT_PROGRESS=bars`` (or ``1``) forces bars and
``EDGEKIT_PROGRESS=plain`` forces lines.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, TextIO, TypeVar

T = TypeVar("T")
DEFAULT_INTERVAL_S = 10.0


def mode() -> str:
    """``off``, ``bars`` or ``plain`` (see the module docstring)."""
    if os.environ.get("EDGEKIT_NO_PROGRESS"):
        return "off"
    forced = os.environ.get("EDGEKIT_PROGRESS", "").strip().lower()
    if forced == "plain":
        return "plain"
    if forced:
        return "bars"
    return "bars" if sys.stderr.isatty() else "plain"


def enabled() -> bool:
    return mode() != "off"


def _interval() -> float:
    try:
        return max(0.01, float(os.environ.get("EDGEKIT_PROGRESS_INTERVAL", DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def fmt_seconds(s: float) -> str:
    s = int(round(max(0.0, s)))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    started: float
    done: float = 0.0


@dataclass
class LineReporter:
    """Plain-text progress: start/end lines for top-level tasks and a status line at most every ``interval``.

    ``clock`` is injectable so that the timing rule can be tested without waiting; :meth:`tick` writes the
    status line when one is due (the heartbeat thread calls it about once a second, ``advance`` calls it too).
    """

    stream: TextIO | None = None
    clock: Callable[[], float] = time.monotonic
    interval: float = DEFAULT_INTERVAL_S
    stack: list[_Task] = field(default_factory=list)
    last_line: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _write(self, text: str) -> None:
        out = self.stream or sys.stderr
        out.write(f"edgekit: {text}\n")
        out.flush()
        self.last_line = self.clock()

    def status(self) -> str:
        """The innermost task with its parents, step/total, elapsed and ETA."""
        now = self.clock()
        inner = self.stack[-1]
        path = " > ".join(t.description for t in self.stack)
        elapsed = now - inner.started
        parts = [path]
        if inner.total:
            pct = 100.0 * inner.done / inner.total
            step = f"{inner.done:g}/{inner.total:g} ({pct:.0f}%)"
            eta = f", ETA {fmt_seconds(elapsed / inner.done * (inner.total - inner.done))}" if inner.done else ""
            parts.append(f"{step}, elapsed {fmt_seconds(elapsed)}{eta}")
        elif inner.done:
            parts.append(f"step {inner.done:g}, elapsed {fmt_seconds(elapsed)}")
        else:
            parts.append(f"elapsed {fmt_seconds(elapsed)}")
        return ": ".join(parts)

    line_depth = 1  # tasks this deep get start/end lines; 2 under a whole-command task (wrapped): its stages

    def start(self, description: str, total: float | None) -> _Task:
        with self.lock:
            t = _Task(description, total, self.clock())
            self.stack.append(t)
            if len(self.stack) <= self.line_depth:  # the command and its stages: one line each
                path = " > ".join(x.description for x in self.stack)
                self._write(f"{path}: started" + (f" ({total:g} steps)" if total else ""))
            return t

    def advance(self, t: _Task, n: float = 1) -> None:
        t.done += n
        self.tick()

    def end(self, t: _Task) -> None:
        with self.lock:
            took = self.clock() - t.started
            depth = self.stack.index(t) + 1 if t in self.stack else 1
            path = " > ".join(x.description for x in self.stack[:depth])
            if t in self.stack:
                self.stack.remove(t)
            if depth <= self.line_depth or took >= self.interval:  # deeper tasks: only the ones long enough to matter
                steps = f", {t.done:g} steps" if t.done else ""
                self._write(f"{path if depth <= self.line_depth else t.description}: done in {fmt_seconds(took)}{steps}")

    def tick(self) -> bool:
        """Write the status line if ``interval`` has passed since the last line; True if one was written."""
        with self.lock:
            if self.stack and self.clock() - self.last_line >= self.interval:
                self._write(self.status())
                return True
        return False


_active = None  # the one live rich Progress; nested tasks add rows to it (rich allows one live display)
_reporter: LineReporter | None = None  # the live plain reporter while a top-level task runs


def _heartbeat(rep: LineReporter, stop: threading.Event) -> None:
    while not stop.wait(min(1.0, rep.interval / 4)):
        rep.tick()


@contextmanager
def _plain_task(description: str, total: float | None):
    global _reporter
    outer = _reporter is None
    if outer:
        _reporter = LineReporter(interval=_interval())
    rep = _reporter
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(rep, stop), daemon=True, name="edgekit-progress") if outer else None
    t = rep.start(description, total)
    if beat is not None:
        beat.start()
    try:
        yield lambda n=1: rep.advance(t, n)
    finally:
        if beat is not None:
            stop.set()
            beat.join()
            _reporter = None
        rep.end(t)


@contextmanager
def task(description: str, total: float | None = None):
    """``with task("calibrating", total=n) as advance: advance(1)``. Nested tasks share one display."""
    global _active
    kind = mode()
    if kind == "off":
        yield lambda n=1: None
        return
    if kind == "plain":
        with _plain_task(description, total) as advance:
            yield advance
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


def wrapped(description: str, fn: Callable[[], T]) -> Callable[[], T]:
    """``fn`` run inside a top-level task when progress is plain lines, so that a log shows the command alive
    from its first second (imports and loading included); unchanged on a terminal or with progress off."""

    def call() -> T:
        if mode() != "plain":
            return fn()
        with task(description):
            if _reporter is not None:
                _reporter.line_depth = 2  # the command's own stages get their start/end lines
            return fn()

    return call
