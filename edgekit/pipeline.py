"""``compress``: run a recipe's stages on a model and report what changed.

    >>> import edgekit
    >>> result = edgekit.compress("convnet", "int8")
    >>> result.report.accuracy
    BeforeAfter(before=0.997, after=0.994)

The model's metadata travels beside it in a :class:`~edgekit.records.ModelInfo` (``result.info``), the report
is a typed :class:`~edgekit.records.CompressReport` (``report.json`` is its ``to_dict()``).
"""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from edgekit.nn_utils import eval_mode
from edgekit import __version__
from edgekit.data import DataBundle, check_fits, load_data
from edgekit.errors import UserInputError
from edgekit.loading import LoadedModel, load_model, save_model
from edgekit.records import BeforeAfter, CompressReport, LatencyComparison, ModelInfo, StageReport
from edgekit.outputs import select_output
from edgekit.metrics import compare_latency, count_macs, count_params, storage_bytes
from edgekit.progress import task
from edgekit.recipe import Recipe, load_recipe
from edgekit.stages import StageContext, get_stage
from edgekit.training import evaluate


@dataclass
class CompressResult:
    model: nn.Module
    report: CompressReport
    recipe: Recipe
    info: ModelInfo
    out_dir: Path | None = None


LAYERS_FILE = "layers.json"


def default_out_dir(model_name: str, recipe: Recipe) -> Path:
    return Path("edgekit-out") / f"{model_name.replace(':', '_').replace('/', '_')}-{recipe.name}"


def _figures(model: nn.Module, data: DataBundle, example: torch.Tensor) -> dict[str, Any]:
    from edgekit.tasks import task_of

    task = task_of(data)  # classification: top-1 is `accuracy`; another task's metrics (mAP) go beside it
    return {
        "params": count_params(model),
        "size_bytes": storage_bytes(model),
        "macs": count_macs(model, example),
        "accuracy": evaluate(model, data.test) if task.name == "classification" else None,
        "task_metrics": task.evaluate(model, data.test) if task.name != "classification" else None,
    }


def _latency(before: nn.Module, after: nn.Module, example: torch.Tensor, recipe: Recipe) -> LatencyComparison:
    """Before and after timed interleaved in one loop on the recipe's runtime (load drifts hit both alike)."""
    from edgekit.exporters.latency import latency_runner

    m = recipe.measure
    with task(f"measuring latency ({m.latency_runtime}, {m.latency_runs} runs each, interleaved)"), \
            tempfile.TemporaryDirectory(prefix="edgekit-latency-") as tmp, \
            latency_runner(before, example, m.latency_runtime, m.threads, Path(tmp) / "before") as run_before, \
            latency_runner(after, example, m.latency_runtime, m.threads, Path(tmp) / "after") as run_after:
        return compare_latency(run_before, run_after, m.latency_runs, m.latency_warmup)


def _check_data(model: nn.Module, data: DataBundle, name: str) -> None:
    try:
        with torch.no_grad():
            out = eval_mode(model)(data.test.x[:2])
    except Exception as exc:  # noqa: BLE001 - any failure here means the data does not fit the model
        raise UserInputError(
            f"data {data.name} (samples {tuple(data.input_shape)}) does not fit model {name}: {type(exc).__name__}: {exc}"
        ) from None
    if data.labeled and isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] < (data.num_classes or 0):
        raise UserInputError(
            f"model {name} has {out.shape[1]} outputs but data {data.name} has {data.num_classes} classes"
        )


