"""A whole BiViT W1A1 model compiled by TVM with its binary arithmetic on bit-packed XNOR / AND-popcount
kernels ("BiViT: Extremely Compressed Binary Vision Transformers", He et al., ICCV 2023; the XNOR-popcount
formulation of XNOR-Net, Rastegari et al., ECCV 2016).

The frozen model is traced with ``torch.fx`` (binary modules as leaves) and imported with TVM's FX frontend,
whose converter table gets three entries of ours:

* :class:`BinaryLinear` (1-bit activations): one TIR kernel that subtracts the threshold, takes the row scale
  ``mean|x|``, packs the activation signs 64 to a uint64 word, and computes
  ``(K - 2 popcount(x XOR w)) * scale * alpha + bias`` against the weights stored packed (uint64 constants: the
  1-bit weights are 1 bit each inside the library).
* :class:`BinaryMatMul` ``Q.K^T`` (both operands binarized): the same XNOR-popcount on packed rows of Q and K.
* :class:`BinaryMatMul` ``A.V`` after a softmax-aware :class:`BinarySoftmax`: the 0/1 map is packed from the
  scores (``s - rowmax s >= ln ratio``) and ``A.sign(V) = 2 popcount(A AND v+) - popcount(A)``, then the
  column scale and the division by the row's count, as the PyTorch module does.

Everything else (patch embedding, LayerNorm, GELU, residual adds, head) runs in fp32 through TVM's default
Relax pipeline plus :mod:`edgekit.exporters.tvm_schedule` (parallel outer loops, vectorised inner ones, erf
by TVM's fast approximation; no tuning: the same pipeline :func:`~edgekit.exporters.tvm_schedule.compile_scheduled`
gives an fp32 model, so a comparison gives both sides the same zero-trial budget). A patch
embedding convolution with stride equal to its kernel is imported as patchify + matmul. Binary modules in any
other configuration (8-bit activations, an A.V whose map is not a BinarySoftmax's) are refused with the layer
name. Numerics: the +-1 products are exact integers in both; the float epilogues keep PyTorch's order, so the
outputs agree to float rounding except where a rounding difference flips an activation sign (:func:`compare`
measures it).
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from edgekit.backends import require
from edgekit.errors import UserInputError
from edgekit.quant.bivit.modules import BinaryLinear, BinaryMatMul, BinarySoftmax
from edgekit.quant.bivit.xnor import layer_operands

__all__ = ["Built", "build", "load", "compare"]

from edgekit.exporters.tvm_schedule import OPAQUE, VEC


@dataclass
class Built:
    """A compiled BiViT model: the Relax executable and what its binary part stores."""

    executable: Any
    storage: dict[str, int] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the library (``tvm.runtime.load_module``-able ``.so``; the packed weights are inside)."""
        import os

        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.so")
        try:
            self.executable.export_library(str(tmp))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path


# ----------------------------------------------------------------------------------------------- kernels


def _pack(te, tvm, x_at: Callable, rows: tuple[int, ...], k: int, name: str, bit: Callable | None = None):
    """``rows + (words,)`` uint64: bit ``b`` of word ``w`` is ``bit(x_at(*r, 64 w + b))`` (``>= 0`` by default),
    padding bits 0."""
    words = (k + 63) // 64
    b = te.reduce_axis((0, 64), name=f"{name}_b")
    one, zero = tvm.tirx.const(1, "uint64"), tvm.tirx.const(0, "uint64")
    test = bit or (lambda v: v >= tvm.tirx.const(0, "float32"))

    def body(*idx):
        *r, w = idx
        kk = w * 64 + b
        safe = tvm.tirx.min(kk, k - 1)
        return te.sum(tvm.tirx.if_then_else(tvm.tirx.all(kk < k, test(x_at(*r, safe))), one << b.astype("uint64"), zero),
                      axis=b)

    return te.compute((*rows, words), body, name=name)


def _popcount_sum(te, a, b_at: Callable, words: int, name: str, op: str):
    r = te.reduce_axis((0, words), name=f"{name}_w")
    comb = (lambda u, v: u ^ v) if op == "xor" else (lambda u, v: u & v)
    return lambda *idx: te.sum(te.popcount(comb(a(*idx[:-1], r), b_at(*idx, r))).astype("int32"), axis=r)


