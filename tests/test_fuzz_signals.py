"""Fuzz: signals and concurrency. SIGTERM cleans up like SIGINT; a replacement is never half done; concurrent
writers of one output never leave a mixed or temporary directory behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import redirect_stderr
from io import StringIO

import pytest
import typer

from edgekit.artifacts import MANIFEST, atomic_output_dir, verify_manifest, write_bytes_atomic, write_manifest
from edgekit.errors import Interrupted, UserInputError
from tests.conftest import ROOT


def _run(body) -> tuple[int, str]:
    from edgekit.cli._common import run

    err = StringIO()
    with redirect_stderr(err):
        try:
            run(body)
        except typer.Exit as exc:
            return exc.exit_code, err.getvalue()
    return 0, err.getvalue()


def _names(d):
    return sorted(p.name for p in d.iterdir())


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_signal_mid_write_leaves_nothing(sig, code, tmp_path):
    def body():
        with atomic_output_dir(tmp_path / "out") as t:
            (t / "model.pt2").write_bytes(b"half")
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this ends

    got, err = _run(body)
    assert got == code and "interrupted" in err
    assert _names(tmp_path) == []


def test_sigterm_during_force_keeps_the_previous_output(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as t:
        (t / "old.txt").write_text("old")

    def body():
        with atomic_output_dir(out, force=True) as t:
            (t / "new.txt").write_text("new")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)

    assert _run(body)[0] == 143
    assert _names(tmp_path) == ["out"] and (out / "old.txt").read_text() == "old"
    verify_manifest(out)


def test_signal_during_replacement_is_deferred(tmp_path, monkeypatch):
    """A signal that arrives while the old output is swapped out is delivered after the swap completes."""
    out = tmp_path / "out"
    with atomic_output_dir(out) as t:
        (t / "old.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def replace(a, b):
        calls.append((a, b))
        if os.fspath(a) == os.fspath(out):  # the old output moves aside: the swap has begun
            os.kill(os.getpid(), signal.SIGTERM)
        return real_replace(a, b)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr("edgekit.artifacts._exchange", lambda a, b: False)  # the two-rename fallback

    def body():
        with atomic_output_dir(out, force=True) as t:
            (t / "new.txt").write_text("new")

    assert _run(body)[0] == 143
    monkeypatch.setattr(os, "replace", real_replace)
    assert _names(tmp_path) == ["out"]
    assert (out / "new.txt").read_text() == "new" and not (out / "old.txt").exists()


def test_interrupted_exception_cleans_up(tmp_path):
    with pytest.raises(Interrupted):
        with atomic_output_dir(tmp_path / "o") as t:
            (t / "x").write_text("1")
            raise Interrupted(signal.SIGTERM)
    assert _names(tmp_path) == []


def test_sigterm_handler_is_restored_after_a_command():
    before = signal.getsignal(signal.SIGTERM)
    _run(lambda: None)
    assert signal.getsignal(signal.SIGTERM) is before


def test_run_from_a_worker_thread(tmp_path):
    result = {}
    th = threading.Thread(target=lambda: result.setdefault("r", _run(lambda: None)))
    th.start()
    th.join(30)
    assert result["r"][0] == 0


def test_concurrent_writers_without_force(tmp_path):
    out = tmp_path / "out"
    barrier = threading.Barrier(4)
    results = []

    def writer(i):
        try:
            with atomic_output_dir(out) as t:
                (t / "who").write_text(str(i))
                write_manifest(t, kind="test")
                barrier.wait(10)
            results.append(("ok", i))
        except UserInputError as exc:
            results.append(("refused", str(exc)))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(r[0] for r in results) == ["ok", "refused", "refused", "refused"]
    assert all("appeared during the run" in r[1] for r in results if r[0] == "refused")
    assert _names(tmp_path) == ["out"]
    verify_manifest(out)


def test_concurrent_writers_with_force(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as t:
        (t / "who").write_text("first")
    errors = []

    def writer(i):
        try:
            for _ in range(5):
                with atomic_output_dir(out, force=True) as t:
                    (t / "who").write_text(str(i))
                    (t / "pad").write_bytes(os.urandom(1000))
        except UserInputError as exc:  # lost a rename race: refused cleanly, nothing mixed
            errors.append(str(exc))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert _names(tmp_path) == ["out"]
    m = verify_manifest(out)  # one complete output, from one writer
    assert set(m["files"]) == {"who", "pad"}


def test_readers_never_see_a_partial_output(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as t:
        (t / "w").write_bytes(b"0" * 10000)
    stop = threading.Event()
    seen = []

    def reader():
        while not stop.is_set():
            try:
                verify_manifest(out)
                seen.append("ok")
            except UserInputError as exc:
                seen.append(str(exc))

    th = threading.Thread(target=reader)
    th.start()
    for i in range(20):
        with atomic_output_dir(out, force=True) as t:
            (t / "w").write_bytes(bytes([i]) * 10000)
    stop.set()
    th.join(10)
    assert seen and all(s == "ok" for s in seen), [s for s in seen if s != "ok"][:3]


def test_atomic_file_write_interrupted(tmp_path, monkeypatch):
    def boom(fd):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(Interrupted):
        write_bytes_atomic(tmp_path / "f.json", b"{}")
    assert _names(tmp_path) == []


def test_stale_old_directory_of_a_killed_run_is_removed(tmp_path):
    stale = tmp_path / f".out.old-{2**22 + 4242}"
    stale.mkdir()
    (stale / MANIFEST).write_text("{}")
    with atomic_output_dir(tmp_path / "out") as t:
        (t / "x").write_text("1")
    assert _names(tmp_path) == ["out"]


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["sigterm", "sigint"])
def test_signal_to_a_compress_process(sig, code, tmp_path):
    recipe = tmp_path / "long.yaml"
    recipe.write_text("name: long\nstages:\n  - fuse: {}\n  - finetune: {epochs: 500}\n")
    out = tmp_path / "out"
    env = {**os.environ, "EDGEKIT_NO_PROGRESS": "1", "EDGEKIT_DEBUG_LOG": str(tmp_path.parent / f"{tmp_path.name}.log")}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "compress", "--recipe", str(recipe), "--out", str(out),
                             "--no-latency"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
        time.sleep(0.2)
    assert any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()), "run never reached its stages"
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert _names(tmp_path) == ["long.yaml"]
