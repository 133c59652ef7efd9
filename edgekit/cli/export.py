"""``edgekit export``: export a model to a deployment target and validate it against PyTorch.

Exit codes: 0 exported and validated; 1 export failed or validation failed (the worst output is named);
2 bad input (unknown target/precision/option, wrong input shape, corrupt model file), nothing written.
"""

from __future__ import annotations

from typing import List, Optional

import typer


def _parse_option(text: str) -> tuple[str, str]:
    """Split ``KEY=VALUE``; the target converts and checks VALUE against its declared option type."""
    from edgekit.errors import UserInputError

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise UserInputError(f"--option {text!r}: expected KEY=VALUE, e.g. --option dynamic_batch=true")
    return key, raw


def register(app: typer.Typer) -> None:
    from edgekit.cli._common import FORCE_OPTION, JSON_OPTION

    @app.command("export")
    def export_cmd(
        model: Optional[str] = typer.Argument(
            None, help="Zoo name, module:factory, .pt2, .pt (+--arch), .onnx file or compress output dir."
        ),
        target: Optional[str] = typer.Option(None, "--target", "-t", help="onnx, openvino, coreml, tensorrt or tvm."),
        precision: Optional[str] = typer.Option(
            None, "--precision", "-p",
            help="fp32, fp16 or int8 (per target). Default: int8 for a compress output quantized to int8, else fp32.",
        ),
        out: Optional[str] = typer.Option(None, "--out", "-o", help="Output dir (default edgekit-out/<model>-<recipe>-<target>-<precision>/; no <recipe> for a model no recipe made)."),
        force: bool = FORCE_OPTION,
        option: List[str] = typer.Option([], "--option", "-O", help="Target option KEY=VALUE (repeatable), e.g. dynamic_batch=true, device=aarch64."),
        data: Optional[str] = typer.Option(None, "--data", help="Reference/validation data: digits (default), random:CxHxW, .npz or folder."),
        input_shape: Optional[str] = typer.Option(None, "--input-shape", help="CxHxW when the model does not record it."),
        bisect: bool = typer.Option(False, "--bisect", help="Compare intermediate tensors layer by layer; name the first that drifts."),
        arch: Optional[str] = typer.Option(None, "--arch", help="Zoo architecture for a state-dict MODEL file."),
        trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow full unpickling of MODEL (runs code from the file)."),
        list_targets: bool = typer.Option(False, "--list-targets", help="Show the targets and their capabilities, then exit."),
        json_: bool = JSON_OPTION,
    ) -> None:
        """Export MODEL to a target, validate it against PyTorch, write the artifact directory.

        Example: edgekit export convnet --target openvino --precision fp16
        """
        from edgekit.cli._common import console, emit_json, run

        def body() -> None:
            from edgekit.errors import EdgekitError, UserInputError
            from edgekit.exporters.base import capabilities, export, target_names

            if list_targets:
                _print_targets(json_)
                return
            if target is None:
                raise UserInputError(f"--target is required; accepted: {', '.join(target_names())}")
            capabilities(target)  # unknown target -> exit 2 before any work; precision and options: export() checks
            chosen = precision or default_precision_of(model)
            options = dict(_parse_option(o) for o in option)
            example = None
            if input_shape:
                import torch

                from edgekit.data import parse_shape

                example = torch.randn(1, *parse_shape(input_shape, "--input-shape"))
            spec = model
            if model and (arch or trust_pickle):
                from edgekit.loading import load_model

                spec = load_model(model, arch=arch, trust_pickle=trust_pickle)  # a LoadedModel: module + ModelInfo
            if spec is None:
                from edgekit.models import DEFAULT_MODEL

                spec = DEFAULT_MODEL
            art = export(spec, target, chosen, out=out, force=force, example_inputs=example, data=data, bisect=bisect, **options)
            rep = art.report
            if json_:
                emit_json({"out_dir": str(art.directory), "manifest": art.manifest, "validation": rep.to_dict()})
            else:
                con = console()
                con.print(f"wrote [bold]{art.directory}[/] ({art.manifest['model_file']}, {art.manifest['export_seconds']} s)")
                if art.manifest.get("engine_built") is False:
                    con.print(f"no TensorRT engine was built: {art.manifest.get('engine_not_built_reason')}; "
                              f"build it with: {art.manifest['trtexec_command']}", highlight=False, markup=False)
                con.print(rep.summary(), highlight=False, markup=False)
                bis = rep.extra.get("bisect")
                if bis:
                    con.print(f"bisect: {bis.get('summary')}", highlight=False, markup=False)
            if not rep.passed:
                worst = rep.worst_output or "output"
                raise EdgekitError(f"validation failed (worst output: {worst}): {'; '.join(rep.failures)}")

        run(body)


def _print_targets(as_json: bool) -> None:
    from edgekit.cli._common import console, emit_json
    from edgekit.exporters.base import capabilities, target_names

    rows = {n: capabilities(n) for n in target_names()}
    if as_json:
        emit_json({n: {"suffix": c.suffix, "precisions": list(c.precisions), "needs_gpu": c.needs_gpu, "source": c.source,
                       "runtime": c.runtime, "notes": c.notes,
                       "options": {k: {"default": o.default, "accepted": o.accepted()} for k, o in c.options.items()}}
                   for n, c in rows.items()})
        return
    from rich.table import Table

    t = Table(title="edgekit export targets")
    for col in ("target", "file", "precisions", "GPU", "from", "validated with", "options"):
        t.add_column(col)
    for n, c in rows.items():
        opts = ", ".join(f"{k}={v}" for k, v in c.options.items())
        t.add_row(n, c.suffix, ", ".join(c.precisions), "yes" if c.needs_gpu else "no", c.source, c.runtime, opts)
    from edgekit.tables import print_table

    print_table(t)


def default_precision_of(model) -> str:
    """int8 when MODEL is a compress output whose recipe quantized it to int8 (its graph carries QDQ);
    fp32 otherwise. An explicit --precision always wins."""
    from pathlib import Path

    if model and Path(model).is_dir() and (Path(model) / "manifest.json").is_file():
        from edgekit.artifacts import read_manifest

        stages = read_manifest(Path(model)).get("recipe", {}).get("stages", [])
        if any(isinstance(st, dict) and "quantize" in st for st in stages):
            return "int8"
    return "fp32"
