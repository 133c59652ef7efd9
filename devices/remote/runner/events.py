"""The runner's output protocol: one JSON object per line on stdout ("events"), and its exit codes."""

from __future__ import annotations

import json
import sys
import time

PROTOCOL = 1
EXIT_BAD_INPUT, EXIT_RUNTIME_MISSING, EXIT_RUNTIME_FAILED, EXIT_UNSUPPORTED = 2, 3, 4, 5


def emit(event: str, **payload) -> None:
    payload = {"event": event, "t": time.time(), **payload}
    sys.stdout.write(json.dumps(payload) + "\n")
    sys.stdout.flush()


def fail(kind: str, message: str, code: int, **extra) -> "NoReturn":  # noqa: F821
    emit("error", kind=kind, message=message, **extra)
    sys.exit(code)
