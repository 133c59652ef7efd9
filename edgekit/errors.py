"""Error types. The CLI maps them to exit codes: UserInputError -> 2, any other EdgekitError -> 1."""

from __future__ import annotations


class EdgekitError(Exception):
    """A failure edgekit can explain to the user (exit code 1)."""

    exit_code = 1


class UserInputError(EdgekitError, ValueError):
    """Bad input: a file, field, layer or op that edgekit cannot accept (exit code 2).

    The message names what was wrong and what would be accepted.
    """

    exit_code = 2


class MissingDependencyError(EdgekitError, ImportError):
    """An optional backend is not installed; the message names the pip extra that provides it."""

    exit_code = 1


class NotImplementedStageError(EdgekitError, NotImplementedError):
    """A stage, target or transport that is declared but not implemented yet. It never pretends to work."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM during a command: outputs are cleaned up like for Ctrl-C; exit code 128 + signal."""

    def __init__(self, signum: int = 2) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum
