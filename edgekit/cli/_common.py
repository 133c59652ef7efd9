"""Shared CLI helpers: JSON output, error mapping to exit codes, rich tables. Imports stay light."""

from __future__ import annotations

import json
import sys
from typing import Any, Callable

import typer

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
FORCE_OPTION = typer.Option(False, "--force", help="Overwrite an existing output.")


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def emit_json(obj: Any) -> None:
    from edgekit.artifacts import _json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=_json_default) + "\n")


def run(fn: Callable[[], Any]) -> Any:
    """Run a command body; map edgekit errors to their exit codes with a readable message on stderr."""
    from edgekit.errors import EdgekitError

    try:
        return fn()
    except EdgekitError as exc:
        console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console(stderr=True).print("[yellow]interrupted[/]: no output was left that looks complete")
        raise typer.Exit(130) from None


def fmt_num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= div:
                return f"{v / div:.2f}{unit}"
        return str(v)
    return str(v)
