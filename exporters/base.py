"""The export protocol, the target registry and the one shared wrapper every target goes through.

A target is a class registered in :data:`TARGETS` with its :class:`Capabilities` (data: file suffix,
precisions, GPU need, allowed options with defaults). :func:`export` checks target, precision and options
before any work, resolves the model, writes the target's files into a temporary directory, writes
``reference.npz`` (inputs + PyTorch outputs), validates, writes ``validation.json`` and the manifest (sha256 of
every file, tool versions, timing) and renames the directory into place. Failures are re-raised (wrapped as
:class:`EdgekitError` naming target and model when they are not already edgekit errors); nothing is left behind.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgekit.errors import EdgekitError, UserInputError
from edgekit.exporters.options import Option, parse_options
from edgekit.exporters.runtimes import contract_for
from edgekit.exporters.source import ExportSource, compress_recipe, digest
from edgekit.exporters.torch2onnx import safe_eval
from edgekit.exporters.validation import ValidationReport, checks_only, is_classifier, judge, task_checks, tolerance
from edgekit.registry import Registry

REFERENCE_FILE = "reference.npz"
VALIDATION_FILE = "validation.json"
N_REFERENCE = 8  # inputs stored in reference.npz
N_TOP1 = 200  # validation samples for top-1 agreement

Runner = Callable[[np.ndarray], np.ndarray]  # batch-1 float32 input -> output


@dataclass(frozen=True)
class Capabilities:
    suffix: str  # the main model file's suffix
    precisions: tuple[str, ...]
    options: dict[str, Option]  # option name -> its typed declaration (default, type, accepted values)
    needs_gpu: bool = False
    source: str = "onnx"  # the graph it converts from: "onnx" (the hub) or "torch"
    runtime: str = ""  # what validates it here
    notes: str = ""


class Exporter:
    """Base of every target. Subclasses set ``name``/``caps`` and implement :meth:`build` and :meth:`runner`."""

    name: str = ""
    caps: Capabilities

    def check_options(self, precision: str, options: dict[str, Any]) -> dict[str, Any]:
        """Reject what this target cannot do before any work; return every option typed, defaults filled in.
        Options are parsed here once, from typed API values or ``-O KEY=VALUE`` strings alike."""
        if precision not in self.caps.precisions:
            raise UserInputError(
                f"target {self.name!r} does not support precision {precision!r}; accepted: {', '.join(self.caps.precisions)}"
            )
        return parse_options(self.name, self.caps.options, options)

    def preflight(self, source: "ExportSource", precision: str, options: dict[str, Any]) -> None:
        """Refuse, before any work, a model this target cannot take (a UserInputError naming the reason and
        the nearest recipe or target that works). Default: accept."""

    def build(self, ctx: "ExportContext") -> dict[str, Any]:  # pragma: no cover - abstract
        """Write the artifact's files into ``ctx.out``; return manifest fields (at least ``model_file``)."""
        raise NotImplementedError

    def runner(self, directory: Path, manifest: dict[str, Any]) -> Runner | str:
        """A callable running the artifact here, or a string saying why it cannot run on this host."""
        return f"{self.name} artifacts cannot be run on this host"

    def checks(self, directory: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
        """Structural checks that need no numeric run (dicts with name, passed, detail)."""
        return []


# Filled on first use: every public module of this package is imported and the target modules register
# themselves (a new target is one module with @register_target; a plugin target outside the package is listed
# in EDGEKIT_PLUGINS, see edgekit/registry.py). Importing a target module imports no backend.
TARGETS: Registry[type[Exporter]] = Registry("export target", lazy=(("edgekit.exporters", "[!_]*"),))


def register_target(name: str, caps: Capabilities):
    def decorator(cls: type[Exporter]) -> type[Exporter]:
        cls.name, cls.caps = name, caps
        TARGETS.add(name, cls, caps=caps)
        return cls

    return decorator


def target_names() -> list[str]:
    return TARGETS.names()


def capabilities(target: str) -> Capabilities:
    return TARGETS.get(target).caps


def get_exporter(target: str) -> Exporter:
    return TARGETS.get(target)()


@dataclass
class ExportContext:
    model: nn.Module
    name: str
    example: torch.Tensor  # 1 x C x H x W
    precision: str
    options: dict[str, Any]
    out: Path
    calib: torch.Tensor | None = None  # calibration inputs (int8 without fake-quant ops)
    source_digest: str | None = None  # sha256 of a compress output's manifest: the hub ONNX can be reused
    nm: tuple[int, int] | None = None  # an N:M compress output: the hub ONNX records which weights keep N:M
    extra_manifest: dict[str, Any] = field(default_factory=dict)

    def onnx(self, filename: str = "model.onnx", precision: str | None = None) -> Path:
        """Write the hub ONNX graph for this precision into ``out`` (see exporters/onnx.py)."""
        from edgekit.exporters.onnx import write_onnx

        return write_onnx(self, self.out / filename, precision or self.precision)


@dataclass
class Artifact:
    directory: Path
    files: dict[str, str]
    manifest: dict[str, Any]
    report: ValidationReport | None

    @property
    def validation(self) -> ValidationReport | None:
        return self.report

    @property
    def model_file(self) -> Path:
        return self.directory / self.manifest["model_file"]


def _resolve_model(model_or_path: Any, info: Any = None) -> tuple[nn.Module, str, tuple[int, ...] | None]:
    """The module to export, its name and one sample's input shape (from ``info``, a ModelInfo, when given)."""
    described = getattr(model_or_path, "info", None)  # a LoadedModel or CompressResult: a module and its ModelInfo
    if isinstance(getattr(model_or_path, "model", None), nn.Module) and described is not None:
        model_or_path, info = model_or_path.model, info or described
    if isinstance(model_or_path, nn.Module):
        m = model_or_path
        shape = info.input_shape if info is not None else None
        name = info.name if info is not None else type(m).__name__.lower()
        return safe_eval(m), str(name), tuple(shape) if shape else None
    if isinstance(model_or_path, (str, Path)) and str(model_or_path).endswith(".onnx"):
        from edgekit.exporters.onnx import OnnxModel

        m = OnnxModel(Path(model_or_path))
        return m, m.path.stem, m.input_shape
    if isinstance(model_or_path, (str, Path)):
        from edgekit.loading import load_model

        loaded = load_model(str(model_or_path))
        return safe_eval(loaded.model), loaded.name, loaded.input_shape
    raise UserInputError(f"model: got {type(model_or_path).__name__}; expected an nn.Module or a MODEL spec string")


def _data_bundle(data: Any, shape: tuple[int, ...]):
    from edgekit.data import DataBundle, load_data

    if isinstance(data, DataBundle):
        return data
    return load_data(data, input_shape=shape)


def _example(example_inputs: Any, shape: tuple[int, ...] | None, bundle) -> torch.Tensor:
    if example_inputs is not None:
        x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise UserInputError("example_inputs: expected one float tensor shaped N x C x H x W")
        return x[:1].float().contiguous()
    if bundle is not None:
        return bundle.test.x[:1].contiguous()
    assert shape is not None
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(0))