def _linear_func(tvm, m: int, k: int, n: int):
    """TIR: ``x (m, k) f32, shift (k), wt (words, n) u64, alpha (n), bias (n) -> y (m, n)``."""
    te = tvm.te
    words = (k + 63) // 64
    X = te.placeholder((m, k), "float32", name="X")
    SH = te.placeholder((k,), "float32", name="SH")
    WT = te.placeholder((words, n), "uint64", name="WT")
    AL = te.placeholder((n,), "float32", name="AL")
    BI = te.placeholder((n,), "float32", name="BI")
    XS = te.compute((m, k), lambda i, c: X[i, c] - SH[c], name="XS")
    rk = te.reduce_axis((0, k), name="rk")
    S = te.compute((m,), lambda i: te.sum(te.abs(XS[i, rk]), axis=rk), name="S")
    XB = _pack(te, tvm, lambda i, c: XS[i, c], (m,), k, "XB")
    D = te.compute((m, n), _popcount_sum(te, lambda i, w: XB[i, w], lambda i, j, w: WT[w, j], words, "D", "xor"), name="D")
    Y = te.compute((m, n), lambda i, j: (k - 2 * D[i, j]).astype("float32") * (S[i] / float(k)) * AL[j] + BI[j], name="Y")
    return te.create_prim_func([X, SH, WT, AL, BI, Y]), n


def _qk_func(tvm, g: int, t: int, d: int, t2: int, scale: float | None = None):
    """TIR: ``sign(a) (g, t, d) @ sign(b) (g, d, t2)`` times the row scale of ``a`` and column scale of ``b``
    (then times ``scale``, the attention's ``* head_dim**-0.5`` that follows in the model, when given)."""
    te = tvm.te
    words = (d + 63) // 64
    A = te.placeholder((g, t, d), "float32", name="A")
    B = te.placeholder((g, d, t2), "float32", name="B")
    ra = te.reduce_axis((0, d), name="ra")
    rb = te.reduce_axis((0, d), name="rb")
    SA = te.compute((g, t), lambda h, i: te.sum(te.abs(A[h, i, ra]), axis=ra), name="SA")
    SB = te.compute((g, t2), lambda h, j: te.sum(te.abs(B[h, rb, j]), axis=rb), name="SB")
    AB = _pack(te, tvm, lambda h, i, c: A[h, i, c], (g, t), d, "AB")
    BB = _pack(te, tvm, lambda h, j, c: B[h, c, j], (g, t2), d, "BB")
    D = te.compute((g, t, t2), _popcount_sum(te, lambda h, i, w: AB[h, i, w], lambda h, i, j, w: BB[h, j, w], words, "D", "xor"),
                   name="D")
    def y(h, i, j):
        v = (d - 2 * D[h, i, j]).astype("float32") * (SA[h, i] / float(d)) * (SB[h, j] / float(d))
        return v * tvm.tirx.const(scale, "float32") if scale is not None else v

    Y = te.compute((g, t, t2), y, name="Y")
    return te.create_prim_func([A, B, Y]), t2


def _av_func(tvm, g: int, t: int, t2: int, d: int, log_ratio: float):
    """TIR: scores (g, t, t2) -> 0/1 map ``s - rowmax s >= log_ratio`` packed; ``v (g, t2, d)``; output
    ``(map @ sign(v)) * mean|v| (over t2) / max(1, row count)``."""
    te = tvm.te
    words = (t2 + 63) // 64
    S = te.placeholder((g, t, t2), "float32", name="S")
    V = te.placeholder((g, t2, d), "float32", name="V")
    rm = te.reduce_axis((0, t2), name="rm")
    MX = te.compute((g, t), lambda h, i: te.max(S[h, i, rm], axis=rm), name="MX")
    thr = tvm.tirx.const(log_ratio, "float32")
    AB = _pack(te, tvm, lambda h, i, c: S[h, i, c] - MX[h, i], (g, t), t2, "AB", bit=lambda v: v >= thr)
    VB = _pack(te, tvm, lambda h, c, j: V[h, j, c], (g, d), t2, "VB")
    rv = te.reduce_axis((0, t2), name="rv")
    SV = te.compute((g, d), lambda h, c: te.sum(te.abs(V[h, rv, c]), axis=rv), name="SV")
    rc = te.reduce_axis((0, words), name="rc")
    CNT = te.compute((g, t), lambda h, i: te.sum(te.popcount(AB[h, i, rc]).astype("int32"), axis=rc), name="CNT")
    P = te.compute((g, t, d), _popcount_sum(te, lambda h, i, w: AB[h, i, w], lambda h, i, c, w: VB[h, c, w], words, "P", "and"),
                   name="P")
    Y = te.compute((g, t, d), lambda h, i, c: (2 * P[h, i, c] - CNT[h, i]).astype("float32") * (SV[h, c] / float(t2))
                   / tvm.tirx.max(CNT[h, i].astype("float32"), tvm.tirx.const(1.0, "float32")), name="Y")
    return te.create_prim_func([S, V, Y]), d


