"""Atomic outputs: directories and files are written under a temporary name and renamed into place.

An existing output is refused unless ``force``, and ``force`` only ever replaces an earlier edgekit output
(a directory with an edgekit ``manifest.json``): a file, a symlink, the working directory or any other
directory is refused and left untouched. An interrupted run (Ctrl-C, SIGTERM, crash) leaves nothing behind
but, at worst after SIGKILL, a hidden ``.<name>.tmp-<pid>-*`` directory that the next run removes. The
manifest is written last; its schema is :class:`Manifest` (see docs/security.md for what its sha256 do).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import UserInputError

MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 4 << 20
MAX_FILES = 10_000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class Manifest(BaseModel):
    """The schema every edgekit ``manifest.json`` satisfies (extra, kind-specific fields are allowed)."""

    model_config = ConfigDict(extra="allow")
    edgekit_manifest: int = Field(..., ge=1, le=1, description="Manifest format version (1).")
    kind: Optional[str] = None
    target: Optional[str] = None
    model: Optional[str] = None
    model_file: Optional[str] = None
    input_shape: Optional[list[int]] = Field(None, max_length=8)
    files: dict[str, str] = Field(..., max_length=MAX_FILES, description="Relative path -> sha256 of every file.")

    @field_validator("files")
    @classmethod
    def _files(cls, v: dict[str, str]) -> dict[str, str]:
        for rel, digest in v.items():
            _check_relpath(rel)
            if not isinstance(digest, str) or not _SHA256.match(digest):
                raise ValueError(f"files[{rel!r}]: not a sha256 hex digest")
        return v

    @field_validator("model_file")
    @classmethod
    def _model_file(cls, v: Optional[str]) -> Optional[str]:
        return None if v is None else _check_relpath(v)

    @field_validator("input_shape")
    @classmethod
    def _shape(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and any(d <= 0 or d > 1 << 20 for d in v):
            raise ValueError("sizes must be between 1 and 1048576")
        return v


def _check_relpath(rel: str) -> str:
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or "\0" in rel or rel.startswith("~"):
        raise ValueError(f"{rel!r} is not a plain relative path inside the output")
    return rel


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


def is_edgekit_output(out: Path) -> bool:
    """True for a real directory (not a symlink) holding an edgekit ``manifest.json``."""
    out = Path(out)
    m = out / MANIFEST
    if out.is_symlink() or not out.is_dir() or m.is_symlink() or not m.is_file():
        return False
    try:
        with open(m, "rb") as fh:
            head = fh.read(MAX_MANIFEST_BYTES + 1)
        data = json.loads(head) if len(head) <= MAX_MANIFEST_BYTES else None
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(data, dict) and "edgekit_manifest" in data


def check_writable(out: Path, force: bool) -> None:
    """Refuse, before any work, an output that exists (unless ``force`` and it is an edgekit output) or whose
    directory cannot be written."""
    out = Path(os.path.abspath(out))
    cwd = Path.cwd().resolve()
    if out == cwd or out in cwd.parents or not out.name:
        raise UserInputError(f"output {out}: is the working directory or one of its parents; choose a new directory")
    if out.is_symlink() or out.exists():
        if not force:
            raise UserInputError(f"output {out} already exists; pass --force to overwrite it")
        if not is_edgekit_output(out):
            what = "a symlink" if out.is_symlink() else ("a directory" if out.is_dir() else "a file")
            raise UserInputError(
                f"output {out} is {what} that is not an edgekit output (no edgekit {MANIFEST}); --force only "
                "replaces an earlier edgekit output, so nothing was touched; choose another --out"
            )
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        probe = tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.probe-")
        os.rmdir(probe)
    except OSError as exc:
        raise UserInputError(f"output {out}: cannot write in {parent} ({exc.strerror or exc})") from None


_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a rename-and-clean-up sequence runs; they are delivered right after it.

    Done with Python-level handlers that only record the signal (a thread mask would not do: the C handler
    may run on another thread and Python then runs the handler in the main thread anyway)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: pending.append(signum)) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):
            signal.raise_signal(s)


def _remove_stale(out: Path) -> None:
    """Remove ``.<name>.tmp-<pid>-*`` / ``.old-<pid>`` siblings left by a killed run (its pid is gone)."""
    for p in out.parent.glob(f".{glob_escape(out.name)}.*-*"):
        m = re.fullmatch(re.escape(f".{out.name}.") + r"(?:tmp|old)-(\d+)(?:-.*)?", p.name)
        if not m or p.is_symlink() or not p.is_dir():
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextmanager
def atomic_output_dir(out: Path, force: bool = False, kind: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``out`` (see the module docstring).

    If the body wrote no manifest, one is written (``kind``), so every edgekit output can be recognised.
    """
    out = Path(os.path.abspath(out))
    check_writable(out, force)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(out)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-{os.getpid()}-"))
    except OSError as exc:
        raise UserInputError(f"output {out}: cannot create it ({exc.strerror or exc})") from None
    try:
        yield tmp
        if not (tmp / MANIFEST).is_file():
            write_manifest(tmp, kind=kind)
        _default_modes(tmp)
        with signals_deferred():
            _replace(tmp, out, force)
    except BaseException:
        with signals_deferred():
            shutil.rmtree(tmp, ignore_errors=True)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Linux ``renameat2(RENAME_EXCHANGE)``: swap two directories atomically; False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _replace(tmp: Path, out: Path, force: bool) -> None:
    if out.is_symlink() or out.exists():
        if not force:
            raise UserInputError(f"output {out} appeared during the run; pass --force to overwrite it")
        if not is_edgekit_output(out):
            raise UserInputError(f"output {out} appeared during the run and is not an edgekit output; nothing was touched")
        if _exchange(tmp, out):  # atomic swap: readers see the old or the new output, never neither
            shutil.rmtree(tmp, ignore_errors=True)
            return
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
        return
    try:
        os.replace(tmp, out)
    except OSError as exc:  # ENOTEMPTY/EEXIST: another run won the race
        raise UserInputError(f"output {out} appeared during the run ({exc.strerror}); nothing was replaced") from None


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
    """Read and validate ``manifest.json`` against :class:`Manifest` (bounded: size, nesting)."""
    from edgekit.limits import safe_json_file

    path = Path(directory) / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise UserInputError(f"{directory}: no {MANIFEST}; not a complete edgekit artifact (an interrupted run?)")
    data = safe_json_file(path, "manifest", MAX_MANIFEST_BYTES)
    if not isinstance(data, dict):
        raise UserInputError(f"{path}: corrupt manifest: a {type(data).__name__}, expected a JSON object")
    try:
        Manifest.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "(top)"
        raise UserInputError(f"{path}: corrupt manifest: field {loc!r}: {e['msg']}") from None
    return data


