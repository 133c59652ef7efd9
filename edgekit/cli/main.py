"""``edgekit`` CLI. Every command: ``--help`` with an example, exit 0 ok / 1 failure / 2 bad input, ``--json``.

Nothing heavy (torch, backends) is imported before a command runs, so ``edgekit --help`` stays fast.
"""

from __future__ import annotations

from typing import List, Optional

import typer

from edgekit.cli import devices as devices_cli
from edgekit.cli import export as export_cli
from edgekit.cli import profile as profile_cli
from edgekit.cli import sweep as sweep_cli
from edgekit.cli._common import FORCE_OPTION, JSON_OPTION, console, emit_json, esc, fmt_num, run, set_verbose
from edgekit.tables import print_table

app = typer.Typer(
    name="edgekit",
    help="Fuse, prune, quantize, export and profile PyTorch models for edge inference.\n\n"
    "Example: edgekit compress convnet --recipe int8",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="List and show recipes.\n\nExample: edgekit recipes show int8", no_args_is_help=True)
zoo_app = typer.Typer(help="The model zoo.\n\nExample: edgekit zoo train convnet", no_args_is_help=True)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug-level logging; print where the debug log is."),
    wide: bool = typer.Option(False, "--wide", help="Tables: one line per row however wide (default: long cells fold, never cut)."),
) -> None:
    """Fuse, prune, quantize, export and profile PyTorch models for edge inference."""
    set_verbose(verbose)
    from edgekit import tables

    tables.WIDE = wide


app.add_typer(recipes_app, name="recipes")
app.add_typer(zoo_app, name="zoo")


@app.command()
def compress(
    model: Optional[str] = typer.Argument(None, help="Zoo name, module:factory, .pt2, .pt (+--arch) or output dir. Default: the default zoo model."),
    recipe: List[str] = typer.Option(["int8"], "--recipe", "-r", help="Recipe name or YAML path; repeat to compose in order."),
    data: Optional[str] = typer.Option(None, "--data", help="digits (default), random:CxHxW, a .npz file or a folder of class folders."),
    set_: List[str] = typer.Option([], "--set", help="Override a recipe field: stage.field.sub=value (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output directory (default edgekit-out/<model>-<recipe>/)."),
    force: bool = FORCE_OPTION,
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo architecture for a state-dict MODEL file."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow full unpickling of MODEL (runs code from the file)."),
    no_latency: bool = typer.Option(False, "--no-latency", help="Skip the latency measurement."),
    seed: int = typer.Option(0, "--seed", help="Seed for data splits and training."),
    output: Optional[str] = typer.Option(None, "--output", help="For a model returning a tuple / dict / ModelOutput: the leaf that holds the logits (default: the first tensor; the report says which)."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", min=0.0, help="int8: keep the most sensitive layers in float until at most X points of images change their top-1 against float (on up to 2000 training images not used for calibration and on the calibration images, each at +1 standard error; quantize.max_drop_criterion=drop judges the labeled drop instead) (= --set quantize.max_drop=X)."),
    json_: bool = JSON_OPTION,
) -> None:
    """Run a recipe on a model and write the compressed model, report.json and manifest.json.

    Example: edgekit compress convnet --recipe int8 --set quantize.calibration.method=mse
    """

    def body():
        from pathlib import Path

        from edgekit.artifacts import check_writable
        from edgekit.loading import load_model
        from edgekit.pipeline import compress as do_compress
        from edgekit.pipeline import default_out_dir
        from edgekit.recipe import load_recipe

        overrides = [*set_, f"quantize.max_drop={max_drop}"] if max_drop is not None else set_
        rec = load_recipe(recipe, overrides)  # validates before any work (--max-drop needs a quantize stage)
        loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
        out_dir = Path(out) if out else default_out_dir(loaded.name, rec)
        check_writable(out_dir, force)  # refuse a bad --out before loading data or running anything
        result = do_compress(loaded, rec, data, out=out_dir, force=force, latency=not no_latency, seed=seed, output=output)
        if json_:
            emit_json({**result.report.to_dict(), "out_dir": str(out_dir)})
        else:
            print_report(result.report.to_dict())
            console().print(f"wrote [bold]{esc(out_dir)}[/]", soft_wrap=True)

    from edgekit.progress import wrapped

    run(wrapped(f"compress {model or 'default model'}", body))