def _schedule_kernel(tvm, func, n: int):
    """Our kernels: the packing / scale stages inlined or parallel over rows, the popcount GEMM with its
    output columns vectorised when they split into vectors, the epilogue fused into it."""
    sch = tvm.s_tir.Schedule(func)
    for name in ("XS",):
        try:
            sch.compute_inline(sch.get_sblock(name))
        except Exception:  # noqa: BLE001 - not in this kernel
            pass
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    for blk in blocks:
        name = sch.get(blk).name_hint
        if name in ("D", "P", "Y"):
            continue
        loops = sch.get_loops(blk)
        sch.parallel(loops[0] if sch.get(loops[0]).extent > 1 or len(loops) == 1 else loops[1])
    out = "D" if _has(sch, "D") else "P"
    d = sch.get_sblock(out)
    loops = sch.get_loops(d)
    *sp, j, r = loops
    if n % VEC == 0:
        jo, ji = sch.split(j, [None, VEC])
        sch.reorder(jo, r, ji)
        sch.vectorize(ji)
    outer = sch.fuse(*sp) if len(sp) > 1 else sp[0]
    sch.parallel(outer)
    y = sch.get_sblock("Y")
    yl = sch.get_loops(y)
    yo = sch.fuse(*yl[:-1]) if len(yl) > 2 else yl[0]
    sch.parallel(yo)
    if n % VEC == 0:
        _, yi = sch.split(yl[-1], [None, VEC])
        sch.vectorize(yi)
    return sch.mod["main"].with_attr("op_pattern", OPAQUE)


def _has(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001
        return False


# ----------------------------------------------------------------------------------------------- import


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, name: str) -> bool:
        return isinstance(m, (BinaryLinear, BinaryMatMul, BinarySoftmax)) or super().is_leaf_module(m, name)


def tvm_var(tvm):
    return tvm.ir.Var


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(s) for s in expr.ty.shape)