def compress(
    model: nn.Module | str | None = None,
    recipe: str | Path | Recipe | Sequence[str | Path] = "int8",
    data: DataBundle | str | None = None,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    force: bool = False,
    latency: bool = True,
    seed: int = 0,
    arch: str | None = None,
    trust_pickle: bool = False,
    info: ModelInfo | None = None,
    output: str | None = None,
) -> CompressResult:
    """Run ``recipe`` on ``model`` with ``data``; write the result to ``out`` if given (atomically).

    ``model``: an ``nn.Module`` (described by ``info`` when given), a :class:`LoadedModel` or a MODEL spec.
    ``output``: the output leaf that holds the logits when the model returns a tuple / dict / ModelOutput
    (default: ``info.output``, else the first tensor; see :mod:`edgekit.outputs`).
    """
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    loaded = model if isinstance(model, LoadedModel) else None
    if loaded is None:
        if isinstance(model, nn.Module):
            loaded = LoadedModel(eval_mode(model), info or ModelInfo(name=type(model).__name__))
        else:
            loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if data is None:
        from edgekit.tasks import default_data

        data = default_data(loaded.info)  # a zoo detector's own data (digits-det); None: the built-in digits
    if not isinstance(data, DataBundle):
        data = load_data(data, loaded.input_shape or (3, 32, 32), seed=seed, options=recipe.data)
    check_fits(data, loaded.input_shape, loaded.name)
    _check_data(loaded.model, data, loaded.name)
    # a tuple / dict / ModelOutput output: everything downstream sees its logits tensor (edgekit.outputs)
    selected, choice = select_output(loaded.model, (data.test.x[:2],), output or loaded.info.output)
    if choice.wrapped and data.task != "classification":  # one leaf of a detector's outputs would be a wrong model
        raise UserInputError(
            f"model {loaded.name} returns a {choice.kind} of tensors {', '.join(map(repr, choice.leaves))}; {data.task} "
            "models go through compress and export as one packed tensor (N, 5 + classes, locations): see "
            "edgekit.tasks.detection (the zoo detector: packed=True)"
        )
    loaded = LoadedModel(selected, loaded.info.replace(output=choice.path or None))

    out_path = Path(out) if out is not None else None
    if out_path is not None:
        from edgekit.artifacts import check_writable

        check_writable(out_path, force)  # refuse before any work

    original = eval_mode(loaded.model)
    reference = eval_mode(copy.deepcopy(original))
    example = data.test.x[:1].clone()
    before = _figures(original, data, example)

    model_ = copy.deepcopy(original)
    ctx = StageContext(data=data, reference=reference, example_inputs=(example,), seed=seed)
    stage_reports = []
    if out_path is not None:
        from edgekit.artifacts import atomic_output_dir

        with atomic_output_dir(out_path, force) as tmp:
            ctx.out_dir = tmp
            model_ = _run_stages(model_, recipe, ctx, stage_reports)
            report = _report(loaded, recipe, data, reference, model_, example, before, stage_reports, latency)
            _write(tmp, model_, example, loaded, recipe, report, data)
    else:
        model_ = _run_stages(model_, recipe, ctx, stage_reports)
        report = _report(loaded, recipe, data, reference, model_, example, before, stage_reports, latency)
    return CompressResult(model_, report, recipe, report.model_info, out_path)


def _info_after(info: ModelInfo, data: DataBundle, stages: list[StageReport]) -> ModelInfo:
    """The model's record after the run: input shape and classes from the data, how its graph was captured."""
    captured = [s.report["capture"]["method"] for s in stages
                if isinstance(s.report.get("capture"), dict) and s.report["capture"].get("method")]
    return info.replace(input_shape=tuple(data.input_shape), num_classes=data.num_classes or info.num_classes,
                        capture=captured[0] if captured else info.capture)


def _run_stages(model: nn.Module, recipe: Recipe, ctx: StageContext, reports: list[StageReport]) -> nn.Module:
    for i, st in enumerate(recipe.stages, 1):
        fn, _ = get_stage(st.name)
        t0 = time.perf_counter()
        with task(f"stage {i}/{len(recipe.stages)}: {st.name}"):
            model, rep = fn(model, st.config, ctx)
        reports.append(StageReport(st.name, round(time.perf_counter() - t0, 3), rep))
        eval_mode(model)
    return model


