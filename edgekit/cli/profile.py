"""`edgekit profile ARTIFACT`: latency, power and energy per inference on one or more devices."""

from __future__ import annotations

from typing import List, Optional

import typer


def register(app: typer.Typer) -> None:
    from edgekit.cli._common import FORCE_OPTION, JSON_OPTION

    @app.command("profile")
    def profile_cmd(
        artifact: str = typer.Argument(..., help="Exported artifact directory (manifest.json) or a bare .onnx/.xml file."),
        device: List[str] = typer.Option(["local"], "--device", "-d", help="Device name from the devices file; repeat to profile several boards concurrently."),
        runtime: Optional[str] = typer.Option(None, "--runtime", help="onnxruntime | openvino | tvm (tensorrt, coreml are detected, not run). Default: the artifact target's runtime."),
        batch: int = typer.Option(0, "--batch", min=0, help="Batch size (0 = the artifact's)."),
        threads: int = typer.Option(0, "--threads", min=0, help="Runtime threads (0 = runtime default)."),
        input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1x3x224x224; only for bare models with dynamic dimensions."),
        budget: float = typer.Option(10.0, "--budget", min=0.001, help="Time budget of the timed loop (s)."),
        warmup: float = typer.Option(0.5, "--warmup", min=0.0, help="Warm-up time (s)."),
        target_ci: float = typer.Option(0.02, "--target-ci", min=0.0, max=1.0, help="Stop when the 95%% CI of the median is within this fraction."),
        idle: float = typer.Option(2.0, "--idle", min=0.0, help="Idle-power measurement before the run (s), when a power sensor exists."),
        no_validate: bool = typer.Option(False, "--no-validate", help="Skip the on-device check against the reference outputs."),
        devices_file: Optional[str] = typer.Option(None, "--devices", help="Devices file (default: <config dir>/edgekit/devices.yaml)."),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (default edgekit-out/profile/<artifact>-<device>/)."),
        no_plots: bool = typer.Option(False, "--no-plots", help="Do not write the PNG plots."),
        force: bool = FORCE_OPTION,
        json_: bool = JSON_OPTION,
    ) -> None:
        """Profile an exported model: latency statistics, power and energy per inference, on-device validation.

        Example: edgekit profile edgekit-out/convnet-int8/onnx --device local --device pi5
        """
        from edgekit.cli._common import console, emit_json, run

        def body() -> None:
            from pathlib import Path

            from edgekit.devices import get_device, read_artifact
            from edgekit.devices.output import render_table, write_profile
            from edgekit.devices.profile import ProfileOptions, profile_many
            from edgekit.errors import EdgekitError, UserInputError

            _refuse_compress_output(artifact)  # before any device work
            names = list(dict.fromkeys(device))
            specs = [get_device(n, devices_file) for n in names]
            art = read_artifact(artifact)
            shape = None
            if input_shape:
                try:
                    shape = [int(v) for v in input_shape.lower().replace(",", "x").split("x")]
                except ValueError:
                    raise UserInputError(f"--input-shape {input_shape!r}: expected e.g. 1x3x224x224") from None
            opts = ProfileOptions(runtime=runtime, batch=batch, threads=threads, input_shape=shape,
                                  budget_s=budget, warmup_s=warmup, target_rel_ci=target_ci, idle_s=idle,
                                  validate=not no_validate)
            base = Path(out) if out else Path("edgekit-out") / "profile"
            err = console(stderr=True)
            if art.bare:
                err.print(f"[yellow]note[/]: {artifact} is a bare model file: no manifest, no reference "
                          "outputs, so no on-device validation")
            results = profile_many(art, specs, opts)
            written = {}
            for name, res in results.items():
                if not isinstance(res, Exception):
                    target = base if (out and len(specs) == 1) else base / f"{art.name}-{name}"
                    written[name] = str(write_profile(res, target, force=force, plots=not no_plots))
            if json_:
                emit_json({n: (r.to_dict() if not isinstance(r, Exception) else {"status": "error", "error": str(r)})
                           | ({"out_dir": written[n]} if n in written else {}) for n, r in results.items()})
            else:
                from edgekit.tables import print_table

                print_table(render_table(results))
                for name, res in results.items():
                    if not isinstance(res, Exception):
                        if res.emulated:
                            console().print(f"{name}: [yellow]emulated board[/]: its latency is emulated, not "
                                            "comparable with native numbers")
                        if res.power_w is None:
                            console().print(f"{name}: {res.power_status}")
                        for ev in (res.thermal or {}).get("events", []):
                            console().print(f"{name}: [yellow]{ev}[/]")
                        if res.error:
                            console().print(f"{name}: [yellow]{res.status}[/]: {res.error}")
                        console().print(f"{name}: wrote [bold]{written[name]}[/]")
            errors = [r for r in results.values() if isinstance(r, EdgekitError)]
            if errors:
                if len(errors) == len(results):
                    raise errors[0]
                for e in errors:
                    err.print(f"[bold red]error:[/] {e}")
                raise EdgekitError(f"{len(errors)} of {len(results)} devices failed")
            if any(r.status != "ok" for r in results.values()):
                raise EdgekitError("a run did not finish; partial samples were kept in profile.json")

        run(body)


def _refuse_compress_output(artifact: str) -> None:
    """A compress output (model.pt2) is not an exported artifact: say to export it first, with the command."""
    import json
    import shlex
    from pathlib import Path

    from edgekit.errors import UserInputError

    path = Path(artifact)
    try:
        manifest = json.loads((path / "manifest.json").read_text()) if path.is_dir() else None
    except (OSError, ValueError):
        return  # read_artifact reports a corrupt manifest
    if not isinstance(manifest, dict) or manifest.get("kind") != "compressed-model":
        return
    from edgekit.cli.export import default_precision_of
    from edgekit.exporters.base import default_out

    recipe = manifest.get("recipe", {}).get("name") if isinstance(manifest.get("recipe"), dict) else None
    precision = default_precision_of(path)
    out = default_out(str(manifest.get("model", path.name)), "onnx", precision, recipe)
    raise UserInputError(
        f"{artifact} is the output of `edgekit compress` (a PyTorch program), not an exported artifact; export it "
        f"first, then profile the export:\n  edgekit export {shlex.quote(artifact)} --target onnx\n"
        f"  edgekit profile {shlex.quote(str(out))}"
    )