class _Importer:
    """Our converters over TVM's FX importer; counts what ran on popcount kernels."""

    def __init__(self, tvm, gm: fx.GraphModule) -> None:
        from tvm.relax.frontend.torch.fx_translator import TorchFXImporter

        self.tvm, self.gm = tvm, gm
        self.imp = TorchFXImporter()
        self.mods = dict(gm.named_modules())
        self.stats = {"binary_layers": 0, "binary_matmuls": 0, "binary_bytes": 0, "binary_fp32_bytes": 0}
        self.base_conv = None
        self.folded: set[fx.Node] = set()

    def _call(self, func, name: str, args: list, shape: tuple[int, ...]):
        from tvm import relax

        bb = self.imp.block_builder
        gv = bb.add_func(func.with_attr("global_symbol", name), name)
        return bb.emit(relax.call_tir(gv, args, relax.TensorType(shape, "float32")))

    def linear(self, node: fx.Node):
        from tvm import relax

        tvm, bb = self.tvm, self.imp.block_builder
        layer = self.mods[node.target]
        if layer.act_bits != 1 or not layer.active:
            raise UserInputError(f"bivit tvm: layer {node.target}: only W1A1 BinaryLinear layers run on the XNOR "
                                 f"kernel (act_bits={layer.act_bits}, active={layer.active}); accepted: act_bits 1")
        ops = layer_operands(layer)
        x = self.imp.env[node.args[0]]
        shape = _shape(x)
        k, n = ops.in_features, ops.w_bits.shape[0]
        m = int(np.prod(shape[:-1]))
        func, vec_n = _linear_func(tvm, m, k, n)
        func = _schedule_kernel(tvm, func, vec_n)
        wt = np.ascontiguousarray(ops.w_bits.T)
        x2 = bb.emit(relax.op.reshape(x, (m, k)))
        consts = [relax.const(a) for a in (ops.shift, wt, ops.alpha, ops.bias)]
        y = self._call(func, f"xnor_linear_{node.target.replace('.', '_')}", [x2, *consts], (m, n))
        self.stats["binary_layers"] += 1
        self.stats["binary_bytes"] += wt.nbytes + 4 * (ops.shift.size + ops.alpha.size + ops.bias.size)
        self.stats["binary_fp32_bytes"] += 4 * (n * k + n)
        return bb.emit(relax.op.reshape(y, (*shape[:-1], n)))

    def matmul(self, node: fx.Node):
        from tvm import relax

        bb, mod = self.imp.block_builder, self.mods[node.target]
        a_node, b_node = node.args[:2]
        if mod.bits != 1 or not mod.active:
            raise UserInputError(f"bivit tvm: {node.target}: BinaryMatMul bits={mod.bits}; accepted: 1")
        b = self.imp.env[b_node]
        lead = _shape(b)[:-2]
        g = int(np.prod(lead))
        if mod.binarize_a:
            a = self.imp.env[a_node]
            (t, d), t2 = _shape(a)[-2:], _shape(b)[-1]
            users = list(node.users)
            scale = None
            if (len(users) == 1 and users[0].op == "call_function" and users[0].target is operator.mul
                    and users[0].args[0] is node and isinstance(users[0].args[1], float)):
                scale = users[0].args[1]
                self.folded.add(users[0])
            func, vec = _qk_func(self.tvm, g, t, d, t2, scale)
            out_shape = (g, t, t2)
            args = [bb.emit(relax.op.reshape(a, (g, t, d))), bb.emit(relax.op.reshape(b, (g, d, t2)))]
        else:
            sm = self.mods.get(a_node.target) if isinstance(a_node, fx.Node) and a_node.op == "call_module" else None
            if not (isinstance(sm, BinarySoftmax) and sm.active and sm.mode == "softmax_aware" and mod.normalize_a
                    and sm.dim in (-1, len(lead) + 1)):
                raise UserInputError(f"bivit tvm: {node.target}: an A.V BinaryMatMul runs on the popcount kernel only "
                                     "after an active softmax-aware BinarySoftmax over the last axis with "
                                     "attention_mean on")
            s = self.imp.env[a_node.args[0]]
            (t, t2), d = _shape(s)[-2:], _shape(b)[-1]
            func, vec = _av_func(self.tvm, g, t, t2, d, math.log(sm.ratio))
            out_shape = (g, t, d)
            args = [bb.emit(relax.op.reshape(s, (g, t, t2))), bb.emit(relax.op.reshape(b, (g, t2, d)))]
        y = self._call(_schedule_kernel(self.tvm, func, vec), f"popcount_{node.target.replace('.', '_')}", args, out_shape)
        self.stats["binary_matmuls"] += 1
        return bb.emit(relax.op.reshape(y, (*lead, *out_shape[1:])))

    def softmax(self, node: fx.Node):
        """The 0/1 map in Relax ops (only used if something other than the A.V kernel reads it)."""
        from tvm import relax

        sm = self.mods[node.target]
        if not sm.active or sm.mode != "softmax_aware":
            raise UserInputError(f"bivit tvm: {node.target}: BinarySoftmax mode {sm.mode!r} active={sm.active}; "
                                 "accepted: softmax_aware")
        s = self.imp.env[node.args[0]]
        centred = relax.op.subtract(s, relax.op.max(s, axis=[sm.dim], keepdims=True))
        mask = relax.op.greater_equal(centred, relax.const(math.log(sm.ratio), "float32"))
        return self.imp.block_builder.emit(relax.op.astype(mask, "float32"))

    def conv2d(self, node: fx.Node):
        """A patchify convolution (kernel == stride, no padding, dilation 1, groups 1) as reshape + matmul."""
        from tvm import relax

        conv = self.mods[node.target]
        if not (conv.kernel_size == conv.stride and conv.padding == (0, 0) and conv.dilation == (1, 1)
                and conv.groups == 1 and isinstance(conv.padding, tuple)):
            return self.base_conv(node)
        bb = self.imp.block_builder
        x = self.imp.env[node.args[0]]
        nb, c, h, w = _shape(x)
        (p, q), o = conv.kernel_size, conv.out_channels
        hh, ww = h // p, w // q
        if h % p or w % q:
            return self.base_conv(node)
        patches = bb.emit(relax.op.reshape(x, (nb, c, hh, p, ww, q)))
        patches = bb.emit(relax.op.permute_dims(patches, [0, 2, 4, 1, 3, 5]))
        patches = bb.emit(relax.op.reshape(patches, (nb * hh * ww, c * p * q)))
        wmat = relax.const(conv.weight.detach().reshape(o, -1).t().contiguous().numpy())
        y = relax.op.matmul(patches, wmat)
        if conv.bias is not None:
            y = relax.op.add(y, relax.const(conv.bias.detach().numpy()))
        y = bb.emit(y)
        y = bb.emit(relax.op.reshape(y, (nb, hh, ww, o)))
        return bb.emit(relax.op.permute_dims(y, [0, 3, 1, 2]))

    def gelu(self, node: fx.Node):
        """Exact (erf) GELU as ``x * 0.5 * (1 + erf(x / sqrt 2))`` in PyTorch's order; the pipeline's
        FastMathTransform then computes erf with TVM's vectorisable rational approximation (libm's erff is a
        scalar call per element: a quarter of the model's time before)."""
        from tvm import relax

        mod = self.mods.get(node.target) if node.op == "call_module" else None
        approximate = getattr(mod, "approximate", node.kwargs.get("approximate", "none"))
        if approximate != "none":
            return self.base_gelu(node)
        x = self.imp.env[node.args[0]]
        c = lambda v: relax.const(v, "float32")  # noqa: E731
        erf = relax.op.erf(relax.op.multiply(x, c(1 / math.sqrt(2))))
        return self.imp.block_builder.emit(relax.op.multiply(relax.op.multiply(x, c(0.5)), relax.op.add(c(1.0), erf)))

    def mul(self, node: fx.Node, _importer=None):
        """A scalar multiply that :meth:`matmul` folded into the Q.K^T kernel's epilogue is the kernel's output."""
        if node in self.folded:
            return self.imp.env[node.args[0]]
        return self.base_mul(node)

    def getitem(self, node: fx.Node, _importer=None):
        """``tensor[i]`` with an int ``i`` (TVM 0.27's FX importer returns the whole tensor there: it assumes a
        tuple); everything else goes to the importer's own getitem."""
        from tvm import relax

        x = self.imp.env[node.args[0]]
        idx = node.args[1]
        if isinstance(idx, int) and isinstance(x, tvm_var(self.tvm)) and isinstance(x.ty, relax.TensorType):
            n = _shape(x)[0]
            i = idx % n
            part = self.imp.block_builder.emit(relax.op.strided_slice(x, axes=[0], begin=[i], end=[i + 1]))
            return self.imp.block_builder.emit(relax.op.squeeze(part, axis=[0]))
        out = self.base_getitem(node)
        meta = node.meta.get("tensor_meta")
        if meta is not None and isinstance(out, tvm_var(self.tvm)) and isinstance(out.ty, relax.TensorType):
            want = tuple(int(v) for v in meta.shape)
            if _shape(out) != want:  # the importer keeps an int-indexed axis of a tuple index (x[:, 0])
                out = self.imp.block_builder.emit(relax.op.reshape(out, want))
        return out

    def run(self, example: torch.Tensor):
        self.base_conv = self.imp.convert_map[nn.Conv2d]
        self.base_getitem = self.imp.convert_map["getitem"]
        self.base_mul = self.imp.convert_map["mul"]
        self.base_gelu = self.imp.convert_map[nn.GELU]
        self.imp.named_modules = self.mods
        custom = {BinaryLinear: self.linear, BinaryMatMul: self.matmul, BinarySoftmax: self.softmax, nn.Conv2d: self.conv2d,
                  "getitem": self.getitem, "mul": self.mul, nn.GELU: self.gelu}
        return self.imp.from_fx(self.gm, [(tuple(example.shape), "float32")], keep_params_as_input=False,
                                unwrap_unit_return_tuple=True, no_bind_return_tuple=False, custom_convert_map=custom)


