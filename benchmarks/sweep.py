"""A sweep of zoo models x recipes x targets on this machine: its Pareto plot, and first run vs cached rerun.

For each model, ``edgekit.sweep.sweep`` runs every recipe x target cell on the ``local`` device (digits,
3x32x32), then runs the same grid again into the same directory: the rerun must only read the cache
(``steps_run`` all zero). The first run's figures are kept in ``OUT/MODEL/first-run.json``; a later
invocation with ``--threads N`` (profiling threads: part of the profile key) re-profiles only, reusing every
compress and export step, and its latencies are the ones tabulated and plotted. The section lists, per model, the wall time of both runs, the cells by state and
the Pareto front (top-1 vs latency); ``docs/sweep-pareto.png`` plots every model's cells with its front.
TVM latencies are of the default Relax CPU build, untuned (no MetaSchedule database).

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.sweep \
        --models convnet,mobilenetv2,resnet50,repvgg --out /tmp/edgekit-sweep-bench
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import command_line, machine_note, markdown_table, write_section  # noqa: E402

RECIPES = "int8,int8-sym,prune-30,prune-50,prune-30+int8,sparse-2to4"
TARGETS = "onnx,openvino,tvm"
PLOT = Path(__file__).resolve().parent.parent / "docs" / "sweep-pareto.png"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def plot_all(results: list, path: Path, title: str = "edgekit sweep on this machine (local device)") -> None:
    """One panel per model: top-1 vs latency per target, the Pareto front dashed (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgekit.sweep import pareto

    cols = 2
    rows = (len(results) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.5 * cols, 4.2 * rows), squeeze=False)
    for ax, res in zip(axes.flat, results):
        pts = [c for c in res.cells if c.state == "works" and c.accuracy is not None and c.latency_ms is not None]
        for t in res.targets:
            sub = [c for c in pts if c.target == t]
            ax.scatter([c.latency_ms for c in sub], [c.accuracy * 100 for c in sub], label=t, alpha=0.8)
            for c in sub:
                ax.annotate(c.recipe, (c.latency_ms, c.accuracy * 100), fontsize=6, alpha=0.7)
        front = pareto(pts, "latency_ms")
        ax.plot([c.latency_ms for c in front], [c.accuracy * 100 for c in front], "k--", lw=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("latency, median ms (batch 1; TVM untuned)")
        ax.set_ylabel("top-1 on digits test (%)")
        ax.set_title(f"{res.model}")
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(results):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    os.replace(tmp, path)


def add_model(model: str, first, again, full: dict, this: dict | None, rows: list, notes: list, front_rows: list,
              again_call_s: float | None = None) -> None:
    """One model's row (first run, this pass, cache-only rerun), its failed cells and its Pareto front."""
    from edgekit.sweep import pareto

    states: dict[str, int] = {}
    for c in first.cells:
        states[c.state] = states.get(c.state, 0) + 1
    rows.append([model, len(first.cells), ", ".join(f"{v} {k}" for k, v in sorted(states.items())),
                 f"{full['wall_s']:.0f}", json.dumps(full["steps_run"]), full["uptime"].split("load average:")[-1].strip(),
                 f"{this['wall_s']:.1f} (load {this['uptime'].split('load average:')[-1].strip()})" if this else "-",
                 json.dumps(this["steps_run"]) if this else "-",
                 (f"{again_call_s:.3f} ({again.wall_s:.3f} in steps)" if again_call_s is not None else f"{again.wall_s:.3f}")
                 if again else "not measured", json.dumps(again.steps_cached) if again else "-"])
    for c in [c for c in first.cells if c.state != "works"]:
        notes.append(f"- {model} / {c.recipe} / {c.target}: {c.state}: {(c.error or '')[:160]}")
    for c in pareto(first.cells, "latency_ms"):
        front_rows.append([model, c.recipe, c.target, f"{c.accuracy:.2%}", c.accuracy_drop_pt, c.latency_ms, c.file_bytes])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="convnet,mobilenetv2,resnet50,repvgg")
    ap.add_argument("--recipes", default=RECIPES)
    ap.add_argument("--targets", default=TARGETS)
    ap.add_argument("--out", default="/tmp/edgekit-sweep-bench", help="sweep directories (one per model; a cache)")
    ap.add_argument("--budget", type=float, default=1.0, help="profile budget per cell (s)")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=0, help="runtime threads when profiling (0: runtime default)")
    ap.add_argument("--render-only", action="store_true",
                    help="write the section from OUT/MODEL/sweep.json (+ first-run.json, first-sweep.json) without running")
    ap.add_argument("--no-profile", action="store_true",
                    help="build pass: compress and export only (into the cache; OUT/MODEL/build-pass.json), no rerun, no section")
    ap.add_argument("--note", default="", help="a paragraph added under the tables")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    from edgekit.artifacts import write_json_atomic
    from edgekit.sweep import SweepResult, sweep

    results, rows, front_rows, notes, builds = [], [], [], [], []
    up_start = uptime()
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        out = Path(args.out) / model
        if (out / "build-pass.json").is_file() and not args.no_profile:
            b = json.loads((out / "build-pass.json").read_text())
            builds.append(f"- {model}: {b['wall_s']:.0f} s, steps run {json.dumps(b['steps_run'])}, load "
                          f"{b['uptime_start'].split('load average:')[-1].strip()} -> {b['uptime_end'].split('load average:')[-1].strip()}")
        if args.render_only:
            passed = out / "pass.json"  # the last profiling pass (see below); else the first run's own sweep.json
            first_file = passed if passed.is_file() else out / "first-sweep.json" if (out / "first-sweep.json").is_file() else out / "sweep.json"
            first = SweepResult.read(first_file)
            last = SweepResult.read(out / "sweep.json")
            again = last if not any(last.steps_run.values()) else None  # a rerun: every step from the cache
            full = json.loads((out / "first-run.json").read_text()) if (out / "first-run.json").is_file() else \
                {"wall_s": first.wall_s, "steps_run": first.steps_run, "uptime": "not recorded"}
            meta = out / "pass-uptime.json"
            this = {"wall_s": first.wall_s, "steps_run": first.steps_run,
                    "uptime": json.loads(meta.read_text())["end"] if meta.is_file() else "not recorded"} if passed.is_file() else None
            add_model(model, first, again, full, this, rows, notes, front_rows,
                      json.loads(meta.read_text()).get("rerun_call_s") if meta.is_file() else None)
            results.append(first)
            continue
        up0 = uptime()
        if args.no_profile:
            built = sweep(model, args.recipes, args.targets, ["local"], out=out, workers=args.workers, plots=False, profile=False)
            states = {}
            for c in built.cells:
                states[c.state] = states.get(c.state, 0) + 1
            rec = {"wall_s": built.wall_s, "steps_run": built.steps_run, "steps_cached": built.steps_cached,
                   "states": states, "uptime_start": up0, "uptime_end": uptime()}
            (out / "build-pass.json").write_text(json.dumps(rec))
            print(f"{model}: build pass {json.dumps(rec)}", flush=True)
            for c in [c for c in built.cells if c.state not in ("works", "not profiled")]:
                print(f"  {c.recipe} / {c.target}: {c.state}: {(c.error or '')[:200]}", flush=True)
            continue
        first = sweep(model, args.recipes, args.targets, ["local"], out=out, workers=args.workers,
                      profile_budget_s=args.budget, profile_threads=args.threads, plots=False)
        up1 = uptime()
        t_again = time.perf_counter()
        again = sweep(model, args.recipes, args.targets, ["local"], out=out, workers=args.workers,
                      profile_budget_s=args.budget, profile_threads=args.threads, plots=False)
        again_call_s = round(time.perf_counter() - t_again, 3)  # the whole call: the grid's keys (hashes) included
        retried = sum(c.state == "failed" for c in first.cells)  # failed steps are not cached: a rerun retries them
        assert sum(again.steps_run.values()) <= 2 * retried, f"{model}: the rerun ran steps {again.steps_run}"
        record = out / "first-run.json"
        if not record.is_file() and (out / "first-sweep.json").is_file():  # a first run kept as its sweep.json
            kept = SweepResult.read(out / "first-sweep.json")
            record.write_text(json.dumps({"wall_s": kept.wall_s, "steps_run": kept.steps_run, "uptime": "not recorded"}))
        this = {"wall_s": first.wall_s, "steps_run": first.steps_run, "uptime": up0}
        if first.steps_run.get("compress") or not record.is_file():
            record.write_text(json.dumps(this))
        full = json.loads(record.read_text())
        write_json_atomic(out / "pass.json", first.to_dict())
        write_json_atomic(out / "pass-uptime.json", {"start": up0, "end": up1, "rerun_call_s": again_call_s})
        results.append(first)
        add_model(model, first, again, full, {**this, "uptime": up1} if full != this else None, rows, notes, front_rows,
                  again_call_s)
        print(f"{model}: first {first.wall_s:.0f} s ({first.steps_run}), rerun {again.wall_s:.2f} s; {up1}", flush=True)
    if args.no_profile:
        return
    if not args.no_write:
        plot_all(results, PLOT)
    md = [
        "## Sweep: zoo models x recipes x targets (edgekit sweep)",
        "",
        f"`{command_line().split(' --note')[0]}`",
        "",
        f"Machine: {machine_note()}; "
        + ("rendered from the saved passes (`--render-only`); " if args.render_only else "")
        + f"`uptime` at the start and the end of this invocation: `{up_start}`, `{uptime()}`; each pass's load is in "
        f"its row (the `first run` column is the grid's first run, compress and export included, with the load "
        f"of that run where it was recorded). Device `local`, digits 3x32x32, recipes `{args.recipes}`, targets `{args.targets}`, "
        f"profile budget {args.budget} s per cell, profiling threads "
        f"{args.threads or 'runtime default'}. TVM latencies are of the default Relax CPU build, untuned.",
        "",
        "First run vs a rerun into the same directory (the rerun reads every step from the cache). "
        "`this pass`: a later invocation whose grid differs only in the profiling threads (profiles re-run, "
        "compress and export read from the cache); `-` when the first run is this pass:",
        "",
        markdown_table(["model", "cells", "states", "first run s", "first run steps", "load at first run (1/5/15)",
                        "this pass s (load at its end)", "this pass steps run", "rerun s (whole call)", "rerun steps cached"], rows),
        "",
        f"Pareto front per model (top-1 higher, latency lower; latency median ms, batch 1, profiling threads "
        f"{args.threads or 'runtime default'}):",
        "",
        markdown_table(["model", "recipe", "target", "top-1", "drop pt", "latency ms", "file bytes"], front_rows),
        "",
        "![Pareto fronts of the sweep](sweep-pareto.png)",
    ]
    if builds:
        md += ["", "Build passes (`--no-profile`: compress and export only, at SCHED_IDLE beside other agents' jobs) "
               "that re-ran the steps whose content key changed since the first run (recipes edited since, failed "
               "steps retried); this pass then read them from the cache:", "", *builds]
    if notes:
        md += ["", "Cells that did not work (state and the first line of their error):", "", *notes]
    if args.note:
        md += ["", args.note]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("sweep", text)


if __name__ == "__main__":
    main()
