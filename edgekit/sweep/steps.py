"""The three kinds of sweep step, each a plain function of picklable arguments (so any executor can run it).

Each step writes its result under the sweep's cache (``CACHE/<kind>/<key>/``): the compress output or the
exported artifact, plus ``step.json``, the step's record, written last and atomically. A step whose
``step.json`` exists is not run again; a step that failed (exit 1) is recorded in the sweep but not cached,
so a rerun tries it again, while a refusal (exit 2: the target or recipe said no) is cached like a result.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from pathlib import Path
from typing import Any

STEP_FILE = "step.json"
PROFILE_BUDGET_S = 2.0
# A sweep runs unattended beside its own build steps: the runner's start (importing TVM, loading the module,
# validating) measured over the default 60 s on a loaded 2-core machine, which failed every TVM cell of
# mobilenetv2; a failed cell costs a rerun, a longer wait costs nothing when the runner is healthy.
PROFILE_SLACK_S = 300.0


def step_dir(cache: Path, kind: str, key: str) -> Path:
    return Path(cache) / kind / key


def cached(cache: Path, kind: str, key: str) -> dict[str, Any] | None:
    f = step_dir(cache, kind, key) / STEP_FILE
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {**rec, "cached": True}


def _finish(directory: Path, rec: dict[str, Any]) -> dict[str, Any]:
    from edgekit.artifacts import write_json_atomic

    if rec["state"] != "failed":
        directory.mkdir(parents=True, exist_ok=True)
        write_json_atomic(directory / STEP_FILE, rec)
    return {**rec, "cached": False}


def _error(exc: BaseException) -> tuple[str, str, int]:
    from edgekit.errors import EdgekitError, UserInputError

    text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, UserInputError):
        return "refused", text, 2
    if isinstance(exc, EdgekitError):
        return "failed", text, exc.exit_code
    return "failed", f"{type(exc).__name__}: {text} ({traceback.extract_tb(exc.__traceback__)[-1].filename.rsplit('/', 1)[-1]})", 1


def _single_thread() -> None:
    import torch

    torch.set_num_threads(int(os.environ.get("EDGEKIT_SWEEP_THREADS", "1")))


def run_compress(cache: str, key: str, model: str, recipe: list[str], data: str | None, seed: int,
                 overrides: list[str]) -> dict[str, Any]:
    """Compress ``model`` with the composed ``recipe`` into ``CACHE/compress/KEY/out``."""
    _single_thread()
    from edgekit.pipeline import compress

    directory = step_dir(Path(cache), "compress", key)
    out = directory / "out"
    rec: dict[str, Any] = {"kind": "compress", "key": key, "recipe": "+".join(recipe), "state": "failed"}
    t0 = time.perf_counter()
    try:
        if directory.exists():
            shutil.rmtree(directory)  # a step that failed before left no step.json: start clean
        res = compress(model, list(recipe), data, overrides=overrides, out=out, force=True, latency=False, seed=seed)
        rep = res.report
        rec.update(state="works", out=str(out), accuracy_before=rep.accuracy.before, accuracy_after=rep.accuracy.after,
                   size_bytes=rep.size_bytes.after, artifact_bytes=rep.artifact_bytes, macs=rep.macs.after,
                   params=rep.params.after)
    except Exception as exc:  # noqa: BLE001 - a failed cell is recorded; the sweep goes on
        rec["state"], rec["error"], rec["exit_code"] = _error(exc)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return _finish(directory, rec)


def run_export(cache: str, key: str, compressed: str, target: str) -> dict[str, Any]:
    """Export a compress output to ``target`` into ``CACHE/export/KEY/artifact`` and validate it there."""
    _single_thread()
    from edgekit.exporters.composition import run_cell

    directory = step_dir(Path(cache), "export", key)
    if directory.exists():
        shutil.rmtree(directory)
    art = directory / "artifact"
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    try:
        cell = run_cell(compressed, target, art, profile=False)
        rec = {"kind": "export", "key": key, "target": target, "precision": cell.precision,
               "state": "failed" if cell.state == "failed" else cell.state, "error": cell.reason or None,
               "exit_code": cell.exit_code, "validation": cell.metrics, "artifact": cell.artifact,
               "file_bytes": _size(art) if cell.artifact else None}
    except Exception as exc:  # noqa: BLE001
        state, text, code = _error(exc)
        rec = {"kind": "export", "key": key, "target": target, "state": state, "error": text, "exit_code": code}
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return _finish(directory, rec)


def _size(artifact: Path) -> int:
    """Bytes of the deployable files of an artifact (the model files, not the reference data or reports)."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    files = manifest.get("model_files") or [manifest.get("model_file")]
    total = 0
    for name in files:
        if not name:
            continue
        p = artifact / name
        total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
        if p.suffix == ".onnx" and (artifact / f"{name}.data").is_file():
            total += (artifact / f"{name}.data").stat().st_size
        if p.suffix == ".xml" and p.with_suffix(".bin").is_file():
            total += p.with_suffix(".bin").stat().st_size
    return total


def run_profile(cache: str, key: str, artifact: str, device: str, devices_file: str | None,
                budget_s: float = PROFILE_BUDGET_S, threads: int = 0) -> dict[str, Any]:
    """Profile an exported artifact on ``device``: latency median with its 95% CI, energy where a sensor exists."""
    from edgekit.devices import get_device, read_artifact
    from edgekit.devices.profile import ProfileOptions, profile

    directory = step_dir(Path(cache), "profile", key)
    rec: dict[str, Any] = {"kind": "profile", "key": key, "device": device, "state": "failed"}
    t0 = time.perf_counter()
    try:
        p = profile(read_artifact(artifact), get_device(device, devices_file),
                    ProfileOptions(budget_s=budget_s, threads=threads, validate=True,
                                   timeout_s=budget_s + PROFILE_SLACK_S)).to_dict()
        lat = p.get("latency_ms") or {}
        energy = p.get("energy_mj_per_inference") or {}
        val = p.get("validation") or {}
        ok = p.get("status") == "ok" and val.get("status") in ("passed", "skipped")
        rec.update(state="works" if ok else "failed", error=p.get("error") or (None if ok else f"validation {val.get('status')}: {val.get('reason')}"),
                   latency_ms=lat.get("median"), latency_ci95_ms=p.get("median_ci95_ms"), latency_kind=p.get("latency_kind"),
                   energy_mj=energy.get("total"), power_status=p.get("power_status"), validation=val.get("status"),
                   runtime=(p.get("runtime") or {}).get("name"), threads=threads or "default")
    except Exception as exc:  # noqa: BLE001
        rec["state"], rec["error"], rec["exit_code"] = _error(exc)
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    return _finish(directory, rec)
