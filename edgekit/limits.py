"""Bounds on what an input file may make edgekit do, checked before any work.

* YAML and JSON documents: a size limit, a nesting limit, and a budget on the *expanded* size of a YAML
  document (aliases counted as many times as they are used), so a few hundred bytes of alias bomb cannot grow
  into gigabytes in the parser, the validator or the line-number walker.
* Allocations from declared shapes (random data, ``.npz`` headers, image headers): refused when the estimate
  exceeds half of the memory available, read from the OS, with both figures in the message.

Every refusal is a :class:`~edgekit.errors.UserInputError` naming the file (or option) and the limit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from edgekit.errors import UserInputError

MAX_DOC_BYTES = 1 << 20  # recipes, devices files, manifests: far smaller in practice
MAX_DEPTH = 64
MAX_YAML_NODES = 50_000  # expanded: every alias use counts its whole subtree again


# ------------------------------------------------------------------------------------------------ text


def read_text(path: Path, what: str, max_bytes: int = MAX_DOC_BYTES) -> str:
    """Read a small text document, refusing non-regular files and anything over ``max_bytes``."""
    path = Path(path)
    try:
        if not path.is_file():
            raise UserInputError(f"{what} {path}: not a regular file")
        size = path.stat().st_size
        if size > max_bytes:
            raise UserInputError(f"{what} {path}: {size} bytes; the limit is {max_bytes} bytes")
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError as exc:
        raise UserInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(raw) > max_bytes:
        raise UserInputError(f"{what} {path}: more than {max_bytes} bytes; refused")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{what} {path}: not UTF-8 text (byte {exc.start})") from None


# ------------------------------------------------------------------------------------------------ YAML


def _check_node(root: yaml.Node, where: str, max_nodes: int, max_depth: int) -> None:
    """Expanded node count and depth of a composed YAML graph, without expanding it (memoised per node)."""
    size: dict[int, int] = {}
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    # iterative post-order walk: (node, children_done)
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        nid = id(node)
        if isinstance(node, yaml.MappingNode):
            kids = [c for kv in node.value for c in kv]
        elif isinstance(node, yaml.SequenceNode):
            kids = list(node.value)
        else:
            kids = []
        if done:
            on_path.discard(nid)
            size[nid] = 1 + sum(size[id(k)] for k in kids)
            depth[nid] = 1 + max((depth[id(k)] for k in kids), default=0)
            if size[nid] > max_nodes:
                raise UserInputError(
                    f"{where}: the document expands to more than {max_nodes} nodes (aliases are counted each time "
                    "they are used); refused"
                )
            if depth[nid] > max_depth:
                raise UserInputError(f"{where}: nesting deeper than {max_depth} levels; refused")
            continue
        if nid in size:
            continue
        if nid in on_path:
            raise UserInputError(f"{where}: an alias refers to a node that contains it (a cycle); refused")
        on_path.add(nid)
        stack.append((node, True))
        if len(on_path) > max_depth:
            raise UserInputError(f"{where}: nesting deeper than {max_depth} levels; refused")
        for k in kids:
            if id(k) not in size:
                stack.append((k, False))


def load_yaml(text: str, where: str, max_nodes: int = MAX_YAML_NODES, max_depth: int = MAX_DEPTH) -> tuple[Any, yaml.Node | None]:
    """``yaml.safe_load`` with bounds: returns ``(data, composed node)``; the node is safe to walk afterwards.

    Raises ``yaml.YAMLError`` for syntax errors (the caller formats file:line), ``UserInputError`` for bounds.
    """
    if len(text) > MAX_DOC_BYTES:
        raise UserInputError(f"{where}: {len(text)} characters; the limit is {MAX_DOC_BYTES}")
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise UserInputError(f"{where}: nesting too deep; refused") from None
        if node is None:
            return None, None
        _check_node(node, where, max_nodes, max_depth)
        try:
            return loader.construct_document(node), node
        except (ValueError, OverflowError, TypeError, RecursionError) as exc:
            raise UserInputError(f"{where}: a value cannot be read: {type(exc).__name__}: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


def yaml_error_message(exc: yaml.YAMLError, where: str) -> str:
    """One line ``file:line: invalid YAML: problem`` for a YAML syntax error."""
    mark = getattr(exc, "problem_mark", None)
    loc = f"{where}:{mark.line + 1}" if mark else where
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context, cmark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and cmark is not None:
        problem += f" ({context} that starts at line {cmark.line + 1})"
    return f"{loc}: invalid YAML: {problem}"


def safe_yaml_file(path: Path, what: str) -> Any:
    """Read and parse a YAML file with every bound above; any problem is one ``UserInputError`` line."""
    text = read_text(path, what)
    try:
        return load_yaml(text, str(path))[0]
    except yaml.YAMLError as exc:
        raise UserInputError(yaml_error_message(exc, str(path))) from None


# ------------------------------------------------------------------------------------------------ JSON


def _json_depth(obj: Any, max_depth: int, where: str) -> None:
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if d > max_depth:
            raise UserInputError(f"{where}: nesting deeper than {max_depth} levels; refused")
        if isinstance(o, dict):
            stack.extend((v, d + 1) for v in o.values())
        elif isinstance(o, list):
            stack.extend((v, d + 1) for v in o)


def load_json_text(text: str | bytes, where: str, max_depth: int = MAX_DEPTH) -> Any:
    try:
        obj = json.loads(text)
    except RecursionError:
        raise UserInputError(f"{where}: nesting too deep; refused") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int too long
        raise UserInputError(f"{where}: not valid JSON ({str(exc).splitlines()[0][:200]})") from None
    _json_depth(obj, max_depth, where)
    return obj


def safe_json_file(path: Path, what: str, max_bytes: int = MAX_DOC_BYTES) -> Any:
    return load_json_text(read_text(path, what, max_bytes), str(path))


# ------------------------------------------------------------------------------------------------ memory


def _read_int(path: str) -> int | None:
    try:
        raw = Path(path).read_text().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None


def available_memory() -> int:
    """Bytes of memory available to this process: MemAvailable, capped by a cgroup v2/v1 limit."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30
    for limit_file, used_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        limit, used = _read_int(limit_file), _read_int(used_file)
        if limit is not None and used is not None and limit < (1 << 60):
            avail = min(avail, max(0, limit - used))
            break
    return int(avail)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def check_allocation(nbytes: int, what: str) -> None:
    """Refuse ``what`` when it needs more than half of the available memory (both figures in the message)."""
    avail = available_memory()
    if nbytes > avail // 2:
        raise UserInputError(
            f"{what} needs about {fmt_bytes(nbytes)}, more than half of the {fmt_bytes(avail)} of memory available; "
            "refused before allocating"
        )


