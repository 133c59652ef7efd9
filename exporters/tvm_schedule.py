"""Zero-trial schedules for TVM Relax CPU builds: what the default pipeline lacks (it leaves every PrimFunc as
plain serial loops) without MetaSchedule's search.

:func:`auto_schedule` rewrites one default-legalized PrimFunc: injective producers inlined, then for each block
the leading spatial loops fused and parallel; the innermost spatial loop split by the vector width and
vectorised when it divides, with a matmul-like block's reduction moved outside that vector (``C[i, j:j+16] +=
A[i, k] * B[k, j:j+16]``); row reductions (LayerNorm, softmax) parallel over rows. A step that does not apply
leaves the function as it was; the packed uint8 x int8 matmul kernels of :mod:`edgekit.exporters.tvm_int8` get
their VNNI tiling instead. :func:`pipeline` is the default CPU pipeline with ``FastMathTransform`` (erf,
exp, tanh by TVM's vectorisable approximations) and this pass after fusion; :func:`compile_scheduled` compiles
with it. Used by the BiViT TVM build (:mod:`edgekit.quant.bivit.tvm_build`) and its fp32 baseline, so both
sides of a comparison get the same (zero-trial) budget.
"""

from __future__ import annotations

import numpy as np

from edgekit.backends import require
from edgekit.exporters import tvm_int8

__all__ = ["VEC", "OPAQUE", "SCHEDULED", "heuristic_schedule", "auto_schedule", "prepare_passes", "pipeline", "compile_scheduled"]

VEC = 16  # float32 lanes of one AVX-512 vector
OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps leaves kernels scheduled by hand alone
SCHEDULED = "tirx.is_scheduled"  # a PrimFunc scheduled already (by hand or from a tuning database): left alone


def _loop_kinds(sch, blk) -> tuple[list, list]:
    """The block's loops split into spatial and reduction ones (legalized blocks nest spatial loops first)."""
    loops = sch.get_loops(blk)
    n_red = sum(1 for iv in sch.get(blk).iter_vars if int(iv.iter_type) == 2)
    return loops[: len(loops) - n_red], loops[len(loops) - n_red:]


def _extent(sch, loop) -> int:
    e = sch.get(loop).extent
    return int(e) if hasattr(e, "value") or isinstance(e, int) else -1


def _schedule_block(sch, blk) -> None:
    sp, rd = _loop_kinds(sch, blk)
    if not sp:
        return
    last = _extent(sch, sp[-1])
    vec = last % VEC == 0 and last >= VEC
    red = int(np.prod([_extent(sch, r) for r in rd])) if rd else 0
    if rd and not (vec and red >= VEC):
        sch.parallel(sch.fuse(*sp) if len(sp) > 1 else sp[0])  # a row reduction: rows in parallel
        return
    if vec:
        jo, ji = sch.split(sp[-1], [None, VEC])
        if rd:
            sch.reorder(jo, *rd, ji)  # matmul-like: the reduction outside the vector of output columns
        sch.vectorize(ji)
        outer = [*sp[:-1], jo]
    else:
        outer = sp[:-1] if len(sp) > 1 else sp
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def heuristic_schedule(tvm, func):
    """The schedule :func:`auto_schedule` applies to ``func``, as a ``Schedule`` (its trace replays it on the
    same function: :mod:`edgekit.exporters.tvm_tune` seeds MetaSchedule's database with it), or None where these
    rules do not apply."""
    try:
        sch = tvm.s_tir.Schedule(func)
        root = sch.get_sblock("root")
        for blk in sch.get_child_blocks(root)[:-1]:
            try:
                sch.compute_inline(blk)
            except Exception:  # noqa: BLE001 - a reduction or a block read twice: kept
                pass
        for blk in sch.get_child_blocks(root):
            if tvm_int8.is_kernel_block(sch, blk):
                tvm_int8.schedule_kernel(sch, blk)
            else:
                _schedule_block(sch, blk)
        return sch
    except Exception:  # noqa: BLE001 - unschedulable by these rules
        return None


