"""``torch.export`` archives (``.pt2``) without pickle: inspection before loading, reproducible saving.

``torch.export.load`` unpickles whatever an archive asks it to: weights and constants marked ``use_pickle``,
opaque Python objects and TorchScript custom-class objects, the legacy format's pickled state dict, and
sample inputs (it retries them with ``weights_only=False`` when the safe load fails). It also loads compiled
AOTInductor code. :func:`inspect_pt2` reads the archive as a zip and refuses all of that, with the reason,
before ``torch.export.load`` sees the file; ``--trust-pickle`` skips the inspection.

:func:`save_pt2` writes the same bytes for the same program: the per-process ``graph_id`` provenance in the
graph JSON is dropped and the random ``serialization_id`` becomes a digest of the archive's content.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit.errors import UserInputError

MAX_ENTRIES = 100_000
_FIXED = {"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id", "version"}
_CUSTOM_KEYS = {"as_custom_obj", "custom_obj", "custom_obj_values"}


def _refuse(path: Path, why: str) -> UserInputError:
    return UserInputError(
        f"{path}: refused to load: {why}; loading it would unpickle or run code from the file. "
        "Pass --trust-pickle only if you trust this file"
    )


def _walk_keys(obj: Any) -> set[str]:
    found: set[str] = set()
    stack = [obj]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            for k, v in o.items():
                if k in _CUSTOM_KEYS and v:
                    found.add(k)
                stack.append(v)
        elif isinstance(o, list):
            stack.extend(o)
    return found


def inspect_pt2(path: Path) -> None:
    """Raise ``UserInputError`` unless ``path`` is a ``torch.export`` archive that loads without unpickling
    anything but plain tensors (``weights_only``) and without compiled code."""
    from edgekit.limits import check_allocation, load_json_text

    path = Path(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a torch.export archive (not a zip file: {exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_ENTRIES:
            raise UserInputError(f"{path}: {len(infos)} entries in the archive; the limit is {MAX_ENTRIES}")
        check_allocation(sum(i.file_size for i in infos), f"{path} (uncompressed archive)")
        top = {i.filename for i in infos if "/" not in i.filename}
        if "version" in top or any(n.startswith("serialized_") for n in top):
            raise _refuse(path, "it uses the legacy torch.export format, whose weights and constants are pickled")
        roots = {i.filename.split("/", 1)[0] for i in infos}
        if len(roots) != 1 or any("/" not in i.filename for i in infos):
            raise UserInputError(f"{path}: not a torch.export archive (expected one top-level folder, found {len(roots)})")
        root = roots.pop()
        names: dict[str, zipfile.ZipInfo] = {}
        for i in infos:
            rel = i.filename[len(root) + 1 :]
            p = PurePosixPath(rel)
            if p.is_absolute() or ".." in p.parts:
                raise UserInputError(f"{path}: archive entry {i.filename!r} is not a plain relative path")
            names[rel] = i

        def read(rel: str, limit: int = 256 << 20) -> bytes:
            info = names[rel]
            if info.file_size > limit:
                raise UserInputError(f"{path}: archive entry {rel} is {info.file_size} bytes; the limit is {limit}")
            try:
                with zf.open(info) as fh:
                    return fh.read(limit + 1)[:limit]
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
                raise UserInputError(f"{path}: archive entry {rel} is corrupt ({type(exc).__name__}: {exc})") from None

        if "archive_format" not in names:
            if any(n.endswith(".pt") for n in names):
                raise _refuse(path, "it uses the legacy torch.export format, whose weights and constants are pickled")
            raise UserInputError(f"{path}: not a torch.export archive (no archive_format entry)")
        if read("archive_format", 64).strip() != b"pt2":
            raise UserInputError(f"{path}: not a torch.export archive (archive_format is not 'pt2')")
        models = [n[len("models/") : -len(".json")] for n in names if n.startswith("models/") and n.endswith(".json")]
        if not models:
            raise UserInputError(f"{path}: the archive holds no exported program (models/*.json)")
        allowed = set(_FIXED)
        for m in models:
            allowed |= {f"models/{m}.json", f"data/sample_inputs/{m}.pt"}
            for kind, prefix in (("weights", "weight_"), ("constants", "tensor_")):
                cfg_name = f"data/{kind}/{m}_{kind}_config.json"
                if cfg_name not in names:
                    if kind == "constants" and f"data/constants/{m}.pt" in names:
                        raise _refuse(path, "its constants use the legacy pickled format")
                    raise UserInputError(f"{path}: the archive has no {cfg_name}")
                allowed.add(cfg_name)
                cfg = load_json_text(read(cfg_name, 64 << 20), f"{path}:{cfg_name}")
                entries = cfg.get("config") if isinstance(cfg, dict) else None
                if not isinstance(entries, dict):
                    raise UserInputError(f"{path}: {cfg_name} is malformed (no 'config' mapping)")
                for fqn, meta in entries.items():
                    if not isinstance(meta, dict):
                        raise UserInputError(f"{path}: {cfg_name}: entry {fqn!r} is malformed")
                    pname = str(meta.get("path_name", ""))
                    if pname.startswith("custom_obj_"):
                        raise _refuse(path, f"{kind[:-1]} {fqn!r} is a TorchScript custom-class object")
                    if pname.startswith("opaque_obj_"):
                        raise _refuse(path, f"{kind[:-1]} {fqn!r} is an opaque pickled Python object")
                    if meta.get("use_pickle") is not False:
                        raise _refuse(path, f"{kind[:-1]} {fqn!r} is stored with use_pickle")
                    if not pname.startswith(prefix) or f"data/{kind}/{pname}" not in names:
                        raise UserInputError(f"{path}: {cfg_name}: {fqn!r} points to a missing entry {pname!r}")
                    allowed.add(f"data/{kind}/{pname}")
            graph = load_json_text(read(f"models/{m}.json"), f"{path}:models/{m}.json")
            custom = _walk_keys(graph)
            if custom:
                raise _refuse(path, f"the program uses custom-class objects ({', '.join(sorted(custom))})")
            sample = f"data/sample_inputs/{m}.pt"
            if sample in names:
                _check_tensors_only(path, read(sample))
        extra = sorted(n for n in names if n not in allowed and not n.startswith("extra/"))
        if extra:
            code = [n for n in extra if n.startswith(("data/aotinductor/", "data/executorch/", "data/mtia"))]
            if code:
                raise _refuse(path, f"it holds compiled code ({code[0]})")
            raise UserInputError(f"{path}: unexpected entry {extra[0]!r} in the archive; refused")


def _check_tensors_only(path: Path, blob: bytes) -> None:
    import torch

    try:
        obj = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the restricted unpickler refuses anything but tensors
        raise _refuse(path, f"its sample inputs are not plain tensors ({type(exc).__name__})") from None
    if not isinstance(obj, (tuple, dict)):
        raise UserInputError(f"{path}: its sample inputs are a {type(obj).__name__}, expected a tuple or dict")


# ------------------------------------------------------------------------------------------------ saving


def _strip_provenance(ep: Any) -> None:
    """``from_node`` records a ``graph_id`` (a Python ``id()``) per node; it is debug provenance only."""
    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            node.meta.pop("from_node", None)


def _patch_stored(buf: bytearray, rel_suffix: str, new: bytes) -> bool:
    """Overwrite the data of a stored (uncompressed) zip entry of the same length; fix both CRC32 fields."""
    import zlib

    zf = zipfile.ZipFile(io.BytesIO(bytes(buf)))
    info = next((i for i in zf.infolist() if i.filename.endswith(rel_suffix)), None)
    if info is None or info.compress_type != zipfile.ZIP_STORED or info.file_size != len(new):
        return False
    start_dir = zf.start_dir
    h = info.header_offset
    name_len, extra_len = struct.unpack_from("<HH", buf, h + 26)
    data = h + 30 + name_len + extra_len
    buf[data : data + len(new)] = new
    crc = zlib.crc32(new) & 0xFFFFFFFF
    struct.pack_into("<I", buf, h + 14, crc)
    if struct.unpack_from("<H", buf, h + 6)[0] & 0x8:  # a data descriptor follows the data
        d = data + info.compress_size
        off = d + 4 if bytes(buf[d : d + 4]) == b"PK\x07\x08" else d
        struct.pack_into("<I", buf, off, crc)
    pos = start_dir
    while bytes(buf[pos : pos + 4]) == b"PK\x01\x02":
        n, e, c = struct.unpack_from("<HHH", buf, pos + 28)
        if bytes(buf[pos + 46 : pos + 46 + n]).decode("utf-8", "replace") == info.filename:
            struct.pack_into("<I", buf, pos + 16, crc)
            return True
        pos += 46 + n + e + c
    return False


def save_pt2(ep: Any, path: Path) -> None:
    """``torch.export.save`` with reproducible bytes (see the module docstring), written atomically."""
    import torch

    from edgekit.artifacts import write_bytes_atomic

    _strip_provenance(ep)
    raw = io.BytesIO()
    torch.export.save(ep, raw)
    buf = bytearray(raw.getvalue())
    zf = zipfile.ZipFile(io.BytesIO(bytes(buf)))
    sid = next((i for i in zf.infolist() if i.filename.endswith("/.data/serialization_id")), None)
    if sid is not None:
        h = hashlib.sha256()
        for i in sorted(zf.infolist(), key=lambda i: i.filename):
            if i is not sid:
                h.update(i.filename.encode() + b"\0" + zf.read(i) + b"\0")
        digest = str(int(h.hexdigest(), 16) % 10**sid.file_size).zfill(sid.file_size).encode()
        if not _patch_stored(buf, "/.data/serialization_id", digest):
            raise RuntimeError("could not normalise the archive's serialization_id")
    write_bytes_atomic(Path(path), bytes(buf))