def print_report(report: dict) -> None:
    from rich.table import Table

    t = Table(title=f"edgekit compress: {report['model']} / {report['recipe']} ({report['data']})")
    t.add_column("figure")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    t.add_column("after/before", justify="right")

    def row(label: str, before, after) -> None:
        ratio = f"{after / before:.3f}x" if isinstance(before, (int, float)) and isinstance(after, (int, float)) and before else "-"
        t.add_row(label, fmt_num(before), fmt_num(after), ratio)

    for key, label in (("params", "params"), ("size_bytes", "size (bytes)"), ("macs", "MACs")):
        row(label, report[key]["before"], report[key]["after"])
    acc = report["accuracy"]
    if acc["before"] is not None:
        t.add_row("top-1 accuracy", f"{acc['before']:.2%}", f"{acc['after']:.2%}", f"{(acc['after'] - acc['before']) * 100:+.2f} pt")
    lat = report["latency_ms"]
    if lat["before"]:
        rt = lat["before"].get("runtime", "torch")
        cmp = report.get("latency")  # measured interleaved: the median ratio with its confidence interval
        ratio = f"{cmp['ratio']:.3f}x ({cmp['confidence']:.0%} CI {cmp['ratio_low']:.2f}-{cmp['ratio_high']:.2f})" if cmp else "-"
        t.add_row(f"latency median ms ({rt})", fmt_num(lat["before"]["median"]), fmt_num(lat["after"]["median"]), ratio)
        for q in ("p90", "p99"):  # tails as values only: a ratio of the tails of two noisy runs means little
            if q in lat["before"]:
                t.add_row(f"latency {q} ms ({rt})", fmt_num(lat["before"][q]), fmt_num(lat["after"][q]), "")
    fid = report["fidelity"]
    t.add_row("output cosine vs original", "", f"{fid['cosine']:.5f}", "")
    if "top1_agreement" in fid:
        t.add_row("top-1 agreement vs original", "", f"{fid['top1_agreement']:.2%}", "")
    print_table(t)
    stages = ", ".join(f"{s['name']} ({s['seconds']:.1f}s)" for s in report["stages"])
    console().print(f"stages: {stages}")
    for note in report.get("notes", []):
        console().print(f"note: {note}", highlight=False, markup=False)


@recipes_app.command("list")
def recipes_list(json_: bool = JSON_OPTION) -> None:
    """List the built-in recipes.  Example: edgekit recipes list"""

    def body():
        import yaml

        from edgekit.recipe import builtin_dir, builtin_names

        rows = []
        for name in builtin_names():
            data = yaml.safe_load((builtin_dir() / f"{name}.yaml").read_text()) or {}
            rows.append({"name": name, "description": data.get("description", ""), "base": data.get("base")})
        if json_:
            emit_json(rows)
            return
        from rich.table import Table

        t = Table(title="recipes")
        for col in ("name", "base", "description"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], r["base"] or "", r["description"])
        print_table(t)

    run(body)


@recipes_app.command("show")
def recipes_show(name: str = typer.Argument(..., help="Recipe name or YAML path."), json_: bool = JSON_OPTION) -> None:
    """Show a recipe fully resolved (base merged, defaults filled).  Example: edgekit recipes show int8"""

    def body():
        import yaml

        from edgekit.recipe import load_recipe

        rec = load_recipe(name)
        if json_:
            emit_json(rec.to_dict())
        else:
            console().print(yaml.safe_dump(rec.to_dict(), sort_keys=False), highlight=False, markup=False)

    run(body)


@zoo_app.command("list")
def zoo_list(json_: bool = JSON_OPTION) -> None:
    """List the zoo models.  Example: edgekit zoo list"""

    def body():
        from edgekit import models

        rows = []
        for name in models.names(task=None):
            meta = models.info(name)
            rows.append({"name": name, "family": meta.family, "description": meta.description, "checkpoint": meta.checkpoint.is_file()})
        if json_:
            emit_json(rows)
            return
        from rich.table import Table

        t = Table(title="zoo")
        for col in ("name", "family", "checkpoint", "description"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["name"], r["family"], "yes" if r["checkpoint"] else "no", r["description"])
        print_table(t)

    run(body)