# ----------------------------------------------------------------------------------------------- API


def build(model: nn.Module, example: torch.Tensor, target: Any = None, tune: int = 0,
          tune_cache: str | Path | None = None) -> Built:
    """Compile a frozen BiViT W1A1 model for ``example``'s shape (static) and ``target`` (default: this CPU).
    ``tune`` > 0: the fp32 kernels (not the popcount ones, scheduled by hand) get ``tune`` MetaSchedule trials
    through :func:`edgekit.exporters.tvm_tune.compile_tuned` (cached database; ``Built.storage["tune"]``)."""
    tvm = require("tvm", "the BiViT TVM build")
    from tvm import relax

    from edgekit.exporters import tvm_schedule
    from edgekit.exporters.tvm import host_target

    if not any(isinstance(m, BinaryLinear) for m in model.modules()):
        raise UserInputError(f"bivit tvm: {type(model).__name__} has no BinaryLinear layer (convert and freeze it "
                             "with edgekit.quant.bivit first)")
    unfrozen = [n for n, m in model.named_modules() if isinstance(m, BinaryLinear) and not m.frozen]
    if unfrozen:
        raise UserInputError(f"bivit tvm: layers not frozen: {unfrozen[:3]}; call edgekit.quant.bivit.modules.freeze")
    model = model.eval()
    gm = fx.GraphModule(model, _Tracer().trace(model))
    from torch.fx.passes.shape_prop import ShapeProp

    with torch.no_grad():
        ShapeProp(gm).propagate(example)  # expected shapes, to check the importer's getitem against
    imp = _Importer(tvm, gm)
    mod = imp.run(example)
    mod = relax.transform.DecomposeOpsForInference()(mod)
    target = target or host_target()
    if tune:
        from edgekit.exporters.tvm_tune import compile_tuned

        ex, info = compile_tuned(mod, target, tune, tune_cache)
        return Built(ex, {**imp.stats, "tune": info})
    ex = tvm.compile(mod, target=target, relax_pipeline=tvm_schedule.pipeline(target))
    return Built(ex, dict(imp.stats))


