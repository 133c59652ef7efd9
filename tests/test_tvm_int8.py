"""Integer matmuls on the VNNI kernel and isolated integer divisions in TVM builds (exporters/tvm_int8.py):
exact against NumPy's int64 arithmetic for each operand form, zero point and padding."""

from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from edgekit.exporters import tvm_int8  # noqa: E402
from edgekit.exporters.tvm import host_target  # noqa: E402
from edgekit.exporters.tvm_schedule import compile_scheduled  # noqa: E402

needs_vnni = pytest.mark.skipif(not tvm_int8.has_vnni(host_target()),
                                reason="this CPU has no AVX-512 VNNI: the matmul rewrite is not applied without it")


def _widened(x, z: int):
    """``astype(x, int32) - z`` as TVM's ONNX importer writes MatMulInteger's operands."""
    return relax.op.subtract(relax.op.astype(x, "int32"), relax.op.expand_dims(relax.const(np.array([z], "int32")), axis=[-1]))


def _run(mod, *arrays):
    vm = relax.VirtualMachine(compile_scheduled(mod, host_target()), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(a) for a in arrays)).numpy()


def _weight_module(shape, w, z):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(shape, "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(_widened(x, z) if z else relax.op.astype(x, "int32"),
                                        relax.op.astype(relax.const(w), "int32"), out_dtype="int32"))
            out = bb.emit_output(relax.op.add(y, relax.const(np.int32(5))))
        bb.emit_func_output(out)
    return bb.get()


@needs_vnni
@pytest.mark.parametrize("shape,n,z", [((1, 7, 8), 16, 128), ((2, 5, 12), 20, 0), ((3, 64), 33, 17)])
def test_weight_matmul_on_vnni_kernel_is_exact(shape, n, z):
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (shape[-1], n)).astype(np.int8)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    mod = _weight_module(shape, w, z)
    rewritten, count = tvm_int8.rewrite_integer_graph(mod, host_target())
    assert count["matmuls"] == 1
    assert any(str(gv.name_hint).startswith("vnni_matmul") for gv in rewritten.get_global_vars())
    ref = ((x.astype(np.int64) - z) @ w.astype(np.int64) + 5).astype(np.int32)
    np.testing.assert_array_equal(_run(mod, x), ref)  # compile_scheduled rewrites and tensorizes


@needs_vnni
@pytest.mark.parametrize("b,h,m,k,n,za", [(1, 3, 9, 64, 11, 128), (1, 2, 7, 13, 16, 0), (2, 1, 5, 6, 3, 9)])
def test_activation_matmul_on_vnni_kernel_is_exact(b, h, m, k, n, za):
    """Both operands activations (Q.K^T, A.V): the right one shifted to int8, packed at run time, its column
    sums subtracted for the left zero point; inner and column dimensions padded where not multiples of 4 / 16."""
    rng = np.random.default_rng(1)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((b, h, m, k), "uint8"))
    y = relax.Var("y", relax.TensorType((b, h, k, n), "uint8"))
    with bb.function("main", [x, y]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(_widened(x, za) if za else relax.op.astype(x, "int32"),
                                                 _widened(y, 128), out_dtype="int32"))
        bb.emit_func_output(out)
    mod = bb.get()
    assert tvm_int8.rewrite_integer_graph(mod, host_target())[1]["matmuls"] == 1
    xa = rng.integers(0, 256, (b, h, m, k)).astype(np.uint8)
    ya = rng.integers(0, 256, (b, h, k, n)).astype(np.uint8)
    ref = ((xa.astype(np.int64) - za) @ (ya.astype(np.int64) - 128)).astype(np.int32)
    np.testing.assert_array_equal(_run(mod, xa, ya), ref)


