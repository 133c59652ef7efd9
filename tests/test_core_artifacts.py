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


# ------------------------------------------------------------------------------------------------ reproducible


def _sha(p):
    from edgekit.artifacts import sha256_file

    return sha256_file(p)


def test_save_model_is_byte_reproducible(tmp_path):
    """No per-process id() (from_node graph_id) and no random serialization_id in model.pt2."""
    import torch

    from edgekit import models
    from edgekit.loading import load_model, save_model

    torch.manual_seed(0)
    m = models.create("convnet", pretrained=False)
    x = torch.randn(1, 3, 32, 32)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        save_model(m, tmp_path / d, x)
    assert _sha(tmp_path / "a" / "model.pt2") == _sha(tmp_path / "b" / "model.pt2")
    loaded = load_model(str(tmp_path / "a" / "model.pt2"))  # still a valid archive after normalisation
    assert torch.allclose(loaded.model(x), m.eval()(x), atol=1e-6)


@pytest.mark.slow
def test_compress_and_exports_are_byte_reproducible(tmp_path):
    """Same model, recipe, data and seed in two processes: model.pt2, ONNX and OpenVINO files have equal sha256."""
    import json

    from tests.conftest import run_cli

    for run in ("r1", "r2"):
        r = run_cli("compress", "convnet", "-r", "int8", "--no-latency", "--seed", "3", "--out", str(tmp_path / run / "c"))
        assert r.returncode == 0, r.stderr
        for target in ("onnx", "openvino"):
            r = run_cli("export", str(tmp_path / run / "c"), "-t", target, "--out", str(tmp_path / run / target))
            assert r.returncode == 0, r.stderr
    for sub in ("c", "onnx", "openvino"):
        m1 = json.loads((tmp_path / "r1" / sub / "manifest.json").read_text())
        m2 = json.loads((tmp_path / "r2" / sub / "manifest.json").read_text())
        model_files = [f for f in m1["files"] if f.endswith((".pt2", ".onnx", ".xml", ".bin"))]
        assert model_files, sub
        for f in model_files:
            assert m1["files"][f] == m2["files"][f], (sub, f)