@zoo_app.command("train")
def zoo_train(
    name: str = typer.Argument(..., help="Zoo model name."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the model's registered epochs."),
    seed: int = typer.Option(0, "--seed"),
    json_: bool = JSON_OPTION,
) -> None:
    """Train a zoo model on the built-in data and save its shipped checkpoint (seeded).

    Example: edgekit zoo train convnet
    """

    def body():
        from edgekit.models import train_zoo

        result = train_zoo(name, epochs=epochs, seed=seed)
        if json_:
            emit_json(result)
        elif "map" in result:  # a detector (edgekit.models.detector_train)
            console().print(f"{result['name']}: test mAP@[.5:.95] {result['map']:.4f}, mAP@.5 {result['map50']:.4f} after {result['epochs']} epochs ({result['seconds']:.0f}s)")
        else:
            console().print(f"{result['name']}: test top-1 {result['accuracy']:.2%} after {result['epochs']} epochs ({result['seconds']:.0f}s)")

    run(body)


@app.command()
def inspect(
    model: Optional[str] = typer.Argument(None, help="MODEL (as for compress) or an artifact directory."),
    arch: Optional[str] = typer.Option(None, "--arch"),
    trust_pickle: bool = typer.Option(False, "--trust-pickle"),
    timing: bool = typer.Option(False, "--timing", help="Also time each layer (ms, MACs per second)."),
    json_: bool = JSON_OPTION,
) -> None:
    """Params, MACs, size on disk and a per-layer table (MACs, output shapes).

    Example: edgekit inspect edgekit-out/convnet-int8
    """

    def body():
        from edgekit.inspection import inspect_model

        info = inspect_model(model, arch=arch, trust_pickle=trust_pickle, timing=timing)
        if json_:
            emit_json(info)
            return
        c = console()
        if info["kind"] == "artifact":
            c.print(f"artifact {info['path']}: target {info['target']}, precision {info['precision']}, {fmt_num(info['size_on_disk'])} bytes")
            for f, size in info["files"].items():
                c.print(f"  {f}: {fmt_num(size)} bytes")
            return
        from rich.table import Table

        c.print(
            f"{info['model']} ({info['source']}): input {info['input_shape']}, params {fmt_num(info['params'])}, "
            f"MACs {fmt_num(info['macs'])}, weights {fmt_num(info['size_bytes'])} bytes, on disk {fmt_num(info['size_on_disk'])}"
        )
        t = Table()
        extra = [k for k in ("nm", "ms", "gmacps") if any(k in r for r in info["layers"])]
        for col in ("layer", "type", "output shape", "params", "MACs", *extra):
            t.add_column(col)
        for r in info["layers"]:
            t.add_row(r["name"], r["type"], str(r["output_shape"] or "-"), fmt_num(r["params"]), fmt_num(r["macs"]), *(fmt_num(r.get(k)) for k in extra))
        print_table(t, c)

    run(body)


export_cli.register(app)
profile_cli.register(app)
devices_cli.register(app)
sweep_cli.register(app)


def cli(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv``; return the exit code. Usage errors are one line too (no help panel)."""
    try:
        from typer._click.exceptions import ClickException, NoArgsIsHelpError  # typer >= 0.2x vendors click
    except ImportError:  # pragma: no cover
        from click.exceptions import ClickException, NoArgsIsHelpError

    try:
        rv = app(args=argv, prog_name="edgekit", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx is not None else str(exc))
        return 2
    except ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
        typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except typer.Abort:
        typer.echo("interrupted", err=True)
        return 130
    return rv if isinstance(rv, int) else 0


def main() -> None:
    import warnings

    # torch's own deprecation noise when copying torch.export modules; not actionable for users.
    warnings.filterwarnings("ignore", category=FutureWarning, message=".*LeafSpec.*")
    raise SystemExit(cli())
