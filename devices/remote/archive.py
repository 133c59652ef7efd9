"""The runner as one file for the boards: a deterministic zip application of ``edgekit.devices.remote.runner``.

The archive holds ``__main__.py`` and the runner's modules as the package ``edgekit_runner``; entries are
sorted and time-stamped 1980-01-01, so the same sources give the same bytes and the same sha256 (the key of
the board-side cache). It is written once per content into ``<temp dir>/edgekit-runner-<hash>.pyz``.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import zipfile
from functools import lru_cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent / "runner"
MAIN = b"from edgekit_runner.cli import main\n\nmain()\n"


def _archive_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        entries = [("__main__.py", MAIN)]
        entries += [(f"edgekit_runner/{p.name}", p.read_bytes()) for p in sorted(PACKAGE_DIR.glob("*.py"))]
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


@lru_cache(maxsize=1)
def runner_archive() -> Path:
    """Path of the runner archive (``python3 PATH info|hash|run ...``), written atomically when missing."""
    data = _archive_bytes()
    digest = hashlib.sha256(data).hexdigest()
    path = Path(tempfile.gettempdir()) / f"edgekit-runner-{digest[:16]}.pyz"
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".edgekit-runner-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    return path
