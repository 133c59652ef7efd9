"""Progress: rich bars nest on a terminal; off a terminal, plain lines at least every interval (fake clock)."""

from __future__ import annotations

import io
import subprocess
import sys

from edgekit import progress


def test_nested_tasks(monkeypatch):
    monkeypatch.delenv("EDGEKIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("EDGEKIT_PROGRESS", "1")
    assert progress.enabled() and progress.mode() == "bars"
    seen = []
    with progress.task("outer") as outer:
        with progress.task("inner", total=3) as inner:
            for i in progress.track(range(3), "innermost"):
                inner(1)
                seen.append(i)
        outer(1)
    assert seen == [0, 1, 2] and progress._active is None


def test_disabled(monkeypatch):
    monkeypatch.setenv("EDGEKIT_NO_PROGRESS", "1")
    assert not progress.enabled()
    assert list(progress.track([1, 2], "x")) == [1, 2]


def test_mode_off_a_terminal_is_plain(monkeypatch):
    monkeypatch.delenv("EDGEKIT_NO_PROGRESS", raising=False)
    monkeypatch.delenv("EDGEKIT_PROGRESS", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a TTY
    assert progress.mode() == "plain"
    monkeypatch.setenv("EDGEKIT_PROGRESS", "plain")
    assert progress.mode() == "plain"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_line_reporter_writes_at_least_every_interval():
    """A 20-minute stage whose inner loop reports a step every 7 s and whose heartbeat ticks every second:
    the longest gap between two lines stays at the interval (10 s), well under 15 s."""
    clock, out = FakeClock(), io.StringIO()
    rep = progress.LineReporter(stream=out, clock=clock, interval=10.0)
    stamps: list[float] = []
    write = rep._write

    def stamped(text: str) -> None:
        stamps.append(clock.now)
        write(text)

    rep._write = stamped  # type: ignore[method-assign]
    stage = rep.start("stage 2/3: quantize", None)
    loop = rep.start("calibrating", 170)
    for second in range(1, 1201):
        clock.now += 1.0
        if second % 7 == 0 and loop.done < 170:
            rep.advance(loop)
        rep.tick()  # the heartbeat
    rep.end(loop)
    rep.end(stage)
    lines = out.getvalue().splitlines()
    assert lines[0] == "edgekit: stage 2/3: quantize: started"
    assert lines[-1].startswith("edgekit: stage 2/3: quantize: done in 20:00")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    assert max(gaps) <= 10.0 and len(lines) >= 1200 // 10
    mid = next(line for line in lines if "calibrating: 30/170" in line)
    assert "stage 2/3: quantize > calibrating: 30/170 (18%), elapsed 3:30, ETA 16:20" in mid
    assert any("calibrating: done in" in line for line in lines)  # an inner task longer than the interval


def test_line_reporter_is_quiet_between_intervals_and_skips_short_inner_tasks():
    clock, out = FakeClock(), io.StringIO()
    rep = progress.LineReporter(stream=out, clock=clock, interval=10.0)
    top = rep.start("evaluating", 100)
    for _ in range(100):
        clock.now += 0.05
        rep.advance(top)
        inner = rep.start("batch", None)
        rep.end(inner)  # short inner tasks write nothing
    rep.end(top)
    assert out.getvalue().splitlines() == ["edgekit: evaluating: started (100 steps)", "edgekit: evaluating: done in 0:05, 100 steps"]


def test_plain_task_heartbeat_thread(monkeypatch):
    """The real task() in plain mode: start/end lines and heartbeat lines (short interval) on stderr."""
    monkeypatch.delenv("EDGEKIT_NO_PROGRESS", raising=False)
    monkeypatch.setenv("EDGEKIT_PROGRESS", "plain")
    monkeypatch.setenv("EDGEKIT_PROGRESS_INTERVAL", "0.02")
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    import time

    with progress.task("stage 1/1: fuse"):
        deadline = time.monotonic() + 5
        while err.getvalue().count("elapsed") < 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # a call that reports no steps: only the heartbeat speaks
    text = err.getvalue()
    assert text.startswith("edgekit: stage 1/1: fuse: started")
    assert text.count("stage 1/1: fuse: elapsed") >= 2 and "fuse: done in" in text
    assert progress._reporter is None


def test_piped_cli_prints_plain_progress(tmp_path):
    """A compress with stderr piped (not a terminal) logs its stages as plain lines."""
    from tests.conftest import ROOT

    env = {k: v for k, v in __import__("os").environ.items() if k not in ("EDGEKIT_NO_PROGRESS", "EDGEKIT_PROGRESS")}
    env["EDGEKIT_PROGRESS_INTERVAL"] = "0.5"
    r = subprocess.run(
        [sys.executable, "-m", "edgekit", "compress", "convnet", "--recipe", "deploy", "--no-latency", "--json", "--out", str(tmp_path / "o")],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    assert r.returncode == 0, r.stderr
    # the whole command is one top-level task (alive from its first second); stages show in the status lines
    assert r.stderr.startswith("edgekit: compress convnet: started") and "edgekit: compress convnet: done in" in r.stderr
    assert "compress convnet > " in r.stderr
    assert "edgekit:" not in r.stdout  # progress stays off stdout


def test_wrapped_only_in_plain_mode(monkeypatch):
    monkeypatch.delenv("EDGEKIT_NO_PROGRESS", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setenv("EDGEKIT_PROGRESS", "plain")
    assert progress.wrapped("cmd", lambda: 7)() == 7
    assert err.getvalue().startswith("edgekit: cmd: started") and "cmd: done in" in err.getvalue()
    monkeypatch.setenv("EDGEKIT_NO_PROGRESS", "1")
    before = err.getvalue()
    assert progress.wrapped("cmd", lambda: 8)() == 8 and err.getvalue() == before
