"""Hostile files built at test time for the fuzz suite (tests/test_fuzz_*.py), and the CLI harness.

Every payload that could run code creates a *marker* directory when (and only when) it is unpickled, so a
test can assert that nothing ran; :func:`live_payload_check` proves on a control load that the payload is live.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


class Evil:
    """Unpickling this runs ``os.mkdir(marker)``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(Evil(marker), protocol=2)


def evil_torch_save(marker: Path, wrap=lambda e: e) -> bytes:
    buf = io.BytesIO()
    torch.save(wrap(Evil(marker)), buf)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ .pt2


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


def tiny_pt2_bytes() -> bytes:
    torch.manual_seed(0)
    ep = torch.export.export(Tiny().eval(), (torch.randn(1, 1, 2, 2),))
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def entries(blob: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(blob)) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def build_zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def root_of(files: dict[str, bytes]) -> str:
    return next(iter(files)).split("/", 1)[0]


def edit_json(files: dict[str, bytes], suffix: str, fn) -> None:
    name = next(n for n in files if n.endswith(suffix))
    doc = json.loads(files[name])
    fn(doc)
    files[name] = json.dumps(doc).encode()


def claim_size(blob: bytes, name_suffix: str, size: int) -> bytes:
    """Patch the central directory so an entry claims ``size`` uncompressed bytes (an oversize header)."""
    buf = bytearray(blob)
    zf = zipfile.ZipFile(io.BytesIO(blob))
    pos = zf.start_dir
    while bytes(buf[pos : pos + 4]) == b"PK\x01\x02":
        n, e, c = struct.unpack_from("<HHH", buf, pos + 28)
        if bytes(buf[pos + 46 : pos + 46 + n]).decode().endswith(name_suffix):
            struct.pack_into("<I", buf, pos + 24, min(size, 0xFFFFFFFE))
        pos += 46 + n + e + c
    return bytes(buf)


# ------------------------------------------------------------------------------------------------ CLI


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("error:")]


def invoke(args: list[str], cwd: Path | None = None) -> Result:
    """Run ``edgekit ARGS`` in this process (``edgekit.cli.main.cli``); capture stdout and stderr."""
    from edgekit.cli.main import cli

    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = cli([str(a) for a in args])
    finally:
        os.chdir(old)
    return Result(code, out.getvalue(), err.getvalue())


def assert_clean_error(res: Result, code: int, *needles: str) -> str:
    """Exit ``code``, exactly one ``error:`` line holding every needle, no traceback anywhere."""
    assert res.code == code, (res.code, res.err[-2000:], res.out[-500:])
    assert "Traceback" not in res.err + res.out, res.err[-3000:]
    lines = res.error_lines
    assert len(lines) == 1, res.err[-2000:]
    for n in needles:
        assert n.lower() in lines[0].lower(), (n, lines[0])
    return lines[0]


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and mtime: compare before/after to prove nothing changed."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_mode, st.st_size if not p.is_dir() else 0, st.st_mtime_ns)
    return out
