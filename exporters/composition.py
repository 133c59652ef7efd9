"""One cell of the recipe x target matrix: a compress output -> export -> validate -> profile, as a typed record.

    >>> rec = run_cell("edgekit-out/convnet-int8-sym", "openvino", Path("/tmp/cell"))
    >>> rec.state                     # "works" | "ready, not validated" | "refused" | "failed"

A cell is in one of three intended states (docs/targets.md):

* ``works``: exported, validated within the precision's tolerance on this host, and ``edgekit profile`` ran it
  with on-device validation that passed.
* ``ready, not validated``: the target cannot run here (TensorRT without a GPU, CoreML on Linux): the artifact
  is written and its structural checks passed; ``reason`` says why there are no numbers.
* ``refused``: the target refused before any work (exit 2, a UserInputError) with the reason.

Anything else is ``failed`` (exit 1, or a failed validation or profile) and is a bug to fix. The engine runs
in-process (the API behind ``edgekit export`` / ``edgekit profile``) so a whole matrix stays fast; the sweep
(``edgekit sweep``) shares :func:`run_cell` and :class:`CellRecord`.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, UserInputError
from edgekit.exporters.validation import READY_NOT_VALIDATED, VALIDATED

WORKS, READY, REFUSED, FAILED = "works", READY_NOT_VALIDATED, "refused", "failed"
STATES = (WORKS, READY, REFUSED, FAILED)
PROFILE_BUDGET_S = 0.3  # a matrix checks that profile runs and validates; latency numbers come from `profile`
PROFILE_TIMEOUT_S = 900.0  # generous: a loaded host starts a runtime slowly (TVM took > 60 s at load 17 on 2 cores)


@dataclass
class CellRecord:
    """The outcome of one (compress output, target) cell."""

    recipe: str
    model: str
    target: str
    precision: str
    state: str
    reason: str = ""  # why refused / not validated / failed; empty for works
    exit_code: int = 0  # what `edgekit export` (then `edgekit profile`) exits with
    metrics: dict[str, Any] = field(default_factory=dict)  # cosine, rel_err, top1_agreement of export validation
    profile: dict[str, Any] | None = None  # median latency and on-device validation of the profile run
    artifact: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _source_of(compressed: Path) -> tuple[str, str]:
    import json

    manifest = json.loads((Path(compressed) / "manifest.json").read_text())
    recipe = (manifest.get("recipe") or {}).get("name", "?")
    return str(recipe), str(manifest.get("model", Path(compressed).name))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


def run_cell(
    compressed: str | Path,
    target: str,
    out: Path,
    *,
    precision: str | None = None,
    profile: bool = True,
    options: dict[str, Any] | None = None,
    validation_samples: int = 64,
    profile_budget_s: float = PROFILE_BUDGET_S,
) -> CellRecord:
    """Export the compress output ``compressed`` to ``target`` into ``out``, validate it, profile it locally."""
    from edgekit.cli.export import default_precision_of
    from edgekit.exporters.base import export

    compressed = Path(compressed)
    recipe, model = _source_of(compressed)
    precision = precision or default_precision_of(compressed)
    rec = CellRecord(recipe, model, target, precision, FAILED)
    t0 = time.perf_counter()
    try:
        art = export(str(compressed), target, precision, out=out, force=True, validation_samples=validation_samples,
                     **(options or {}))
    except UserInputError as exc:
        rec.state, rec.reason, rec.exit_code = REFUSED, _first_line(exc), exc.exit_code
        rec.seconds = time.perf_counter() - t0
        return rec
    except EdgekitError as exc:
        rec.reason, rec.exit_code = _first_line(exc), exc.exit_code
        rec.seconds = time.perf_counter() - t0
        return rec
    rep = art.report
    rec.artifact = str(art.directory)
    rec.metrics = {k: v for k, v in (rep.outputs.get("output") or {}).items() if k in ("cosine", "rel_err", "max_abs")}
    if rep.top1_agreement is not None:
        rec.metrics["top1_agreement"] = rep.top1_agreement
    if rep.state == READY_NOT_VALIDATED:
        rec.state, rec.reason = READY, rep.skipped or ""
    elif rep.state != VALIDATED:
        rec.reason, rec.exit_code = "; ".join(rep.failures)[:400], 1
    elif not profile:
        rec.state = WORKS
    else:
        rec.profile = profile_artifact(art.directory, budget_s=profile_budget_s)
        ok = rec.profile.get("status") == "ok" and rec.profile.get("validation", {}).get("status") == "passed"
        rec.state = WORKS if ok else FAILED
        if not ok:
            rec.exit_code = 1
            rec.reason = f"profile: {rec.profile.get('error') or rec.profile.get('validation')}"
    rec.seconds = time.perf_counter() - t0
    return rec


def profile_artifact(directory: Path, budget_s: float = PROFILE_BUDGET_S) -> dict[str, Any]:
    """Profile an exported artifact on the local device, as ``edgekit profile`` does; a short summary."""
    from edgekit.devices import get_device, read_artifact
    from edgekit.devices.profile import ProfileOptions, profile

    opts = ProfileOptions(budget_s=budget_s, warmup_s=0.05, min_runs=5, idle_s=0.0, validate=True, timeout_s=PROFILE_TIMEOUT_S)
    try:
        res = profile(read_artifact(directory), get_device("local"), opts).to_dict()  # the typed Profile, as JSON
        res = res.to_dict() if hasattr(res, "to_dict") else res  # the typed Profile record, or its dict
    except EdgekitError as exc:
        return {"status": "error", "error": _first_line(exc), "validation": {}}
    val = res.get("validation") or {}
    lat = res.get("latency_ms") or {}
    return {"status": res.get("status"), "error": res.get("error"), "runtime": (res.get("runtime") or {}).get("name"),
            "median_ms": lat.get("median") if isinstance(lat, dict) else None,
            "validation": {k: val.get(k) for k in ("status", "cosine_min", "cosine_threshold", "top1_agreement", "reason")
                           if k in val}}