def npz_arrays(path: Path) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Shape and dtype of every array in an ``.npz`` from its headers only (nothing is decompressed)."""
    import zipfile

    import numpy as np

    out: dict[str, tuple[tuple[int, ...], Any]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
                    else:
                        raise ValueError(f"unsupported .npy format version {version}")
                out[info.filename[: -len(".npy")]] = (tuple(int(s) for s in shape), dtype)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, SyntaxError, KeyError) as exc:
        raise UserInputError(f"{path}: not a readable .npz file ({type(exc).__name__}: {str(exc)[:200]})") from None
    return out


def check_npz(path: Path) -> None:
    """Refuse an ``.npz`` whose arrays (by their headers) would not fit, or that holds pickled objects."""
    total = 0
    for name, (shape, dtype) in npz_arrays(path).items():
        if dtype.hasobject:
            raise UserInputError(f"{path}: array {name!r} holds Python objects (pickle); refused")
        n = 1
        for s in shape:
            n *= max(0, s)
        total += n * max(dtype.itemsize, 4)  # read, then converted to float32
    check_allocation(total, f"{path} (arrays as float32)")


def check_image(path: Path, size: tuple[int, int], bands: int = 3) -> None:
    """Refuse an image whose header declares more pixels than memory allows (decompression bomb)."""
    w, h = size
    check_allocation(int(w) * int(h) * max(1, bands) * 4, f"image {path} ({w}x{h})")