def _forward(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        y = model(x)
    if isinstance(y, (tuple, list)):
        y = y[0]
    return y.detach().float().numpy()


def default_out(name: str, target: str, precision: str, recipe: str | None = None) -> Path:
    """``edgekit-out/<model>-<recipe>-<target>-<precision>`` (no recipe part for a model no recipe made)."""
    parts = [name.replace(":", "_").replace("/", "_"), *( [recipe] if recipe else []), target, precision]
    return Path("edgekit-out") / "-".join(parts)


def export(
    model_or_path: Any,
    target: str,
    precision: str = "fp32",
    out: str | Path | None = None,
    force: bool = False,
    example_inputs: Any = None,
    data: Any = None,
    bisect: bool = False,
    validation_samples: int = N_TOP1,
    info: Any = None,
    **options: Any,
) -> Artifact:
    """Export a model to ``target`` at ``precision``, validate it against PyTorch; return the :class:`Artifact`.

    ``model_or_path``: an ``nn.Module`` (described by ``info``, an :class:`edgekit.records.ModelInfo`), a
    ``LoadedModel`` / ``CompressResult`` (module and info), or any MODEL spec :func:`edgekit.loading.load_model` accepts.
    ``data``: a DataBundle or data spec for reference inputs and top-1 agreement (default: the built-in digits
    at the model's input shape). ``options``: target-specific, see ``capabilities(target).options``.
    ``validation_samples``: data samples for the top-1 agreement of classifiers. ``bisect``: on a numeric
    validation, also compare intermediate tensors layer by layer (ONNX-graph targets) and name the first layer
    that drifts. A failed validation does not raise: check ``artifact.report.passed`` (the CLI exits 1).
    """
    from edgekit.artifacts import atomic_output_dir, check_writable, write_json_atomic, write_manifest

    exporter = get_exporter(target)
    opts = exporter.check_options(precision, options)  # precision and options, before any work
    tolerance(precision)
    model, name, shape = _resolve_model(model_or_path, info)
    recipe, stages, src_dir = compress_recipe(model_or_path)
    source = ExportSource(model, name, recipe, stages, src_dir)
    exporter.preflight(source, precision, opts)
    from edgekit.quant.bivit.export import binarized_precision

    judged_as = binarized_precision(precision, source.stage("binarize"), model)  # fp32 graph, w1a1/w1a8 tolerance
    guessed = example_inputs is None and shape is None and data is None
    if guessed:  # nothing describes the input: the built-in data (digits, 3x32x32), said so if it does not fit
        data = "digits"
    if example_inputs is not None:
        x0 = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
        shape = tuple(x0.shape[1:]) if isinstance(x0, torch.Tensor) else shape
    bundle = _data_bundle(data, shape) if (data is not None or shape is not None) else None
    example = _example(example_inputs, shape, bundle)
    try:
        _forward(model, example)
    except Exception as exc:  # noqa: BLE001 - a wrong input shape shows up here
        why = " (the built-in digits data, used because nothing gave the input shape: pass example_inputs, " \
              "info=ModelInfo(...) or --input-shape CxHxW)" if guessed else ""
        raise UserInputError(
            f"model {name} does not accept an input of shape {tuple(example.shape)}{why} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    out = Path(out) if out is not None else default_out(name, target, precision, recipe)
    check_writable(out, force)

    inputs = (bundle.test.x[:N_REFERENCE] if bundle is not None else example).float().contiguous()
    with torch.no_grad():
        ref_outputs = np.stack([_forward(model, inputs[i : i + 1])[0] for i in range(len(inputs))])
    t0 = time.perf_counter()
    with atomic_output_dir(out, force) as tmp:
        calib = bundle.calib.x if bundle is not None else None
        hub_key = digest(src_dir / "manifest.json") if src_dir is not None and bundle is not None and data is None else None
        ctx = ExportContext(model, name, example, precision, opts, tmp, calib, source_digest=hub_key, nm=source.nm())
        try:
            fields = exporter.build(ctx)
        except UserInputError as exc:
            msg = str(exc)
            if target != "onnx" and msg.startswith("target onnx cannot take"):
                raise UserInputError(msg.replace("target onnx", f"target {target} (via the ONNX graph it converts from)", 1)) from None
            raise
        except EdgekitError:
            raise
        except Exception as exc:  # noqa: BLE001 - the shared wrapper names target and model
            raise EdgekitError(f"{target} export of {name} ({precision}) failed: {type(exc).__name__}: {exc}") from exc
        export_s = time.perf_counter() - t0
        np.savez(tmp / REFERENCE_FILE, inputs=inputs.numpy(), outputs=ref_outputs)
        manifest = {
            "target": target,
            "model": name,
            "input_name": "input",
            "output_name": "output",
            "input_shape": list(example.shape),
            "precision": precision,
            "dynamic_batch": bool(opts.get("dynamic_batch", False)),
            "options": opts,
            "recipe": recipe,
            **({"nm_layers_expected": source.nm_layers_expected()} if source.nm() else {}),
            "validation_precision": judged_as,
            "validation_contract": contract_for(judged_as).to_dict(),
            "export_seconds": round(export_s, 3),
            **ctx.extra_manifest,
            **fields,
        }
        report = _validate_dir(exporter, tmp, manifest, model, inputs, ref_outputs, bundle, validation_samples)
        if bisect and report.numeric:
            from edgekit.exporters.bisect import bisect_artifact

            report.extra["bisect"] = bisect_artifact(exporter, tmp, manifest, model, inputs[:1])
        from edgekit.quant.placement import placement_note_for  # int8: the runtime its Q/DQ placement was made for

        if (placed := placement_note_for(source.stage("quantize"), target)) is not None:
            report.extra["int8_placement"] = placed
        write_json_atomic(tmp / VALIDATION_FILE, report.to_dict())
        manifest["validation"] = {"passed": report.passed, "numeric": report.numeric, "state": report.state,
                                  "worst_output": report.worst_output}
        manifest["validate_seconds"] = round(time.perf_counter() - t0 - export_s, 3)
        written = write_manifest(tmp, **manifest)
    return Artifact(out, written["files"], written, report)


def _nm_check(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """An N:M compress output must keep its pattern in the exported weights (checked on the hub ONNX)."""
    nm = manifest.get("nm_sparsity")
    if not nm:
        return []
    kept, want = len(nm["layers_with_pattern"]), manifest.get("nm_layers_expected")
    ok = kept > 0 and (want is None or kept >= want)
    return [{"name": f"{nm['n']}:{nm['m']} pattern kept in the exported weights", "passed": ok,
             "detail": f"{kept} layer(s) keep it (the sparsify stage made {want if want is not None else '?'})"}]


def _judged_as(manifest: dict[str, Any]) -> str:
    """The precision whose tolerance judges the artifact (``w1a1`` / ``w1a8`` for an fp32 BiViT graph)."""
    return str(manifest.get("validation_precision") or manifest["precision"])


def _validate_dir(exporter, directory, manifest, model, inputs, ref_outputs, bundle, n_top1: int = N_TOP1) -> ValidationReport:
    checks = exporter.checks(directory, manifest) + _nm_check(manifest)
    run = exporter.runner(directory, manifest)
    if isinstance(run, str):
        return checks_only(exporter.name, _judged_as(manifest), checks + integer_checks(manifest), run)
    try:
        got = np.stack([np.asarray(run(inputs[i : i + 1].numpy()))[0] for i in range(len(inputs))])
    except Exception as exc:  # noqa: BLE001
        raise EdgekitError(f"{exporter.name}: the exported artifact failed to run: {type(exc).__name__}: {exc}") from exc
    checks = checks + integer_checks(manifest, got, ref_outputs)
    checks += task_checks(getattr(bundle, "task", None), got, ref_outputs, tuple(inputs.shape[-2:]))  # detection boxes
    top1 = None
    num_classes = getattr(bundle, "num_classes", None) if bundle is not None and bundle.labeled else None
    if is_classifier(ref_outputs, num_classes):
        xs = bundle.test.x[:n_top1]
        act = np.stack([np.asarray(run(xs[i : i + 1].numpy()))[0] for i in range(len(xs))])
        try:
            ref = np.concatenate([_forward(model, xs[i : i + 64]) for i in range(0, len(xs), 64)])
        except Exception:  # noqa: BLE001 - e.g. a torch.export program specialised to batch 1
            ref = np.concatenate([_forward(model, xs[i : i + 1]) for i in range(len(xs))])
        top1 = (act, ref)
    report = judge(exporter.name, _judged_as(manifest), {"output": (got, ref_outputs)}, manifest.get("runtime", {}).get("name", exporter.caps.runtime), top1, checks)
    report.extra["contract"] = contract_for(_judged_as(manifest)).to_dict()
    return report


def integer_checks(manifest: dict[str, Any], got: np.ndarray | None = None, ref: np.ndarray | None = None) -> list[dict[str, Any]]:
    """An integer-only graph (manifest ``integer_only``, e.g. I-ViT): the float-op checker's verdict (no float
    tensor between the input quantizer and the output dequantizer) and, where it ran, outputs bit-identical to
    the fake-integer PyTorch model."""
    io = manifest.get("integer_only")
    if not io:
        return []
    n = int(io.get("float_tensors", -1))
    out = [{"name": "integer_only", "passed": n == 0,
            "detail": "no float tensor inside the integer region" if n == 0 else f"{n} float tensor(s) inside: {io.get('first')}"}]
    if got is not None and ref is not None:
        same = got.shape == ref.shape and bool(np.array_equal(got, ref))
        diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if got.shape == ref.shape else float("inf")
        out.append({"name": "bit_exact", "passed": same, "detail": f"max |artifact - PyTorch| = {diff:g} over {len(ref)} inputs"})
    return out


def validate(artifact: Artifact | str | Path, reference_model: nn.Module, inputs: torch.Tensor, data: Any = None) -> ValidationReport:
    """Validate an existing artifact directory against ``reference_model`` on ``inputs`` (N x C x H x W)."""
    from edgekit.artifacts import verify_manifest

    directory = artifact.directory if isinstance(artifact, Artifact) else Path(artifact)
    manifest = verify_manifest(directory)
    exporter = get_exporter(manifest["target"])
    inputs = inputs.float().contiguous()
    expected = tuple(manifest["input_shape"][1:])
    if tuple(inputs.shape[1:]) != expected:
        raise UserInputError(f"inputs have shape {tuple(inputs.shape)}; the artifact takes N x {'x'.join(map(str, expected))}")
    ref = np.stack([_forward(reference_model, inputs[i : i + 1])[0] for i in range(len(inputs))])
    bundle = _data_bundle(data, expected) if data is not None else None
    return _validate_dir(exporter, directory, manifest, reference_model, inputs, ref, bundle)
