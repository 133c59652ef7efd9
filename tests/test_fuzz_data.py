"""Fuzz: hostile and malformed --data (shapes, .npz headers and pickles, decompression bombs, NaN/Inf, labels)."""

from __future__ import annotations

import io
import struct
import zipfile

import numpy as np
import pytest

from tests.hostile import Evil, assert_clean_error, invoke, snapshot


def _npz(path, **arrays):
    np.savez(path, **arrays)


def _npz_claiming(path, shape):
    """An .npz whose x.npy header declares ``shape`` (float32) but holds no data: an oversize header."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", _npy_bytes(header))


def _npy_bytes(header) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue()


def _npz_object(path, marker):
    arr = np.empty(20, dtype=object)
    arr[:] = [Evil(marker)] * 20
    np.savez(path, x=arr)


def _png_bomb(path, w=20000, h=20000):
    """A tiny PNG whose header declares w x h pixels (IDAT truncated): decompression-bomb sized."""
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _folder(tmp_path, build):
    d = tmp_path / "imgs"
    (d / "a").mkdir(parents=True)
    (d / "b").mkdir()
    build(d)
    return d


def _good_images(d, n=8):
    from PIL import Image

    for cls in ("a", "b"):
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), i * 20, np.uint8)).save(d / cls / f"{i}.png")


x_ok = np.random.default_rng(0).random((40, 3, 32, 32), dtype=np.float32)
y_ok = np.arange(40) % 10

CASES = {
    "random-huge": (lambda t: "random:3x100000x100000", "memory"),
    "random-zero": (lambda t: "random:0x32x32", "random"),
    "random-letters": (lambda t: "random:axbxc", "random"),
    "random-2d": (lambda t: "random:3x32", "random"),
    "random-negative": (lambda t: "random:3x-32x32", "random"),
    "npz-header-1tib": (lambda t: (_npz_claiming(t / "d.npz", (1 << 16, 4, 1 << 11, 1 << 11)), t / "d.npz")[1], "d.npz"),
    "npz-object-pickle": (lambda t: (_npz_object(t / "d.npz", t / "PWNED"), t / "d.npz")[1], "d.npz"),
    "npz-corrupt": (lambda t: ((t / "d.npz").write_bytes(b"PK\x03\x04garbage" * 10), t / "d.npz")[1], "d.npz"),
    "npz-not-zip": (lambda t: ((t / "d.npz").write_bytes(b"hello"), t / "d.npz")[1], "d.npz"),
    "npz-no-x": (lambda t: (_npz(t / "d.npz", y=y_ok), t / "d.npz")[1], "d.npz"),
    "npz-x-2d": (lambda t: (_npz(t / "d.npz", x=np.zeros((40, 5), np.float32)), t / "d.npz")[1], "d.npz"),
    "npz-x-strings": (lambda t: (_npz(t / "d.npz", x=np.array(["a"] * 40)), t / "d.npz")[1], "d.npz"),
    "npz-nan": (lambda t: (_npz(t / "d.npz", x=np.where(np.arange(x_ok.size).reshape(x_ok.shape) == 5, np.nan, x_ok), y=y_ok), t / "d.npz")[1], "d.npz"),
    "npz-inf": (lambda t: (_npz(t / "d.npz", x=np.where(np.arange(x_ok.size).reshape(x_ok.shape) == 7, np.inf, x_ok), y=y_ok), t / "d.npz")[1], "d.npz"),
    "npz-labels-too-big": (lambda t: (_npz(t / "d.npz", x=x_ok, y=y_ok + 1000), t / "d.npz")[1], "d.npz"),
    "npz-labels-negative": (lambda t: (_npz(t / "d.npz", x=x_ok, y=y_ok - 5), t / "d.npz")[1], "d.npz"),
    "npz-labels-float": (lambda t: (_npz(t / "d.npz", x=x_ok, y=y_ok.astype(np.float32)), t / "d.npz")[1], "d.npz"),
    "npz-labels-length": (lambda t: (_npz(t / "d.npz", x=x_ok, y=y_ok[:5]), t / "d.npz")[1], "d.npz"),
    "npz-too-few": (lambda t: (_npz(t / "d.npz", x=x_ok[:3], y=y_ok[:3]), t / "d.npz")[1], "samples"),
    "png-bomb": (lambda t: _folder(t, lambda d: (_good_images(d), _png_bomb(d / "a" / "bomb.png"))), "bomb.png"),
    "png-corrupt": (lambda t: _folder(t, lambda d: (_good_images(d), (d / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnope"))), "bad.png"),
    "folder-empty": (lambda t: (t / "empty").mkdir() or t / "empty", "empty"),
    "folder-no-images": (lambda t: _folder(t, lambda d: (d / "a" / "x.txt").write_text("hi")), "imgs"),
    "missing-npz": (lambda t: t / "nope.npz", "nope.npz"),
    "unknown-spec": (lambda t: "ftp://example.com/data", "--data"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_data(case, tmp_path):
    build, needle = CASES[case]
    spec = build(tmp_path)
    before = snapshot(tmp_path)
    res = invoke(["compress", "convnet", "-r", "deploy", "--no-latency", "--data", spec, "--out", tmp_path / "out"], cwd=tmp_path)
    line = assert_clean_error(res, 2, needle)
    if case == "random-huge":
        assert line.count("iB") >= 2  # the estimate and the memory available, both in the message
    assert not (tmp_path / "PWNED").exists()
    assert snapshot(tmp_path) == before  # no output, no temporary directory left
