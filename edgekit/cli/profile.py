"""`edgekit profile`: placeholder until its stage lands; it says so and exits 1."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("profile", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def _not_yet(ctx: typer.Context) -> None:
        """Not implemented yet."""
        from edgekit.cli._common import run
        from edgekit.errors import NotImplementedStageError

        def body() -> None:
            raise NotImplementedStageError("`edgekit profile` is not implemented yet")

        run(body)
