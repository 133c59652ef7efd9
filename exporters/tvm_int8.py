"""Integer matmuls on the x86 VNNI dot-product instruction, and integer divisions kept out of fused loops, in
TVM Relax builds of integer graphs (the I-ViT integer-only graph of :mod:`edgekit.quant.ivit.onnx_export`).

TVM's ONNX importer writes ``MatMulInteger`` as an int32 x int32 ``matmul`` of both operands widened with
``astype`` (zero points subtracted after the widening). Compiled as written, every product is an int32 multiply:
MetaSchedule's VNNI rule looks for a uint8 x int8 block to tensorize and finds none, so the integer-only ViT's
matmuls ran at a fraction of the fp32 ones' speed. :func:`rewrite_integer_graph` rewrites

* ``A @ W`` with ``A`` a widened uint8 tensor (zero point ``z``) and ``W`` a widened int8 constant (weights) into
  ``A @ W - z * colsum(W)`` (the correction a constant);
* ``A @ B`` with ``B`` a widened uint8 activation whose zero point is 128 (``Q.K^T``, ``A.V``) into
  ``A @ B8 - z * colsum(B8)`` with ``B8 = B - 128`` in int8 (exact: it spans [-128, 127]), packed at run time;

where ``A @ W`` is one TIR kernel (:func:`matmul_kernel`) reading its right operand packed as
``[N/16, K/4, 16, 4]``: the operand layout of the 16 x 4 dot-product intrinsic (``vpdpbusd``: 16 int32 lanes,
each adding four uint8 x int8 products, without saturation), so MetaSchedule's VNNI rule tensorizes it, and
:func:`schedule_kernel` does at zero trials. The rewrite is exact: int32 addition and multiplication wrap modulo
2**32 in both forms, and ``(a - z) . w = a . w - z * sum(w)`` holds in that ring. Columns are padded to a
multiple of 16 (the padding sliced off), and an activation operand's inner dimension to a multiple of 4, with
zeros; a weight whose inner dimension is not a multiple of 4, or an operand of another form, is left as it was.
Applied only where the target has ``avx512vnni``: without it MetaSchedule's fallback for the same block is
``pmaddubsw``, whose int16 pair sums saturate (255 * 127 * 2 > 32767), which would change results.

The same pass puts each integer division by a computed tensor with few results (at most ``SMALL_QUOTIENT``:
Shiftmax's ``c / rowsum``, I-LayerNorm's Newton steps) into a kernel of its own: fused, the per-row quotient is inlined into its broadcast
consumer and recomputed for every element (an integer division does not vectorize).

Integer divisions by a constant (the dyadic requantizations' ``/ 2**k``) are written with the constant in the
code: Relax passes a tensor constant to the fused kernel as a buffer, and a division by a value unknown at
compile time costs one scalar ``idiv`` per element (x86 has no vector integer division), where a known divisor
compiles to vector shifts or multiplies.

Table lookups (``gather_elements`` of a 1-D table at 1-D indices: I-ViT's Shiftmax exponential, ShiftGELU,
8-bit rescales) become an injective kernel: Relax marks every gather opaque, so each lookup ran alone in
serial loops, with the importer's normalization of negative indices as one more kernel before it.

TVM 0.27's ``dot_16x4_vnni`` implementation passes the ``vpdpbusd`` operands as ``<16 x i32>`` while LLVM 20
and later declare them ``<64 x i8>`` (module verification fails on every candidate); :func:`register_intrinsic`
registers the same description with an implementation in LLVM's current types, under the same name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.backends import require

OPAQUE = 8  # relax OpPatternKind kOpaque: FuseOps leaves the kernel alone (as tvm_schedule.OPAQUE)
INJECTIVE = 2  # relax OpPatternKind kInjective: fused with its producers and consumers
SMALL_QUOTIENT = 4096  # an integer division with at most this many results gets a kernel of its own

__all__ = ["has_vnni", "register_intrinsic", "rewrite_integer_graph", "pack_weight",
           "matmul_kernel", "table_kernel"]

LANES, GROUP = 16, 4  # the intrinsic's int32 lanes and the uint8 x int8 products each lane adds
_registered = False


def has_vnni(target) -> bool:
    """Whether ``target`` (an llvm Target) has the AVX-512 VNNI dot product."""
    if target is None or target.kind.name != "llvm":
        return False
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features("avx512vnni", target))
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe: no VNNI
        return False


def register_intrinsic() -> None:
    """Register ``dot_16x4_vnni`` in LLVM's operand types where the LLVM TVM was built with is 20 or newer."""
    global _registered
    if _registered:
        return
    tvm = require("tvm", "TVM VNNI kernels")
    if tvm.target.codegen.llvm_version_major() < 20:
        _registered = True
        return
    from tvm.s_tir import TensorIntrin
    from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((4,), "uint8", offset_factor=1), B: T.Buffer((16, 4), "int8", offset_factor=1),
             C: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            a4 = T.reinterpret(A.vload([0], "uint8x4"), dtype="int32")
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"), C.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a4, 16), dtype="uint8x64"), B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    TensorIntrin.register(VNNI_DOT_16x4_INTRIN, dot_product_16x4_u8i8i32_desc, impl, override=True)
    _registered = True


