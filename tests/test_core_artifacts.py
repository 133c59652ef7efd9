"""Atomic outputs: refuse to overwrite without force, leave nothing complete-looking on failure."""

from __future__ import annotations

import pytest

from edgekit.artifacts import atomic_output_dir, read_manifest, verify_manifest, write_manifest
from edgekit.errors import UserInputError


def test_atomic_dir_success_and_refusal(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
        write_manifest(tmp, kind="test")
        assert not out.exists()  # nothing visible until the end
    assert (out / "a.txt").read_text() == "1"
    m = verify_manifest(out)
    assert "a.txt" in m["files"] and m["versions"]["torch"]
    with pytest.raises(UserInputError, match="--force"):
        with atomic_output_dir(out):
            pass
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert (out / "b.txt").exists() and not (out / "a.txt").exists()


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_run_leaves_nothing(tmp_path, exc):
    out = tmp_path / "out"
    with pytest.raises(type(exc)):
        with atomic_output_dir(out) as tmp:
            (tmp / "model.pt2").write_text("half")
            raise exc
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_interrupted_force_keeps_previous_output(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=True) as tmp:
            raise RuntimeError("boom")
    assert (out / "old.txt").read_text() == "old"


def test_tampered_file_detected(tmp_path):
    with atomic_output_dir(tmp_path / "o") as tmp:
        (tmp / "w.bin").write_bytes(b"abc")
        write_manifest(tmp)
    (tmp_path / "o" / "w.bin").write_bytes(b"abd")
    with pytest.raises(UserInputError, match="w.bin"):
        verify_manifest(tmp_path / "o")
    (tmp_path / "p").mkdir()
    with pytest.raises(UserInputError, match="no manifest.json"):
        read_manifest(tmp_path / "p")
