"""`edgekit sweep MODEL`: recipes x targets x devices, cached by content, ranked under constraints."""

from __future__ import annotations

from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    from edgekit.cli._common import JSON_OPTION

    @app.command("sweep")
    def sweep_cmd(
        model: str = typer.Argument(..., help="MODEL (as for compress): a zoo name, module:factory, .pt2, ..."),
        recipes: str = typer.Option(..., "--recipes", "-r", help="Comma-separated recipes; a+b composes two (as -r a -r b)."),
        targets: str = typer.Option("onnx", "--targets", "-t", help="Comma-separated export targets."),
        devices: str = typer.Option("local", "--devices", "-d", help="Comma-separated device names from the devices file."),
        data: Optional[str] = typer.Option(None, "--data", help="Data spec (as for compress; default: digits)."),
        out: str = typer.Option("edgekit-out/sweep", "--out", "-o", help="Sweep directory; an earlier sweep's directory is reused as its cache."),
        overrides: list[str] = typer.Option([], "--set", help="Recipe override applied to every recipe, e.g. quantize.calibration.samples=64."),
        executor: str = typer.Option("local", "--executor", help="local (process pool) | ray."),
        address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (with --executor ray)."),
        workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel build steps (default: the cores)."),
        devices_file: Optional[str] = typer.Option(None, "--devices-file", help="Devices file (default: <config dir>/edgekit/devices.yaml)."),
        objective: str = typer.Option("latency", "--objective", help="Rank by latency | energy | size."),
        max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0, help="Keep cells whose accuracy drop is at most this many points."),
        max_size: Optional[str] = typer.Option(None, "--max-size", help="Keep cells whose artifact is at most this size (e.g. 4MB)."),
        budget: float = typer.Option(2.0, "--budget", min=0.05, help="Profile time budget per cell (s)."),
        threads: int = typer.Option(0, "--threads", min=0, help="Runtime threads when profiling (0: the runtime's default; 1 is steadier on a shared machine)."),
        no_profile: bool = typer.Option(False, "--no-profile", help="Compress and export only (cached); profile in a later run, e.g. on a quiet machine."),
        seed: int = typer.Option(0, "--seed"),
        json_: bool = JSON_OPTION,
    ) -> None:
        """Compress, export and profile every cell; print the cells ranked by --objective under the constraints.

        Example: edgekit sweep convnet --recipes int8,int8-sym,prune-30+int8 --targets onnx,openvino --max-drop 0.5
        """
        from edgekit.cli._common import console, emit_json, run

        def body() -> None:
            from edgekit.sweep import parse_size, ranked, sweep
            from edgekit.sweep.results import OBJECTIVES

            if objective not in OBJECTIVES:
                from edgekit.errors import UserInputError

                raise UserInputError(f"--objective {objective!r}; accepted: {', '.join(OBJECTIVES)}")
            size_cap = parse_size(max_size)  # checked before any work
            res = sweep(model, recipes, targets, devices, out=out, data=data, seed=seed, overrides=overrides,
                        executor=executor, workers=workers, address=address, devices_file=devices_file,
                        profile_budget_s=budget, profile_threads=threads, profile=not no_profile)
            best = ranked(res.cells, objective, max_drop, size_cap)
            if json_:
                emit_json({**res.to_dict(), "ranked": [c.to_dict() for c in best], "out_dir": out})
                return
            _print(res, best, objective)
            console().print(f"wrote {out}/sweep.json ({res.wall_s:.1f} s; steps run {res.steps_run}, from cache {res.steps_cached})",
                            highlight=False, markup=False)

        run(body)


def _print(res, best, objective: str) -> None:
    from rich.table import Table

    from edgekit.cli._common import console, fmt_num

    t = Table(title=f"edgekit sweep: {res.model}, ranked by {objective}", expand=False)
    for col in ("#", "recipe", "target", "device", "top-1", "drop pt", "latency ms", "energy mJ", "bytes"):
        t.add_column(col, overflow="fold")
    for i, c in enumerate(best, 1):
        lat = "-" if c.latency_ms is None else f"{c.latency_ms:.3g}" + (" (emulated)" if c.latency_kind == "emulated" else "")
        t.add_row(str(i), c.recipe, c.target, c.device, "-" if c.accuracy is None else f"{c.accuracy:.2%}",
                  "-" if c.accuracy_drop_pt is None else f"{c.accuracy_drop_pt:+.2f}", lat,
                  "-" if c.energy_mj is None else f"{c.energy_mj:.3g}", fmt_num(c.file_bytes))
    console().print(t)
    other = [c for c in res.cells if c.state != "works"]
    for c in other:
        console().print(f"{c.recipe} / {c.target} / {c.device}: {c.state}: {c.error}", highlight=False, markup=False)
