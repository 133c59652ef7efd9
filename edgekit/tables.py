"""Printing rich tables that never truncate a cell.

Rich shrinks a table to the console (80 columns when not on a terminal) and cuts cells with "…". Every
edgekit table goes through :func:`print_table`, which folds long cells onto more lines instead, or, with
``--wide`` (``edgekit --wide COMMAND``, or ``EDGEKIT_WIDE=1``), prints each row on one line however wide
it is. Every command that prints a table also has ``--json`` for the full data.
"""

from __future__ import annotations

import os
from typing import Any

WIDE = False  # set by the CLI's --wide


def wide() -> bool:
    return WIDE or bool(os.environ.get("EDGEKIT_WIDE"))


def print_table(table: Any, console: Any = None, stderr: bool = False) -> None:
    """Print ``table`` (a rich Table) with no cell cut: folded to the console width, or unwrapped if wide."""
    from rich.console import Console

    for col in table.columns:
        col.overflow = "fold"
        col.no_wrap = False
    con = console or Console(stderr=stderr)
    if wide():
        for col in table.columns:
            col.no_wrap = True
        width = Console(width=100_000).measure(table).maximum
        con = Console(file=con.file, width=max(width, con.width))
    con.print(table)