def auto_schedule(tvm, func):
    """Parallel outer loops and vectorised inner ones for a default-legalized (unscheduled) PrimFunc: injective
    producers inlined, each remaining block scheduled by :func:`_schedule_block` (the packed integer matmul
    kernels by :func:`edgekit.exporters.tvm_int8.schedule_kernel`); the function is left as it was where a step
    does not apply."""
    sch = heuristic_schedule(tvm, func)
    return func if sch is None else sch.mod["main"]


def _schedule_pass(tvm):
    @tvm.transform.module_pass(opt_level=0, name="EdgekitBiViTAutoSchedule")
    def _pass(mod, _ctx):
        for gv, func in list(mod.functions.items()):
            attrs = func.attrs if isinstance(func, tvm.tirx.PrimFunc) and func.attrs else {}
            if (isinstance(func, tvm.tirx.PrimFunc) and int(attrs.get("op_pattern", -1)) != OPAQUE
                    and not bool(attrs.get(SCHEDULED, False))):
                mod[gv] = auto_schedule(tvm, func)
        return mod

    return _pass


def prepare_passes(target) -> list:
    """The passes before scheduling: the integer-graph rewrites of
    :func:`edgekit.exporters.tvm_int8.rewrite_integer_graph` (matmuls onto the VNNI kernel, divisions by constants
    with the constant in the code, row-level divisions in kernels of their own, table lookups injective; a graph
    without them is left as it was), library dispatch, FastMathTransform, legalization and fusion. MetaSchedule
    extracts its tasks after exactly these (:mod:`edgekit.exporters.tvm_tune`), so the database keys match the
    functions :func:`pipeline` later looks up."""
    tvm = require("tvm", "the scheduled TVM pipeline")
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return ([_integer_graph_pass(tvm, target)] + cpu.library_dispatch_passes(target) + [relax.transform.FastMathTransform()]
            + cpu.legalize_passes(target) + [relax.transform.DeadCodeElimination()])


def _integer_graph_pass(tvm, target):
    """:func:`edgekit.exporters.tvm_int8.rewrite_integer_graph` as a module pass."""
    from edgekit.exporters.tvm_int8 import rewrite_integer_graph

    @tvm.transform.module_pass(opt_level=0, name="EdgekitIntegerGraph")
    def _pass(mod, _ctx):
        return rewrite_integer_graph(mod, target)[0]

    return _pass


def pipeline(target, database=None):
    """The default Relax CPU pipeline with FastMathTransform before legalization and :func:`auto_schedule` on
    every PrimFunc after fusion (kernels marked ``op_pattern`` opaque or ``tirx.is_scheduled`` are taken as
    scheduled). With a MetaSchedule ``database``, the functions it has a tuned schedule for take that schedule
    first and :func:`auto_schedule` covers the rest."""
    tvm = require("tvm", "the scheduled TVM pipeline")
    return _pipeline(tvm, target, database)


def compile_scheduled(mod, target, database=None):
    """``tvm.compile`` with :func:`pipeline` (heuristic schedules; tuned ones from ``database`` where it has them)."""
    tvm = require("tvm", "the scheduled TVM pipeline")
    return tvm.compile(mod, target=target, relax_pipeline=pipeline(target, database))


def _apply_database(tvm, database):
    """MetaScheduleApplyDatabase, then every function it replaced marked scheduled (so the heuristic pass skips it)."""
    from tvm import relax

    @tvm.transform.module_pass(opt_level=0, name="EdgekitApplyTuned")
    def _pass(mod, _ctx):
        before = dict(mod.functions.items())
        with database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        for gv, func in list(mod.functions.items()):
            if isinstance(func, tvm.tirx.PrimFunc) and gv in before and not func.same_as(before[gv]):
                mod[gv] = func.with_attr(SCHEDULED, True)
        return mod

    return _pass


def _pipeline(tvm, target, database=None):
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0, name="EdgekitScheduledPipeline")
    def _run(mod, _ctx):
        with target:
            tuned = [_apply_database(tvm, database)] if database is not None else []
            passes = (prepare_passes(target) + tuned + [_schedule_pass(tvm)]
                      + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))
            return tvm.transform.Sequential(passes)(mod)

    return _run
