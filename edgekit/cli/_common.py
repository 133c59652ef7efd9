"""Shared CLI helpers: JSON output, error mapping to exit codes, rich tables. Imports stay light.

:func:`run` wraps every command body so that whatever a user can cause ends in one line on stderr and an
exit code (2 bad input, 1 failure, 128+N on signal N): edgekit errors print their message; any other
exception prints its type and first line, its traceback goes to the debug log; SIGTERM cleans up like
Ctrl-C; third-party loggers (torch, paramiko, ...) write to the debug log, never to the terminal; with
``--json`` nothing but the JSON document reaches stdout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import typer

JSON_OPTION = typer.Option(False, "--json", help="Print machine-readable JSON on stdout.")
FORCE_OPTION = typer.Option(False, "--force", help="Replace an existing edgekit output (never anything else).")

_state: dict[str, Any] = {"json_out": None, "verbose": False}


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def esc(text: Any) -> str:
    """Escape rich markup in user-visible text (``pip install 'edgekit[tensorrt]'`` stays intact)."""
    from rich.markup import escape

    return escape(str(text))


def emit_json(obj: Any) -> None:
    from edgekit.artifacts import _json_default

    out = _state["json_out"] or sys.stdout
    out.write(json.dumps(obj, indent=2, default=_json_default) + "\n")
    out.flush()


def debug_log_path() -> Path:
    """Where third-party log records and unexpected tracebacks go (``$EDGEKIT_DEBUG_LOG`` overrides)."""
    env = os.environ.get("EDGEKIT_DEBUG_LOG")
    if env:
        return Path(env)
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "edgekit" / "debug.log"


def set_verbose(on: bool) -> None:
    _state["verbose"] = bool(on)


def _error(msg: str) -> None:
    console(stderr=True).print(f"[bold red]error:[/] {esc(msg)}", highlight=False, soft_wrap=True)


@contextmanager
def _logs_to_file() -> Iterator[logging.Handler | None]:
    """Send every log record (root and libraries with their own stream handlers) to the debug log file."""
    try:
        import torch  # noqa: F401 - torch installs its stderr handlers on import; do it before re-routing
    except ImportError:  # pragma: no cover
        pass
    path = debug_log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler: logging.Handler = logging.FileHandler(path, delay=True, encoding="utf-8")
    except OSError:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.setLevel(logging.DEBUG if _state["verbose"] else logging.INFO)
    root = logging.getLogger()
    saved: list[tuple[logging.Logger, list[logging.Handler]]] = []
    loggers = [root] + [lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for lg in loggers:
        streams = [h for h in lg.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
        if streams:
            saved.append((lg, list(lg.handlers)))
            for h in streams:
                lg.removeHandler(h)
            if lg is not root:
                lg.addHandler(handler)
    root.addHandler(handler)
    if _state["verbose"]:
        console(stderr=True).print(f"debug log: {esc(path)}", highlight=False, soft_wrap=True)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        for lg, handlers in saved:
            if handler in lg.handlers:
                lg.removeHandler(handler)
            for h in handlers:
                if h not in lg.handlers:
                    lg.addHandler(h)
        handler.close()


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`edgekit.errors.Interrupted` like Ctrl-C, so outputs are cleaned up."""
    from edgekit.errors import Interrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextmanager
def _stdout_for_json(active: bool) -> Iterator[None]:
    """With --json: everything but :func:`emit_json` goes to stderr (Python prints and, where stdout is a real
    file descriptor, C-level writes too)."""
    if not active:
        yield
        return
    real, saved_fd = sys.stdout, None
    try:
        is_fd1 = real.fileno() == 1
    except (AttributeError, OSError, ValueError):
        is_fd1 = False
    if is_fd1:
        real.flush()
        saved_fd = os.dup(1)
        os.dup2(2, 1)
        _state["json_out"] = os.fdopen(os.dup(saved_fd), "w", encoding="utf-8")
    else:
        _state["json_out"] = real
    sys.stdout = sys.stderr
    try:
        yield
    finally:
        sys.stdout = real
        out = _state["json_out"]
        _state["json_out"] = None
        if saved_fd is not None:
            sys.stderr.flush()
            out.close()
            os.dup2(saved_fd, 1)
            os.close(saved_fd)


def _wants_json() -> bool:
    try:
        from typer._click.globals import get_current_context  # typer >= 0.2x vendors click
    except ImportError:  # pragma: no cover
        from click import get_current_context

    ctx = get_current_context(silent=True)
    return bool(ctx is not None and ctx.params.get("json_"))


def run(fn: Callable[[], Any]) -> Any:
    """Run a command body; map every failure to one line on stderr and its exit code (module docstring)."""
    from edgekit.errors import EdgekitError, Interrupted

    try:
        with _signals_as_interrupt(), _logs_to_file(), _stdout_for_json(_wants_json()):
            return fn()
    except EdgekitError as exc:
        _error(str(exc))
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        code = exc.exit_code if isinstance(exc, Interrupted) else 130
        console(stderr=True).print("[yellow]interrupted[/]: no output was left that looks complete")
        raise typer.Exit(code) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a bug or an unforeseen input: one line, traceback to the log
        if isinstance(exc, getattr(typer, "TyperException", ())):
            raise
        _error(_unexpected(exc))
        raise typer.Exit(1) from None


def _unexpected(exc: BaseException) -> str:
    import traceback

    path = debug_log_path()
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(text + "\n")
        where = f"; traceback in {path}"
    except OSError:
        where = ""
    if isinstance(exc, MemoryError):
        return f"out of memory{where}"
    if isinstance(exc, OSError) and exc.strerror:
        name = f"{exc.filename}: " if exc.filename else ""
        return f"{name}{exc.strerror}{where}"
    first = str(exc).splitlines()[0][:300] if str(exc) else ""
    return f"unexpected {type(exc).__name__}: {first}{where}"


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
