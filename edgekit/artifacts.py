"""Atomic outputs: directories and files are written under a temporary name and renamed into place.

An existing output is refused unless ``force``; an interrupted run (Ctrl-C, crash) leaves only a hidden
``.<name>.tmp-*`` directory, never something that looks complete. The manifest is written last.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from edgekit.errors import UserInputError

MANIFEST = "manifest.json"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def check_writable(out: Path, force: bool) -> None:
    out = Path(out)
    if out.exists() and not force:
        raise UserInputError(f"output {out} already exists; pass --force to overwrite it")


@contextmanager
def atomic_output_dir(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out`` (refused if it exists without force)."""
    out = Path(out)
    check_writable(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        _default_modes(tmp)
        if out.exists():
            if not force:
                raise UserInputError(f"output {out} appeared during the run; pass --force to overwrite it")
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_modes(directory: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give outputs the usual umask-based modes."""
    mask = _umask()
    directory.chmod(0o777 & ~mask)
    for p in directory.rglob("*"):
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("edgekit", "torch", "onnx", "onnxruntime", "openvino", "coremltools", "apache-tvm", "tensorrt"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def write_manifest(directory: Path, **fields: Any) -> dict[str, Any]:
    """Hash every file in ``directory`` and write ``manifest.json`` (call it last)."""
    directory = Path(directory)
    files = {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    manifest = {"edgekit_manifest": 1, **fields, "versions": versions(), "files": files}
    write_json_atomic(directory / MANIFEST, manifest)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise UserInputError(f"{directory}: no {MANIFEST}; not a complete edgekit artifact (an interrupted run?)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserInputError(f"{path}: corrupt manifest ({exc})") from None


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check every file against its recorded sha256; raise naming the first mismatch."""
    manifest = read_manifest(directory)
    for rel, digest in manifest.get("files", {}).items():
        p = Path(directory) / rel
        if not p.is_file():
            raise UserInputError(f"{directory}: file {rel} listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise UserInputError(f"{directory}: file {rel} does not match its sha256 in the manifest (corrupted?)")
    return manifest