def load(path: str | Path, threads: int | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """A runner ``x -> logits`` for a saved library (the Relax VM on this CPU)."""
    from edgekit.exporters.tvm import load_vm

    return load_vm(Path(path), threads)


def compare(model: nn.Module, run: Callable[[np.ndarray], np.ndarray], example: torch.Tensor, n: int = 4,
            seed: int = 0, noise: float = 1e-7) -> dict[str, Any]:
    """The compiled model against PyTorch on ``n`` inputs (``example``, then random ones shaped like it): max
    |diff| relative to max |y|, the lowest cosine, top-1 agreement; and, for scale, PyTorch against itself when
    the input moves by ``noise`` (a deep binary network flips activation signs on rounding-sized changes, so an
    untrained one can disagree with itself as much as with any other runtime)."""
    gen = torch.Generator().manual_seed(seed)
    rel, cos, agree, self_cos = [], [], [], []

    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float((a * b).sum() / max(1e-30, float(np.linalg.norm(a) * np.linalg.norm(b))))

    with torch.no_grad():
        for i in range(n):
            x = example if i == 0 else torch.randn(example.shape, generator=gen)
            ref = model(x).numpy()
            got = np.asarray(run(x.numpy()))
            if got.shape != ref.shape:
                raise AssertionError(f"bivit tvm: output shape {got.shape} != PyTorch's {ref.shape}")
            rel.append(float(np.abs(got - ref).max() / max(1e-12, float(np.abs(ref).max()))))
            cos.append(cosine(got, ref))
            agree.append(float(np.mean(got.argmax(-1) == ref.argmax(-1))))
            self_cos.append(cosine(model(x + noise * torch.randn(x.shape, generator=gen)).numpy(), ref))
    out = {"max_rel_diff": max(rel), "min_cosine": min(cos), "top1_agreement": float(np.mean(agree)), "inputs": n,
           "torch_self_min_cosine": min(self_cos), "noise": noise}
    out["summary"] = (f"max |diff| / max |y| {out['max_rel_diff']:.1e}, cosine >= {out['min_cosine']:.6f}, "
                      f"top-1 agreement {out['top1_agreement']:.2f} on {n} inputs (PyTorch against itself with "
                      f"{noise:g} input noise: cosine >= {out['torch_self_min_cosine']:.6f})")
    return out
