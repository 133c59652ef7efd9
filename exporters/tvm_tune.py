"""MetaSchedule tuning for TVM Relax CPU builds, with a tuning-database cache keyed by the model's structure and
the target ("Tensor Program Optimization with Probabilistic Programs", Shao et al., NeurIPS 2022: TVM's
MetaSchedule; the evolutionary search over schedule traces guided by a learned cost model of Ansor / AutoTVM,
Chen et al., NeurIPS 2018).

:func:`compile_tuned` runs the passes before scheduling (:func:`edgekit.exporters.tvm_schedule.prepare_passes`),
extracts MetaSchedule's tasks (one per fused kernel), and derives the cache key from them: sha256 of each task's
structural hash and weight (the loop nests and how often each runs, not the weights' values) with the target and
the TVM version. ``CACHE/KEY/`` holds a JSON database (``database_workload.json``, ``database_tuning_record.json``)
and ``tuning.json`` (trials spent, seconds, cost model). Before its first search a database is seeded with each
task's zero-trial schedule (:func:`~edgekit.exporters.tvm_schedule.heuristic_schedule`, measured once, not
counted as a trial), so a tuned kernel is never one MetaSchedule sampled a few times and kept although the
heuristic schedule ran faster. The seeded times also pick what the search spends the budget on
(:func:`select_tasks`): the kernels making up 90% of the time (time x how often the kernel runs), or more while
each still gets 64 trials; the rest keep the heuristic schedule. A request for at most the trials spent already
does no search; a larger one searches the difference into the same database. The library is then compiled with
:func:`~edgekit.exporters.tvm_schedule.pipeline`: each kernel takes its best measured schedule from the database,
the rest (kernels no trial reached, or whose trials all failed) the heuristic zero-trial schedule.

What the search needs and how it is bounded here: the target carries ``num-cores`` (added from this machine);
candidates are compiled and timed in this process (:func:`_in_process`: MetaSchedule's local workers each
re-import TVM and are killed at their timeout while importing on a loaded 2-core machine); ``timeout_s`` bounds
the search's wall clock (candidates after it are refused, the database keeps what was measured, the manifest says
``stopped_by_timeout``); the cost model is ``xgb`` (the ``xgboost`` package, extra ``tvm``), else ``random``
(said in ``tuning.json``). Candidates must run on the target, so only the host is tuned (an aarch64 or CUDA
target needs an RPC runner on the device: refused). Cache root: ``$EDGEKIT_TVM_TUNE_CACHE``, else
``~/.cache/edgekit/tvm-tune``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekit.backends import require
from edgekit.errors import EdgekitError

__all__ = ["cache_root", "tuning_target", "structure_key", "compile_tuned", "cost_model_kind", "select_tasks"]

CACHE_ENV = "EDGEKIT_TVM_TUNE_CACHE"
MAX_PER_ITER = 64  # candidates measured per search round (MetaSchedule's default)


def cache_root(path: str | Path | None = None) -> Path:
    if path:
        return Path(path).expanduser()
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgekit" / "tvm-tune"


def tuning_target(target):
    """``target`` with ``num-cores`` (MetaSchedule refuses an llvm target without it): this machine's core count."""
    tvm = require("tvm", "TVM tuning")
    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    spec = json.loads(str(target)) if str(target).startswith("{") else None
    if spec is None:
        raise EdgekitError(f"tvm tune: cannot read target {target} to add num-cores")
    spec.pop("tag", None)
    spec.pop("keys", None)
    spec["num-cores"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return tvm.target.Target(spec)


def cost_model_kind() -> str:
    try:
        import xgboost  # noqa: F401
    except ImportError:
        return "random"
    return "xgb"


def structure_key(tasks, target) -> str:
    """sha256 over the tasks' structural hashes and weights, the target and the TVM version."""
    tvm = require("tvm", "TVM tuning")

    parts = sorted(f"{task_id(t)}:{int(t.weight)}" for t in tasks)
    text = json.dumps({"tasks": parts, "target": str(target), "tvm": tvm.__version__}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _hand_scheduled(task) -> bool:
    """A kernel scheduled by hand (BiViT's popcount kernels: ``op_pattern`` opaque or ``tirx.is_scheduled``)."""
    from edgekit.exporters.tvm_schedule import OPAQUE, SCHEDULED

    func = task.dispatched[0]["main"]
    attrs = func.attrs or {}
    return bool(attrs.get(SCHEDULED, False)) or int(attrs.get("op_pattern", -1)) == OPAQUE


def _database(ms, d: Path):
    return ms.database.JSONDatabase(path_workload=str(d / "database_workload.json"),
                                    path_tuning_record=str(d / "database_tuning_record.json"), allow_missing=True)


class SearchTimeout(EdgekitError):
    """The search's wall-clock budget ran out (the database keeps every candidate measured until then)."""


def _measure_fill(tvm) -> Callable[[Any], None]:
    """How a candidate's input buffers are filled before it is timed: floats random (as MetaSchedule does),
    integers with ones. Random integers crash the measuring process in integer-only graphs (I-ViT): a zero
    divisor raises SIGFPE, an out-of-range index reads outside a table; an integer kernel's time does not
    depend on its values."""
    random_fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")

    def fill(arg) -> None:
        dtype = str(arg.dtype)
        if dtype.startswith(("int", "uint", "bool")):
            arg.copyfrom(np.ones(tuple(arg.shape), dtype=dtype))
        else:
            random_fill(arg)

    return fill


def _in_process(ms, tvm, config, deadline: float | None, counter: dict[str, int]):
    """MetaSchedule's builder and runner without worker processes: each candidate is compiled (llvm, in memory)
    and timed in this process. Local workers each import TVM and its tensor intrinsics again and are killed at
    their timeout while still importing on a loaded 2-core machine; in-process, that import happens once.
    After ``deadline`` (time.monotonic) the remaining candidates are refused, so the search ends."""
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build
    from tvm.s_tir.meta_schedule.runner import PyRunner
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture, default_run_evaluator
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common
    from tvm.ir.utils import derived_object

    built: dict[str, Any] = {}
    fill = _measure_fill(tvm)

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            out = []
            for bi in build_inputs:
                if deadline is not None and time.monotonic() > deadline:
                    out.append(BuilderResult(None, "edgekit: tune_timeout reached, candidate not built"))
                    continue
                try:
                    key = f"mem:{len(built)}:{id(bi)}"
                    built[key] = default_build(bi.mod, bi.target, None)
                    out.append(BuilderResult(key, None))
                except Exception as exc:  # noqa: BLE001 - an invalid candidate is a failed trial, as in MetaSchedule
                    out.append(BuilderResult(None, f"edgekit in-process build: {type(exc).__name__}: {str(exc)[:1000]}"))
            return out

    @derived_object
    class InProcessRunner(PyRunner):
        def run(self, runner_inputs):
            out = []
            for ri in runner_inputs:
                rt = built.pop(str(ri.artifact_path), None)
                try:
                    dev = tvm.runtime.device(str(ri.device_type), 0)
                    args = alloc_argument_common(fill, dev, tuple(a.as_json() for a in ri.args_info), 1)
                    out.append(LocalRunnerFuture(res=default_run_evaluator(rt, dev, config, args), error_message=None))
                    counter["measured"] += 1
                except Exception as exc:  # noqa: BLE001
                    out.append(LocalRunnerFuture(res=None, error_message=f"edgekit in-process run: {str(exc)[:1000]}"))
            return out

    return InProcessBuilder(), InProcessRunner()


def per_iter(trials: int, tasks: int) -> int:
    """Candidates per search round: the task scheduler first gives every task one round, so a round of 64 on a
    budget of 64 would spend it all on the first task; the budget spread over the tasks instead (4 to 64)."""
    return max(1, min(MAX_PER_ITER, trials, max(4, trials // max(1, tasks))))


def _search(ms, tvm, tasks, target, trials: int, d: Path, timeout_s: float | None, cost_model: str) -> int:
    """Run the search; returns the candidates measured."""
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    contexts, weights = extracted_tasks_to_tune_contexts(tasks, str(d / "logs"), num_threads=int(target.attrs["num-cores"]))
    if not contexts:
        return 0
    counter = {"measured": 0}
    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    builder, runner = _in_process(ms, tvm, config, deadline, counter)
    ms.tune_tasks(tasks=contexts, task_weights=weights, work_dir=str(d / "logs"), max_trials_global=trials,
                  num_trials_per_iter=per_iter(trials, len(contexts)), builder=builder, runner=runner,
                  database=_database(ms, d), cost_model=cost_model,
                  measure_callbacks=[ms.measure_callback.AddToDatabase(), ms.measure_callback.UpdateCostModel()])
    return counter["measured"]


def task_id(task) -> str:
    """A task's kernel, as the cache key counts it: the structural hash of its function."""
    from tvm_ffi import structural_hash

    return str(structural_hash(task.dispatched[0]))


def _seed_heuristic(ms, tvm, tasks, target, d: Path) -> dict[str, float]:
    """Measure each task's zero-trial schedule (:func:`edgekit.exporters.tvm_schedule.heuristic_schedule`) and
    commit it to the database as a tuning record: the search then has to beat it, and a kernel whose few trials
    all came out slower keeps it (at small budgets MetaSchedule's best-of-few sample was up to 20x slower than
    the heuristic one on data-movement kernels). Returns each seeded task's microseconds (:func:`task_id`)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from edgekit.exporters.tvm_schedule import heuristic_schedule

    db = _database(ms, d)
    config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20)
    builder, runner = _in_process(ms, tvm, config, None, {"measured": 0})
    done: dict[str, float] = {}
    for task in tasks:
        mod = task.dispatched[0]
        sch = heuristic_schedule(tvm, mod["main"])
        if sch is None:
            continue
        (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
        if built.error_msg:
            continue
        args_info = ArgInfo.from_prim_func(mod["main"])
        (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu", args_info)])  # host llvm only
        result = future.result()
        if result.error_msg or not result.run_secs:
            continue
        db.commit_tuning_record(ms.database.TuningRecord(sch.trace, db.commit_workload(mod), result.run_secs,
                                                         target, args_info))
        done[task_id(task)] = round(1e6 * float(np.mean([float(x) for x in result.run_secs])), 3)
    return done


SHARE = 0.9  # the search covers the kernels making up this share of the seeded time ...
TRIALS_PER_TASK = 64  # ... or more kernels, as long as each gets this many trials of the budget


def select_tasks(tasks, seeded_us: dict[str, float], trials: int, key: Callable[[Any], str] = task_id) -> list:
    """The tasks the search spends ``trials`` on: by seeded time x weight (how often the kernel runs), the
    fewest covering ``SHARE`` of it, more while the budget gives each ``TRIALS_PER_TASK`` trials; a task
    without a seeded time is always searched. MetaSchedule's scheduler first gives every task one round, which
    on a budget of a few trials per task spent it evenly over kernels taking microseconds and those taking
    milliseconds."""
    cost = [(float(t.weight) * seeded_us[key(t)] if key(t) in seeded_us else float("inf"), i)
            for i, t in enumerate(tasks)]
    order = [i for _, i in sorted(cost, key=lambda c: -c[0])]
    finite = sum(c for c, _ in cost if c != float("inf"))
    k, acc = 0, 0.0
    for i in order:
        if cost[i][0] != float("inf") and finite and acc >= SHARE * finite:
            break
        acc += cost[i][0] if cost[i][0] != float("inf") else 0.0
        k += 1
    k = max(k, min(len(tasks), trials // TRIALS_PER_TASK), 1)
    return [tasks[i] for i in sorted(order[:k])]


def _write_meta(path: Path, meta: dict[str, Any]) -> None:
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, path)


def compile_tuned(mod, target, trials: int, cache: str | Path | None = None, timeout_s: float | None = None,
                  log: Callable[[str], None] | None = None):
    """Tune ``mod`` (a Relax IRModule, static shapes) for ``target`` with ``trials`` MetaSchedule trials, or reuse
    the cached database, and compile it; returns ``(executable, info)`` (``info``: key, cache directory, trials
    requested / spent in total / searched now, search seconds, cost model, tasks)."""
    tvm = require("tvm", "TVM tuning")
    from tvm.s_tir import meta_schedule as ms

    from edgekit.exporters.tvm_schedule import compile_scheduled, prepare_passes

    target = tuning_target(target)
    with target:
        prepared = tvm.transform.Sequential(prepare_passes(target))(mod)
    tasks = [t for t in ms.relax_integration.extract_tasks(prepared, target) if not _hand_scheduled(t)]
    key = structure_key(tasks, target)
    d = cache_root(cache) / key
    d.mkdir(parents=True, exist_ok=True)
    meta_path = d / "tuning.json"
    meta: dict[str, Any] = json.loads(meta_path.read_text()) if meta_path.exists() else {"trials": 0, "search_s": 0.0}
    todo = max(0, int(trials) - int(meta["trials"]))
    kind, searched_s, timed_out = cost_model_kind(), 0.0, False
    if "heuristic_seeded" not in meta:  # once per database, before any search: both sides of a comparison alike
        meta["heuristic_us"] = _seed_heuristic(ms, tvm, tasks, target, d)
        meta["heuristic_seeded"] = len(meta["heuristic_us"])
        _write_meta(meta_path, meta)
    searched = select_tasks(tasks, meta.get("heuristic_us", {}), int(trials))
    if todo:
        if log:
            log(f"tvm tune: {todo} MetaSchedule trials over {len(searched)} of {len(tasks)} tasks (cost model {kind}) into {d}")
        t0 = time.perf_counter()
        try:
            measured = _search(ms, tvm, searched, target, todo, d, timeout_s, kind)
        except Exception as exc:  # noqa: BLE001 - name what failed; the database keeps what was measured
            raise EdgekitError(f"tvm tune: the MetaSchedule search failed after {time.perf_counter() - t0:.0f} s "
                               f"(cache {d}): {str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__}") from exc
        searched_s = time.perf_counter() - t0
        timed_out = bool(timeout_s) and time.perf_counter() - t0 > timeout_s
        meta = {"trials": int(meta["trials"]) + (measured if timed_out else todo), "measured": int(meta.get("measured", 0)) + measured, "search_s": float(meta["search_s"]) + searched_s,
                "cost_model": kind, "tasks": len(tasks), "target": str(target), "tvm": tvm.__version__,
                "timeout_s": timeout_s, "heuristic_seeded": meta["heuristic_seeded"],
                "heuristic_us": meta["heuristic_us"], "searched_tasks": len(searched)}
        _write_meta(meta_path, meta)
    ex = compile_scheduled(mod, target, _database(ms, d))
    info = {"key": key, "cache": str(d), "trials_requested": int(trials), "trials_total": int(meta["trials"]),
            "trials_searched_now": todo, "reused": todo == 0, "search_s_now": round(searched_s, 1),
            "search_s_total": round(float(meta["search_s"]), 1), "measured_total": int(meta.get("measured", 0)),
            "stopped_by_timeout": bool(todo) and timed_out, "cost_model": meta.get("cost_model", kind),
            "tasks": len(tasks), "task_names": sorted({t.task_name for t in tasks}), "target": str(target),
            "heuristic_seeded": int(meta["heuristic_seeded"]), "searched_tasks": int(meta.get("searched_tasks", len(tasks)))}
    return ex, info