def pack_weight(w: np.ndarray) -> np.ndarray:
    """int8 ``[K, N]`` (K a multiple of 4) -> ``[ceil(N/16), K/4, 16, 4]``, columns padded with zeros."""
    k, n = w.shape
    np_ = -(-n // LANES) * LANES
    wp = np.zeros((k, np_), dtype=np.int8)
    wp[:, :n] = w
    return np.ascontiguousarray(wp.reshape(k // GROUP, GROUP, np_ // LANES, LANES).transpose(2, 0, 3, 1))


def matmul_kernel(tvm, lead: tuple[int, ...], k: int, n_padded: int, b_batch: int = 0):
    """TIR ``C[..., n] = sum_k int32(A[..., k]) * int32(Bp[n/16, k/4, n%16, k%4])`` (A uint8 ``lead + (k,)``,
    Bp int8; with ``b_batch`` > 0 Bp also has A's first ``b_batch`` dimensions), index type int64 as Relax's."""
    from tvm import te

    i64 = lambda *dims: tuple(tvm.tirx.IntImm("int64", int(d)) for d in dims)  # noqa: E731
    a = te.placeholder(i64(*lead, k), "uint8", name="A")
    bp = te.placeholder(i64(*lead[:b_batch], n_padded // LANES, k // GROUP, LANES, GROUP), "int8", name="Bp")
    r = te.reduce_axis(i64(0, k), name="k")

    def body(*idx):
        *rows, j = idx
        w = bp[(*rows[:b_batch], j // LANES, r // GROUP, j % LANES, r % GROUP)]
        return te.sum(a[(*rows, r)].astype("int32") * w.astype("int32"), axis=r)

    c = te.compute(i64(*lead, n_padded), body, name="C")
    return te.create_prim_func([a, bp, c]).with_attr("op_pattern", 4)  # out-ewise fusable: the epilogue fuses


def table_kernel(tvm, n: int, dtype: str, m: int, index_dtype: str):
    """TIR ``out[i] = table[idx[i]]`` (``table`` of ``n`` ``dtype`` values, ``m`` indices already in range, as
    ``gather_elements`` requires after the importer's normalization of negative ones), marked injective."""
    from tvm import te

    i64 = lambda *dims: tuple(tvm.tirx.IntImm("int64", int(d)) for d in dims)  # noqa: E731
    table = te.placeholder(i64(n), dtype, name="table")
    idx = te.placeholder(i64(m), index_dtype, name="idx")
    out = te.compute(i64(m), lambda i: table[idx[i].astype("int64")], name="lookup")
    return te.create_prim_func([table, idx, out]).with_attr("op_pattern", INJECTIVE)


# ----------------------------------------------------------------------------------------------- the pass


def _const_value(mut, expr) -> np.ndarray | None:
    """The value of ``expr`` if it is a constant, possibly behind variables, ``astype``, ``expand_dims`` and
    ``reshape`` (how the importer writes zero points and weights); else None."""
    import tvm
    from tvm import relax

    for _ in range(8):
        if isinstance(expr, relax.Var):
            bound = mut.lookup_binding(expr)
            if bound is None:
                return None
            expr = bound
            continue
        if isinstance(expr, tvm.ir.expr.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") == "relax.astype":
            inner = _const_value(mut, expr.args[0])
            return None if inner is None else inner.astype(str(expr.attrs.dtype))
        if isinstance(expr, relax.Call) and getattr(expr.op, "name", "") in ("relax.expand_dims", "relax.reshape"):
            inner = _const_value(mut, expr.args[0])
            return None if inner is None else inner.reshape([int(s) for s in expr.ty.shape])
        return None
    return None


def _bound(mut, expr):
    """What a variable is bound to, through variable-to-variable bindings (``expr`` itself if unbound)."""
    from tvm import relax

    while isinstance(expr, relax.Var):
        b = mut.lookup_binding(expr)
        if b is None:
            return expr
        expr = b
    return expr


def _call_name(expr) -> str:
    from tvm import relax

    return expr.op.name if isinstance(expr, relax.Call) and hasattr(expr.op, "name") else ""


def _widened_u8(mut, expr) -> tuple[Any, int] | None:
    """``(a, z)`` where ``expr`` is ``astype(a, int32)`` or ``astype(a, int32) - z`` with ``a`` uint8 and ``z`` a
    constant (one value); else None."""
    call = _bound(mut, expr)
    z = 0
    if _call_name(call) == "relax.subtract":
        zv = _const_value(mut, call.args[1])
        if (zv is None or zv.size == 0 or not np.all(zv == zv.flat[0])
                or [int(d) for d in call.ty.shape] != [int(d) for d in call.args[0].ty.shape]):
            return None  # a zero point per row or column, or one that broadcasts the operand to a larger shape
        z = int(zv.flat[0])
        call = _bound(mut, call.args[0])
    if _call_name(call) != "relax.astype" or str(call.attrs.dtype) != "int32":
        return None
    src = call.args[0]
    return (src, z) if str(src.ty.dtype) == "uint8" else None


def _int8_weight(mut, expr) -> np.ndarray | None:
    """The int8 ``[K, N]`` weight behind ``expr`` (a constant widened to int32, or an int32 constant whose values
    fit int8); else None."""
    w = _const_value(mut, expr)
    if w is None or w.ndim != 2 or not np.issubdtype(w.dtype, np.integer):
        return None
    if w.size and (w.min() < -128 or w.max() > 127):
        return None
    return w.astype(np.int8)


def _ceil(x: int, m: int) -> int:
    return -(-x // m) * m


def rewrite_integer_graph(mod, target):
    """``mod`` with its integer matmuls on the packed VNNI kernel, its runtime-divisor integer divisions in
    kernels of their own and its 1-D table lookups injective (see the module docstring); ``mod`` itself where
    nothing applies. Returns ``(mod, {"matmuls": n, "divisions": n, "constant_divisions": n, "tables": n})``."""
    tvm = require("tvm", "TVM VNNI kernels")
    from tvm import relax, topi
    from tvm.relax.expr_functor import PyExprMutator, mutator

    vnni = has_vnni(target)
    if vnni:
        register_intrinsic()
    count = {"matmuls": 0, "divisions": 0, "constant_divisions": 0, "tables": 0}

    @mutator
    class _Rewrite(PyExprMutator):
        def __init__(self, m) -> None:
            super().__init__(m)
            self.m = m

        def run(self):
            for gv, func in self.m.functions_items():
                if isinstance(func, relax.Function):
                    self.builder_.update_func(gv, self.visit_expr(func))
            return self.builder_.get()

        def emit(self, expr):
            return self.builder_.emit(expr)

        def visit_call_(self, call):
            call = super().visit_call_(call)
            name = _call_name(call)
            if name == "relax.divide":
                return self.division(call)
            if name == "relax.gather_elements":
                return self.table(call)
            if vnni and name == "relax.matmul" and str(call.attrs.out_dtype) == "int32":
                return self.matmul(call)
            return call

        def division(self, call):
            """An integer division by a computed tensor (a row's sum, a square root) giving a few values as a
            kernel of its own: fused, it is inlined into its broadcast consumer and recomputed for every element
            of the row. A large quotient (as many divisions as elements anyway) stays fused."""
            if not str(call.ty.dtype).startswith(("int", "uint")):
                return call
            c = _const_value(self, call.args[1])
            if c is not None:
                return self.constant_division(call, c)
            if int(np.prod([int(d) for d in call.ty.shape])) > SMALL_QUOTIENT:
                return call
            count["divisions"] += 1
            return self.builder_.call_te(topi.divide, call.args[0], call.args[1], primfunc_name_hint="int_divide",
                                         primfunc_attrs={"op_pattern": OPAQUE})

        def constant_division(self, call, c: np.ndarray):
            """An integer division by a constant with one value (the dyadic requantizations' ``/ 2**k``) with
            that value in the code: as Relax passes it, the constant is a buffer argument of the fused kernel,
            and a division by a value unknown at compile time is one scalar ``idiv`` per element (x86 has no
            vector integer division); by a known one, LLVM emits vector shifts or multiplies."""
            x = call.args[0]
            if (c.size == 0 or not np.all(c == c.flat[0]) or int(c.flat[0]) == 0
                    or [int(d) for d in x.ty.shape] != [int(d) for d in call.ty.shape]):
                return call
            dtype = str(call.ty.dtype)
            count["constant_divisions"] += 1
            return self.builder_.call_te(topi.divide, x, tvm.tirx.const(int(c.flat[0]), dtype),
                                         primfunc_name_hint="divide_by_const")

        def table(self, call):
            """A 1-D table read at 1-D indices (``gather_elements``, axis 0) as an injective kernel: Relax marks
            gathers opaque, so each lookup ran alone in serial loops and its index normalization in a kernel of
            its own; injective, both fuse with their neighbours and are parallelized and vectorized."""
            data, idx = call.args
            if len(data.ty.shape) != 1 or len(idx.ty.shape) != 1 or int(call.attrs.axis) != 0:
                return call
            n, m = int(data.ty.shape[0]), int(idx.ty.shape[0])
            func = table_kernel(tvm, n, str(data.ty.dtype), m, str(idx.ty.dtype))
            name = f"table_lookup_{n}x{m}"
            gv = self.builder_.add_func(func.with_attr("global_symbol", name), name)
            count["tables"] += 1
            return relax.call_tir(gv, [data, idx], relax.TensorType((m,), str(data.ty.dtype)))

        def kernel(self, a, bp, lead, k, n_pad, b_batch):
            func = matmul_kernel(tvm, tuple(lead), k, n_pad, b_batch)
            name = "vnni_matmul_" + "x".join(str(d) for d in (*lead, k, n_pad))
            gv = self.builder_.add_func(func.with_attr("global_symbol", name), name)
            return relax.call_tir(gv, [a, bp], relax.TensorType((*lead, n_pad), "int32"))

        def matmul(self, call):
            left = _widened_u8(self, call.args[0])
            if left is None:
                return call
            a, z = left
            shape = [int(s) for s in a.ty.shape]
            w = _int8_weight(self, call.args[1])
            if w is not None:  # A (uint8) @ W (int8 constant)
                k, n = w.shape
                if len(shape) < 2 or shape[-1] != k or k % GROUP:
                    return call
                wp = pack_weight(w)
                n_pad = wp.shape[0] * LANES
                y = self.kernel(a, relax.const(wp), shape[:-1], k, n_pad, 0)
                colsum = w.astype(np.int64).sum(0)
            else:  # A (uint8) @ B (uint8 with zero point 128): two activations
                right = _widened_u8(self, call.args[1])
                bshape = [int(s) for s in call.args[1].ty.shape]
                if (right is None or right[1] != 128 or len(shape) < 2 or len(bshape) != len(shape)
                        or bshape[:-2] != shape[:-2] or bshape[-2] != shape[-1]):
                    return call
                k, n, nb = shape[-1], bshape[-1], len(shape) - 2
                kp, n_pad = _ceil(k, GROUP), _ceil(n, LANES)
                b8 = self.emit(relax.op.astype(relax.op.subtract(relax.op.astype(right[0], "int32"),
                                                                 relax.const(np.int32(128))), "int8"))
                bpad = b8
                if kp != k or n_pad != n:
                    bpad = self.emit(relax.op.nn.pad(b8, [0, 0] * nb + [0, kp - k, 0, n_pad - n], pad_value=0))
                if kp != k:
                    a = self.emit(relax.op.nn.pad(a, [0, 0] * (nb + 1) + [0, kp - k], pad_value=0))
                bp = relax.op.permute_dims(relax.op.reshape(bpad, (*shape[:-2], kp // GROUP, GROUP, n_pad // LANES, LANES)),
                                           axes=[*range(nb), nb + 2, nb, nb + 3, nb + 1])
                y = self.kernel(a, self.emit(bp), shape[:-1], kp, n_pad, nb)
                colsum = relax.op.sum(relax.op.astype(b8, "int32"), axis=[-2], keepdims=True) if z else None
            if n_pad != n:
                y = relax.op.strided_slice(self.emit(y), axes=[len(shape) - 1], begin=[0], end=[n])
            if z:
                corr = (relax.const((z * colsum).astype(np.int32)) if isinstance(colsum, np.ndarray)
                        else relax.op.multiply(self.emit(colsum), relax.const(np.int32(z))))
                y = relax.op.subtract(self.emit(y), corr)
            count["matmuls"] += 1
            return y

    out = _Rewrite(mod).run()
    changed = any(count.values())
    return (relax.transform.DeadCodeElimination()(out) if changed else mod), count


# ----------------------------------------------------------------------------------------------- zero-trial schedule

ROWS, COL_BLOCKS = 4, 4  # register tile of the zero-trial schedule: 4 rows x 4 x 16 columns (16 accumulators)


def is_kernel_block(sch, blk) -> bool:
    """Whether ``blk`` is the reduction of :func:`matmul_kernel` (uint8 rows against the packed int8 operand)."""
    block = sch.get(blk)
    if len(block.iter_vars) < 3 or int(block.iter_vars[-1].iter_type) != 2 or len(block.reads) != 2:
        return False
    (a, bp), c = (r.source for r in block.reads), block.writes[0].source
    shape = [int(s) for s in bp.shape]
    return (str(a.dtype) == "uint8" and str(bp.dtype) == "int8" and str(c.dtype) == "int32" and len(shape) >= 4
            and shape[-2:] == [LANES, GROUP])


def schedule_kernel(sch, blk) -> None:
    """Tile :func:`matmul_kernel`'s block for the VNNI intrinsic: row tiles x column blocks in parallel, the
    reduction in steps of 4 outside a register tile of ROWS x COL_BLOCKS 16-lane accumulators, the 16 x 4 dot
    product tensorized."""
    from tvm.s_tir.tensor_intrin.x86 import VNNI_DOT_16x4_INTRIN

    register_intrinsic()
    *rows, j, k = sch.get_loops(blk)
    i = sch.fuse(*rows) if len(rows) > 1 else rows[0]
    n_blocks = int(sch.get(j).extent) // LANES
    cb = next(d for d in (COL_BLOCKS, 3, 2, 1) if n_blocks % d == 0)
    rows = next(d for d in (ROWS, 3, 2, 1) if int(sch.get(i).extent) % d == 0)  # perfect tiles: no predicate
    jo, ji = sch.split(j, [None, LANES])
    ko, ki = sch.split(k, [None, GROUP])
    sch.reorder(ko, ji, ki)
    dot = sch.blockize(ji, preserve_unit_iters=True)  # the 16 x 4 dot product: one block over (i, jo, ko)
    io, ii = sch.split(i, [None, rows])
    joo, joi = sch.split(jo, [None, cb])
    sch.reorder(io, joo, ko, ii, joi)
    sch.parallel(sch.fuse(io, joo))
    sch.decompose_reduction(dot, ko)
    sch.tensorize(dot, VNNI_DOT_16x4_INTRIN, preserve_unit_iters=True)
    sch.unroll(joi)
    sch.unroll(ii)
