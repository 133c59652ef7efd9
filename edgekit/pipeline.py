"""``compress``: run a recipe's stages on a model and report what changed.

    >>> import edgekit
    >>> result = edgekit.compress("convnet", "int8")
    >>> result.report["accuracy"]
    {'before': 0.997, 'after': 0.994}
"""

from __future__ import annotations

import copy
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
from edgekit.metrics import count_macs, count_params, fidelity, measure_latency, storage_bytes
from edgekit.progress import task
from edgekit.recipe import Recipe, load_recipe
from edgekit.stages import StageContext, get_stage
from edgekit.training import evaluate


@dataclass
class CompressResult:
    model: nn.Module
    report: dict[str, Any]
    recipe: Recipe
    out_dir: Path | None = None


LAYERS_FILE = "layers.json"


def default_out_dir(model_name: str, recipe: Recipe) -> Path:
    return Path("edgekit-out") / f"{model_name.replace(':', '_').replace('/', '_')}-{recipe.name}"


def _figures(model: nn.Module, data: DataBundle, example: torch.Tensor, recipe: Recipe, latency: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "params": count_params(model),
        "size_bytes": storage_bytes(model),
        "macs": count_macs(model, example),
        "accuracy": evaluate(model, data.test),
    }
    if latency:
        m = recipe.measure
        with task(f"measuring latency ({m.latency_runtime}, {m.latency_runs} runs)"):
            out["latency_ms"] = measure_latency(model, example, m.latency_runtime, m.latency_runs, m.latency_warmup, m.threads)
    else:
        out["latency_ms"] = None
    return out


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
) -> CompressResult:
    """Run ``recipe`` on ``model`` with ``data``; write the result to ``out`` if given (atomically)."""
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    loaded = model if isinstance(model, LoadedModel) else None
    if loaded is None:
        if isinstance(model, nn.Module):
            loaded = LoadedModel(eval_mode(model), getattr(model, "edgekit_name", type(model).__name__), getattr(model, "edgekit_input_shape", None), "python")
        else:
            loaded = load_model(model, arch=arch, trust_pickle=trust_pickle)
    if not isinstance(data, DataBundle):
        data = load_data(data, loaded.input_shape or (3, 32, 32), seed=seed)
    check_fits(data, loaded.input_shape, loaded.name)
    _check_data(loaded.model, data, loaded.name)

    out_path = Path(out) if out is not None else None
    if out_path is not None:
        from edgekit.artifacts import check_writable

        check_writable(out_path, force)  # refuse before any work

    original = eval_mode(loaded.model)
    reference = eval_mode(copy.deepcopy(original))
    example = data.test.x[:1].clone()
    before = _figures(original, data, example, recipe, latency)

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
    model_.edgekit_name = loaded.name
    model_.edgekit_input_shape = tuple(data.input_shape)
    return CompressResult(model_, report, recipe, out_path)


def _run_stages(model: nn.Module, recipe: Recipe, ctx: StageContext, reports: list) -> nn.Module:
    for i, st in enumerate(recipe.stages, 1):
        fn, _ = get_stage(st.name)
        t0 = time.perf_counter()
        with task(f"stage {i}/{len(recipe.stages)}: {st.name}"):
            model, rep = fn(model, st.config, ctx)
        reports.append({"name": st.name, "seconds": round(time.perf_counter() - t0, 3), "report": rep})
        eval_mode(model)
    return model


def _report(loaded, recipe, data, reference, model, example, before, stage_reports, latency) -> dict[str, Any]:
    after = _figures(model, data, example, recipe, latency)
    n = min(recipe.measure.fidelity_samples, len(data.test))
    report: dict[str, Any] = {"model": loaded.name, "recipe": recipe.name, "data": data.name}
    for key in ("params", "size_bytes", "macs", "accuracy", "latency_ms"):
        report[key] = {"before": before[key], "after": after[key]}
    report["fidelity"] = fidelity(reference, model, data.test.x[:n])
    report["stages"] = stage_reports
    return report


def _write(tmp: Path, model: nn.Module, example: torch.Tensor, loaded: LoadedModel, recipe: Recipe, report: dict, data: DataBundle) -> None:
    from edgekit.artifacts import write_json_atomic, write_manifest
    from edgekit.loading import MODEL_FILE

    from edgekit.metrics import layer_table

    saved = save_model(model, tmp, example)
    write_json_atomic(tmp / "report.json", report)
    # The per-layer table of the live model: a torch.export program no longer has its module structure.
    write_json_atomic(tmp / LAYERS_FILE, layer_table(model, example)[1])
    write_manifest(
        tmp,
        kind="compressed-model",
        model=loaded.name,
        model_file=MODEL_FILE,
        dynamic_batch=saved["dynamic_batch"],
        static_batch_reason=saved["static_reason"],
        source=loaded.source,
        input_shape=list(data.input_shape),
        num_classes=data.num_classes,
        recipe=recipe.to_dict(),
        recipe_sources=recipe.sources,
        edgekit_version=__version__,
        torch_version=torch.__version__,
    )
