"""``edgekit sweep``: every recipe x target x device cell of one model, cached, ranked, plotted.

    >>> from edgekit.sweep import sweep
    >>> res = sweep("convnet", ["int8", "prune-30+int8"], ["onnx", "openvino"], ["local"], out="sweep-out")
    >>> res.cells[0].latency_ms, res.wall_s

Each recipe compresses once, each compress output exports once per target, each artifact is profiled on
each device (see :mod:`edgekit.sweep.executors` for how profiles are kept apart). Every step is cached by
content (:mod:`edgekit.sweep.grid`) under ``OUT/cache``: a rerun, or a grid extended by a recipe, target or
device, runs only the new steps. A failed cell is recorded with its error and the rest goes on.
``OUT/sweep.json`` is a :class:`~edgekit.sweep.results.SweepResult`; ``OUT/pareto-*.png`` plot accuracy
against latency and energy per device with the Pareto front marked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from edgekit.errors import UserInputError
from edgekit.sweep.grid import build_grid, parse_list, parse_recipes
from edgekit.sweep.results import SweepCell, SweepResult, pareto, parse_size, plot, ranked

__all__ = ["SweepCell", "SweepResult", "pareto", "parse_size", "ranked", "sweep"]

MARKER = ".edgekit-sweep"
RESULT_FILE = "sweep.json"


def _prepare_out(out: Path) -> Path:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; a sweep writes a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise UserInputError(f"--out {out} exists and is not an edgekit sweep directory (no {MARKER}); "
                             "choose a new or empty directory (a sweep's own directory is reused as its cache)")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("edgekit sweep output; cache/ holds every step by content key\n")
    return out


def sweep(model: str, recipes: str | Sequence[str], targets: str | Sequence[str], devices: str | Sequence[str] = ("local",),
          *, out: str | Path, data: str | None = None, seed: int = 0, overrides: Sequence[str] = (),
          executor: str = "local", workers: int | None = None, address: str | None = None,
          devices_file: str | None = None, profile_budget_s: float = 2.0, profile_threads: int = 0,
          plots: bool = True, profile: bool = True) -> SweepResult:
    """Run the grid; return (and write ``OUT/sweep.json``) one :class:`SweepCell` per recipe x target x device.

    ``profile_threads``: the runtime's intra-op threads when profiling (0: its default); on a shared machine one
    thread keeps a multi-threaded runtime from waiting on a descheduled worker. It is part of the profile key.
    ``profile=False`` compresses and exports only (cells that built are ``not profiled``): the build steps can
    run on a busy machine and a later pass, on a quiet one, profiles from the cache."""
    from edgekit.artifacts import write_json_atomic
    from edgekit.progress import task
    from edgekit.sweep import steps
    from edgekit.sweep.executors import make_executor

    recipe_lists = parse_recipes(recipes)
    target_list = parse_list(targets, "targets")
    device_list = parse_list(devices, "devices")
    grid = build_grid(model, recipe_lists, target_list, device_list, data=data, seed=seed, overrides=overrides,
                      devices_file=devices_file, profile_threads=profile_threads)  # every name checked before any work
    out = _prepare_out(Path(out))
    cache = str(out / "cache")
    t0 = time.perf_counter()
    run: dict[str, int] = {"compress": 0, "export": 0, "profile": 0}
    reused: dict[str, int] = {"compress": 0, "export": 0, "profile": 0}
    ex = make_executor(executor, workers, address, device_list)
    try:
        with task(f"sweep: compress {len(grid.compress)} recipe(s)"):
            comp = _phase(ex, cache, "compress", grid.compress, run, reused,
                          lambda s: (steps.run_compress, (cache, s.key, model, list(s.recipe), data, seed, list(s.overrides))))
        builds = [e for e in grid.exports if comp[e.compress.key]["state"] == "works"]
        with task(f"sweep: export {len(builds)} artifact(s)"):
            exp = _phase(ex, cache, "export", builds, run, reused,
                         lambda e: (steps.run_export, (cache, e.key, comp[e.compress.key]["out"], e.target)))
        todo = [p for p in grid.profiles if profile and exp.get(p.export.key, {}).get("state") == "works"]
        with task(f"sweep: profile {len(todo)} artifact(s) on {len(device_list)} device(s)"):
            prof = _profiles(ex, cache, todo, run, reused, devices_file, profile_budget_s, profile_threads)
    finally:
        ex.close()
    cells = [_cell(p, comp, exp, prof) for p in grid.profiles]
    result = SweepResult(model, ["+".join(r) for r in recipe_lists], target_list, device_list, cells,
                         round(time.perf_counter() - t0, 3), run, reused)
    write_json_atomic(out / RESULT_FILE, result.to_dict())
    if plots:
        plot(result, out)
    return result


def _phase(ex, cache: str, kind: str, items, run: dict, reused: dict, call) -> dict[str, dict]:
    from edgekit.sweep import steps

    results: dict[str, dict] = {}
    pending = []
    for item in items:
        hit = steps.cached(Path(cache), kind, item.key)
        if hit is not None:
            results[item.key] = hit
            reused[kind] += 1
        else:
            pending.append(item)
    for item, rec in zip(pending, ex.map([call(i) for i in pending])):
        results[item.key] = rec
        run[kind] += 1
    return results


def _profiles(ex, cache: str, todo, run: dict, reused: dict, devices_file: str | None, budget_s: float,
              threads: int = 0) -> dict[str, dict]:
    from edgekit.sweep import steps

    results: dict[str, dict] = {}
    per_device: dict[str, list] = {}
    for p in todo:
        hit = steps.cached(Path(cache), "profile", p.key)
        if hit is not None:
            results[p.key] = hit
            reused["profile"] += 1
        else:
            per_device.setdefault(p.device, []).append(p)
    calls = {d: [(steps.run_profile, (cache, p.key, steps.step_dir(Path(cache), "export", p.export.key).joinpath("artifact").as_posix(),
                                      d, devices_file, budget_s, threads)) for p in ps] for d, ps in per_device.items()}
    for device, recs in ex.map_per_device(calls).items():
        for p, rec in zip(per_device[device], recs):
            results[p.key] = rec
            run["profile"] += 1
    return results


def _cell(p, comp: dict, exp: dict, prof: dict) -> SweepCell:
    c = comp[p.export.compress.key]
    cell = SweepCell(recipe=p.export.compress.label, target=p.export.target, device=p.device, state="failed")
    cell.cached["compress"] = bool(c.get("cached"))
    if c["state"] != "works":
        cell.state, cell.error = c["state"], f"compress: {c.get('error')}"
        return cell
    if c.get("accuracy_after") is not None:
        cell.accuracy = c["accuracy_after"]
        if c.get("accuracy_before") is not None:
            cell.accuracy_drop_pt = round((c["accuracy_before"] - c["accuracy_after"]) * 100, 3)
    e = exp[p.export.key]
    cell.cached["export"] = bool(e.get("cached"))
    cell.precision, cell.file_bytes, cell.validation = e.get("precision"), e.get("file_bytes"), e.get("validation") or {}
    if e["state"] != "works":
        cell.state, cell.error = e["state"], e.get("error")
        return cell
    r = prof.get(p.key)
    if r is None:  # sweep(profile=False)
        cell.state = "not profiled"
        return cell
    cell.cached["profile"] = bool(r.get("cached"))
    cell.state, cell.error = r["state"], r.get("error")
    cell.latency_ms, cell.latency_ci95_ms, cell.latency_kind = r.get("latency_ms"), r.get("latency_ci95_ms"), r.get("latency_kind")
    cell.energy_mj = r.get("energy_mj")
    return cell