def verify_manifest(directory: Path) -> dict[str, Any]:
    """Check every listed file against its recorded sha256 (regular files inside ``directory`` only); raise
    naming the first mismatch. ``model_file``, when present, must be one of the listed files. A mismatch seen
    while another run replaces the output (its manifest changed meanwhile) is checked again."""
    for attempt in range(3):
        manifest = read_manifest(directory)
        try:
            return _verify(Path(directory), manifest)
        except UserInputError:
            if attempt == 2 or read_manifest(directory) == manifest:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _verify(directory: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    files = manifest["files"]
    model_file = manifest.get("model_file")
    if model_file is not None and model_file not in files:
        raise UserInputError(f"{directory}: model_file {model_file!r} is not listed with a sha256 in the manifest")
    root = directory.resolve()
    for rel, digest in files.items():
        p = directory / rel
        if p.is_symlink() or (p.exists() and root not in p.resolve().parents):
            raise UserInputError(f"{directory}: file {rel} listed in the manifest is a symlink or leaves the output; refused")
        if not p.is_file():
            raise UserInputError(f"{directory}: file {rel} listed in the manifest is missing")
        if sha256_file(p) != digest:
            raise UserInputError(f"{directory}: file {rel} does not match its sha256 in the manifest (corrupted?)")
    return manifest