def test_other_matmuls_are_left_alone():
    """A right operand with another zero point (its int8 shift would overflow) or a float matmul: unchanged."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "uint8"))
    y = relax.Var("y", relax.TensorType((8, 16), "uint8"))
    f = relax.Var("f", relax.TensorType((4, 8), "float32"))
    with bb.function("main", [x, y, f]):
        with bb.dataflow():
            a = bb.emit(relax.op.matmul(_widened(x, 128), _widened(y, 3), out_dtype="int32"))
            c = bb.emit(relax.op.matmul(f, relax.const(np.ones((8, 16), "float32"))))
            out = bb.emit_output(relax.op.add(relax.op.astype(a, "float32"), c))
        bb.emit_func_output(out)
    mod = bb.get()
    assert tvm_int8.rewrite_integer_graph(mod, host_target())[1] == {"matmuls": 0, "divisions": 0, "constant_divisions": 0, "tables": 0}


def test_runtime_integer_division_is_a_kernel_of_its_own():
    """``c / rowsum`` broadcast into a row: computed once per row in an opaque kernel, not once per element
    inside the fused consumer; results as TVM's integer division (truncation)."""
    rng = np.random.default_rng(2)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 5, 7), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            s = bb.emit(relax.op.sum(x, axis=[-1], keepdims=True))
            q = bb.emit(relax.op.divide(relax.const(np.int32(1 << 20)), s))
            r = bb.emit(relax.op.divide(x, relax.const(np.int32(4))))  # by a constant: stays fused
            out = bb.emit_output(relax.op.add(relax.op.multiply(x, q), r))
        bb.emit_func_output(out)
    mod = bb.get()
    rewritten, count = tvm_int8.rewrite_integer_graph(mod, host_target())
    assert count == {"matmuls": 0, "divisions": 1, "constant_divisions": 1, "tables": 0}
    opaque = [f for f in rewritten.functions.values() if isinstance(f, tvm.tirx.PrimFunc)
              and int((f.attrs or {}).get("op_pattern", -1)) == tvm_int8.OPAQUE]
    assert len(opaque) == 1
    xa = rng.integers(1, 100, (3, 5, 7)).astype(np.int32)
    ref = xa * ((1 << 20) // xa.sum(-1, keepdims=True)) + xa // 4
    np.testing.assert_array_equal(_run(mod, xa), ref)


def test_pack_weight_layout():
    """Bp[n // 16, k // 4, n % 16, k % 4] == W[k, n]; padded columns are zero."""
    w = np.arange(8 * 20, dtype=np.int64).reshape(8, 20) % 251 - 125
    bp = tvm_int8.pack_weight(w.astype(np.int8))
    assert bp.shape == (2, 2, 16, 4)
    for k in range(8):
        for n in range(32):
            assert bp[n // 16, k // 4, n % 16, k % 4] == (w[k, n] if n < 20 else 0)


def test_table_lookup_is_an_injective_kernel():
    """``gather_elements`` of a 1-D table (with the importer's negative-index normalization before it) becomes
    an injective kernel fused with its neighbours: no opaque gather kernel is left; values as the gather."""
    rng = np.random.default_rng(3)
    table = (rng.integers(-1000, 1000, 256)).astype(np.int32)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 50), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            flat = bb.emit(relax.op.reshape(x, (200,)))
            idx = bb.emit(relax.op.where(relax.op.less(flat, relax.const(np.int32(0))),
                                         relax.op.add(flat, relax.const(np.int32(256))), flat))
            g = bb.emit(relax.op.gather_elements(relax.const(table), idx, axis=0))
            out = bb.emit_output(relax.op.multiply(relax.op.reshape(g, (4, 50)), relax.const(np.int32(3))))
        bb.emit_func_output(out)
    mod = bb.get()
    rewritten, count = tvm_int8.rewrite_integer_graph(mod, host_target())
    assert count["tables"] == 1
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    with host_target():
        fused = tvm.transform.Sequential(cpu.legalize_passes(host_target()))(rewritten)
    names = [gv.name_hint for gv, f in fused.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert not any("gather" in n for n in names), names
    # reshape, index normalization, lookup and multiply in one kernel
    assert any(n.startswith("fused_") and "where_table_lookup" in n and "multiply" in n for n in names), names
    xa = rng.integers(-256, 256, (4, 50)).astype(np.int32)
    np.testing.assert_array_equal(_run(mod, xa), table[np.where(xa < 0, xa + 256, xa)] * 3)


@pytest.mark.parametrize("c", [4, 3, -8])
def test_constant_division_keeps_the_semantics(c):
    """A division by a constant written with the constant in the code (vector shifts / multiplies) gives what
    Relax's own division gives, negative dividends included."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 64), "int32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.divide(relax.op.add(x, relax.const(np.int32(1))),
                                                 relax.const(np.array([c], "int32"))))
        bb.emit_func_output(out)
    mod = bb.get()
    assert tvm_int8.rewrite_integer_graph(mod, host_target())[1]["constant_divisions"] == 1
    xa = np.random.default_rng(4).integers(-1000, 1000, (2, 64)).astype(np.int32)
    plain = relax.VirtualMachine(tvm.compile(mod, target=host_target()), tvm.cpu())["main"](tvm.runtime.tensor(xa)).numpy()
    np.testing.assert_array_equal(_run(mod, xa), plain)
    np.testing.assert_array_equal(plain, np.trunc((xa + 1) / c).astype(np.int32))  # truncation, as ONNX Div
