"""Write one benchmark's section into docs/benchmarks.md (atomically), keeping the other sections."""

from __future__ import annotations

import os
import platform
import re
import sys
import tempfile
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Every number here was produced by the command shown above its table, on the machine named there. "
    "Ratios are medians measured side by side in one run. Re-run a command to refresh its section.\n"
)


def machine_note() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def command_line() -> str:
    """The command that produced a section, repository-relative (``python -m benchmarks.<name> ARGS``)."""
    argv = sys.argv[:]
    if not argv:
        return ""
    script = Path(argv[0])
    if script.suffix == ".py" and script.resolve().parent == Path(__file__).resolve().parent:
        return " ".join(["python -m benchmarks." + script.stem] + argv[1:])
    return "python " + " ".join(argv)


def write_section(key: str, markdown: str, doc: Path = DOC) -> None:
    """Replace the block between ``<!-- key:start -->`` and ``<!-- key:end -->`` (append it if absent)."""
    doc.parent.mkdir(parents=True, exist_ok=True)
    text = doc.read_text() if doc.exists() else HEADER
    block = f"<!-- {key}:start -->\n{markdown.strip()}\n<!-- {key}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(key)}:start -->.*?<!-- {re.escape(key)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    fd, tmp = tempfile.mkstemp(dir=doc.parent, prefix=".benchmarks.", suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, doc)


def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    def fmt(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