def _report(loaded: LoadedModel, recipe: Recipe, data: DataBundle, reference: nn.Module, model: nn.Module,
            example: torch.Tensor, before: dict[str, Any], stage_reports: list[StageReport], latency: bool) -> CompressReport:
    after = _figures(model, data, example)
    n = min(recipe.measure.fidelity_samples, len(data.test))
    cmp = _latency(reference, model, example, recipe) if latency else None
    if cmp is not None:
        extra = {"runtime": recipe.measure.latency_runtime, "threads": recipe.measure.threads}
        before["latency_ms"], after["latency_ms"] = {**cmp.before, **extra}, {**cmp.after, **extra}
    else:
        before["latency_ms"] = after["latency_ms"] = None
    figures = {k: BeforeAfter(before[k], after[k]) for k in CompressReport.FIGURES}
    from edgekit.tasks import task_of

    task = task_of(data)
    # a streamed split's own batch size bounds the memory of the two forwards (224x224: ~390 MB at 32)
    fid = task.fidelity(reference, model, data.test.x, n=n, batch_size=getattr(data.test, "batch_size", 32))
    notes = _notes(cmp, recipe)
    if before.get("task_metrics") is not None:  # e.g. detection: mAP before / after, beside the fidelity
        fid["task"] = task.name
        fid["task_metrics"] = {k: {"before": v, "after": after["task_metrics"].get(k)} for k, v in before["task_metrics"].items()}
        notes.append(f"{task.name} on {data.name} test: " + ", ".join(
            f"{k} {v['before']:.4f} -> {v['after']:.4f}" for k, v in fid["task_metrics"].items()
            if v["before"] is not None and v["after"] is not None))
    return CompressReport(
        model=loaded.name, recipe=recipe.name, data=data.name, **figures,
        fidelity=fid, stages=stage_reports,
        latency=cmp, model_info=_info_after(loaded.info, data, stage_reports), notes=notes,
    )


def _notes(cmp: LatencyComparison | None, recipe: Recipe) -> list[str]:
    """Plain-words caveats printed next to the figures (e.g. a compressed model slower than the original)."""
    notes = []
    if cmp is not None and cmp.ratio_low > 1.0:  # slower, and the whole confidence interval says so
        notes.append(
            f"the compressed model is slower than the original on {recipe.measure.latency_runtime}: median "
            f"{cmp.after['median']:.3g} ms vs {cmp.before['median']:.3g} ms ({cmp.ratio:.2f}x, "
            f"{cmp.confidence:.0%} CI {cmp.ratio_low:.2f}-{cmp.ratio_high:.2f}); "
            "`edgekit inspect OUT --timing` times each layer"
        )
    return notes


def _write(tmp: Path, model: nn.Module, example: torch.Tensor, loaded: LoadedModel, recipe: Recipe, report: CompressReport, data: DataBundle) -> None:
    from edgekit.artifacts import write_json_atomic, write_manifest
    from edgekit.loading import MODEL_FILE

    from edgekit.metrics import layer_table

    saved = save_model(model, tmp, example)
    # A model that is also a program edgekit can rebuild (the I-ViT integer model) saves it beside model.pt2,
    # so that exporters get the program and not only its torch.export trace (see loading.PROGRAM_KINDS).
    save_program = getattr(type(model), "save_program", None)
    program = save_program(model, tmp) if callable(save_program) else None
    report.artifact_bytes = (tmp / MODEL_FILE).stat().st_size
    write_json_atomic(tmp / "report.json", report.to_dict())
    # The per-layer table of the live model: a torch.export program no longer has its module structure.
    write_json_atomic(tmp / LAYERS_FILE, layer_table(model, example)[1])
    write_manifest(
        tmp,
        kind="compressed-model",
        model=loaded.name,
        model_file=MODEL_FILE,
        dynamic_batch=saved["dynamic_batch"],
        static_batch_reason=saved["static_reason"],
        program=program,
        source=loaded.source,
        input_shape=list(data.input_shape),
        num_classes=data.num_classes,
        recipe=recipe.to_dict(),
        recipe_sources=recipe.sources,
        edgekit_version=__version__,
        torch_version=torch.__version__,
    )
