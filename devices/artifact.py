"""The artifact contract between the exporters and the profiler (see docs/profile.md).

An artifact is a directory with ``manifest.json`` (target, model_file, files {relpath: sha256}, input_name,
input_shape, precision) and ``reference.npz`` (``inputs``, ``outputs``), or a bare ``.onnx`` / ``.xml`` file
(then there is nothing to validate against, and the profile says so).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.artifacts import sha256_file
from edgekit.errors import EdgekitError, UserInputError

REQUIRED_KEYS = ("target", "files", "model_file", "input_name", "input_shape", "precision")
BARE_SUFFIXES = {".onnx": "onnx", ".xml": "openvino"}
# ELF e_machine -> architecture name as platform.machine() spells it on Linux
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86_64", 183: "aarch64", 243: "riscv64"}
ARCH_ALIASES = {"arm64": "aarch64", "arm64-v8a": "aarch64", "amd64": "x86_64", "x64": "x86_64",
                "armeabi-v7a": "arm", "armv7l": "arm", "i686": "x86", "i386": "x86"}
# cosine threshold of the on-device validation, per precision (anything else: int8's)
COSINE_THRESHOLD = {"fp32": 0.9999, "fp16": 0.999, "bf16": 0.995, "int8": 0.98}


class ChecksumError(EdgekitError):
    """A file of an artifact does not match the sha256 in its manifest."""


@dataclass
class Artifact:
    root: Path  # the directory that holds the files
    target: str
    model_file: str
    files: dict[str, str]  # relpath -> sha256 (empty for a bare model file)
    input_name: str | None = None
    input_shape: list[int] | None = None
    precision: str = "unknown"
    manifest: dict[str, Any] = field(default_factory=dict)
    bare: bool = False

    @property
    def name(self) -> str:
        return (self.root / self.model_file).stem if self.bare else self.root.name

    @property
    def has_reference(self) -> bool:
        return "reference.npz" in self.files

    @property
    def digest(self) -> str:
        """Content hash of the whole artifact (its file hashes): the key of the board-side cache."""
        text = json.dumps(sorted(self.files.items())).encode()
        return hashlib.sha256(text).hexdigest()

    @property
    def cosine_threshold(self) -> float:
        contract = self.manifest.get("validation_contract")  # written by `edgekit export`: the bound export used
        if isinstance(contract, dict) and isinstance(contract.get("cosine"), (int, float)):
            return float(contract["cosine"])
        return COSINE_THRESHOLD.get(self.precision, COSINE_THRESHOLD["int8"])

    def default_runtime(self) -> str:
        """The runtime that runs this artifact's target (edgekit.exporters.runtimes, the one runtime registry)."""
        from edgekit.exporters.runtimes import runtime_for_target

        try:
            return runtime_for_target(self.target)
        except UserInputError:
            return "onnxruntime"

    def machine_code_arch(self) -> str | None:
        """The architecture of a compiled model file (an ELF library, e.g. TVM's model.so); None when the
        model file is portable (ONNX, OpenVINO IR) and runs on any architecture with the runtime."""
        try:
            with open(self.root / self.model_file, "rb") as fh:
                head = fh.read(20)
        except OSError:
            return None
        if len(head) < 20 or head[:4] != b"\x7fELF":
            return None
        machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
        return ELF_MACHINES.get(machine, f"ELF machine {machine}")


def normalize_arch(arch: str | None) -> str | None:
    if not arch:
        return None
    return ARCH_ALIASES.get(arch.lower(), arch.lower())


class ArchitectureMismatch(UserInputError):
    """A compiled artifact built for one architecture was sent to a board of another (refused before the push)."""


def check_architecture(art: Artifact, board_arch: str | None, device: str) -> None:
    """Refuse, before anything is pushed, a compiled artifact whose machine code the board cannot run."""
    need, have = art.machine_code_arch(), normalize_arch(board_arch)
    if need is None or have is None or need == have:
        return
    hint = " (export it for the board: --target tvm --option device=aarch64)" if have == "aarch64" else ""
    raise ArchitectureMismatch(f"artifact {art.name}: {art.model_file} is {need} machine code but device {device} "
                               f"is {have}; refused before the push{hint}")


def _safe_relpath(rel: str, where: str) -> str:
    p = PurePosixPath(rel)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise UserInputError(f"{where}: file path {rel!r} must be relative and stay inside the artifact")
    return str(p)


def read_artifact(path: str | Path) -> Artifact:
    """Read an artifact directory (or a bare .onnx/.xml file); raise UserInputError naming what is wrong."""
    path = Path(path).expanduser()
    if not path.exists():
        raise UserInputError(f"artifact {path} does not exist (expected an exported artifact directory or a "
                             ".onnx/.xml file)")
    if path.is_file():
        target = BARE_SUFFIXES.get(path.suffix.lower())
        if target is None:
            raise UserInputError(f"artifact {path}: a bare model file must be .onnx or .xml (OpenVINO IR); "
                                 "otherwise pass an artifact directory with manifest.json")
        files = {path.name: sha256_file(path)}
        if target == "openvino":
            bin_file = path.with_suffix(".bin")
            if not bin_file.exists():
                raise UserInputError(f"artifact {path}: OpenVINO IR needs {bin_file.name} next to it")
            files[bin_file.name] = sha256_file(bin_file)
        return Artifact(root=path.parent, target=target, model_file=path.name, files=files, bare=True)
    mpath = path / "manifest.json"
    if not mpath.exists():
        raise UserInputError(f"artifact {path}: no manifest.json (pass the exported artifact directory, or "
                             "a bare .onnx/.xml file)")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserInputError(f"{mpath}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise UserInputError(f"{mpath}: must be a JSON object")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise UserInputError(f"{mpath}: missing key(s) {', '.join(missing)}; required: {', '.join(REQUIRED_KEYS)}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) and len(v) == 64 for v in files.values()):
        raise UserInputError(f"{mpath}: 'files' must map relative paths to sha256 hex digests")
    files = {_safe_relpath(k, str(mpath)): v.lower() for k, v in files.items()}
    model_file = _safe_relpath(str(manifest["model_file"]), f"{mpath} model_file")
    if model_file not in files:
        raise UserInputError(f"{mpath}: model_file {model_file!r} is not listed in 'files'")
    shape = manifest["input_shape"]
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and d > 0 for d in shape)):
        raise UserInputError(f"{mpath}: input_shape must be a list of positive ints, got {shape!r}")
    return Artifact(root=path, target=str(manifest["target"]), model_file=model_file, files=files,
                    input_name=str(manifest["input_name"]), input_shape=list(shape),
                    precision=str(manifest["precision"]), manifest=manifest)


def verify_files(art: Artifact) -> None:
    """Check every file against its sha256; raise ChecksumError naming the first bad file."""
    for rel, expected in sorted(art.files.items()):
        p = art.root / rel
        if not p.is_file():
            raise ChecksumError(f"artifact {art.root}: file {rel} listed in manifest.json is missing")
        got = sha256_file(p)
        if got != expected:
            raise ChecksumError(f"artifact {art.root}: checksum mismatch for {rel} (manifest {expected[:12]}..., "
                                f"file {got[:12]}...)")
