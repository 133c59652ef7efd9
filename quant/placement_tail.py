"""Packed multi-branch outputs (a detector head): integer concatenation, one per-channel DequantizeLinear at the end.

A single-stage detector packs its outputs: per pyramid level, the box / centerness / class-logit convs are
concatenated along the channels, each level is flattened, and the levels are concatenated along the anchors
(``(N, 5 + C, A)``). With the ONNX Runtime placement every head conv's output is quantized (qdq rule 2), so the
exported tail is ``DQ, DQ -> Concat -> Reshape`` per level and a float ``Concat`` of the levels. What was read
from ONNX Runtime's profile of the zoo ``detector`` at 64x64 (``placement_report.ort_kernel_profile``, after its
optimizations): edgekit's tail ran 4 ``DequantizeLinear`` + 3 float ``Concat`` (+ 2 more ``Transpose`` from
NHWC) where ``quantize_static`` ran 3 ``QLinearConcat`` and one ``DequantizeLinear``; the 19 ``QLinearConv``
were the same kernels at the same times. ``quantize_static`` gets its shorter tail by putting the whole output on
one grid (its ``QLinearConcat`` requantizes the box distances and the class logits to a common scale), which is
where its larger mAP drop comes from.

The rule here keeps each branch on its own grid and still ends in one DequantizeLinear:

1. PTQ (:func:`joint_output_grids`, placements with ``joint_output_grids``): the outputs of the same branch at
   different levels (the k-th input of each level's channel concat, same channel count) share one quantizer,
   calibrated on all of them (their values are the same quantity: distances in strides, logits), so the levels'
   channel layouts carry equal parameters. Branches keep separate grids.
2. ONNX (:func:`integer_output_tail`, the ``onnx`` target): ``Concat(DQ(a; s_a, z_a), DQ(b; s_b, z_b), axis=1)``
   is ``DQ_axis1(Concat(a, b); [s_a]*C_a + [s_b]*C_b, ...)`` exactly, a reshape that keeps the first two dims
   commutes with a per-channel DQ, and a concat along another axis of tensors with equal per-channel parameters
   commutes too. So the tail is rewritten to concatenate / reshape the integer tensors and dequantize once per
   channel at the output: the same values (bit-exact), ONNX Runtime then runs plain uint8 ``Concat`` (memory
   copies) and one ``DequantizeLinear``. Where levels carry different parameters, each level is dequantized
   after its integer concat / reshape and only the level concat stays float (also exact).

A graph whose outputs do not come from a concat of dequantized tensors (every classifier: a float Gemm or
GlobalAveragePool output) is left unchanged by both parts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from edgekit.quant import qdq

# --------------------------------------------------------------------------------------------- PTQ: tie levels


def _cat_parts(node: fx.Node) -> tuple[list[fx.Node], int] | None:
    """(inputs, normalized dim) of a ``torch.cat`` / ATen ``cat`` node, else None."""
    if node.op != "call_function" or qdq.target_of(node) not in (torch.cat, torch.ops.aten.cat, torch.concat):
        return None
    parts = node.args[0] if node.args else node.kwargs.get("tensors")
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    rank = len(node.meta["tensor_meta"].shape) if "tensor_meta" in node.meta else None
    if not isinstance(parts, (list, tuple)) or rank is None or not all(isinstance(p, fx.Node) for p in parts):
        return None
    return list(parts), dim % rank


def _shape(n: fx.Node) -> tuple[int, ...] | None:
    meta = n.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _through_layout(n: fx.Node) -> fx.Node:
    """Back through single-use data movement that keeps the first two dims (``flatten(2)``, a view)."""
    while qdq.moves_data(n) and isinstance(n.args[0], fx.Node) and len(n.users) == 1:
        a = n.args[0]
        sa, sn = _shape(a), _shape(n)
        if sa is None or sn is None or sa[:2] != sn[:2]:
            break
        n = a
    return n


def joint_output_grids(gm: fx.GraphModule, tensors: list[str]) -> dict[str, str]:
    """``{tensor: leader}`` for the quantized head outputs that should share the leader's quantizer: at each graph
    output that is a concat (not along the channels) of per-level channel concats with the same channel split,
    the k-th part of every level joins the k-th part of the first level. Empty for any other graph."""
    quantized, ties = set(tensors), {}
    out = next(n for n in gm.graph.nodes if n.op == "output")
    roots: list[fx.Node] = []
    fx.node.map_arg(out.args, roots.append)
    for root in roots:
        outer = _cat_parts(root)
        if outer is None or outer[1] == 1:
            continue
        levels = []
        for lv in outer[0]:
            inner = _cat_parts(_through_layout(lv))
            if inner is None or inner[1] != 1:
                break
            levels.append(inner[0])
        if len(levels) != len(outer[0]) or len({len(p) for p in levels}) != 1:
            continue
        for k in range(len(levels[0])):
            parts = [p[k] for p in levels]
            chans = {(_shape(p) or (None, None))[1] for p in parts}
            if len(chans) == 1 and None not in chans and all(p.name in quantized and len(p.users) == 1 for p in parts):
                ties.update({p.name: parts[0].name for p in parts[1:]})
    return ties


# --------------------------------------------------------------------------------------------- ONNX: sink the DQ


@dataclass
class _Lifted:
    """A float tensor that equals ``DQ(integer, scales, zero_points)`` (per tensor: axis None, 1-element)."""

    integer: str
    scale: np.ndarray
    zero: np.ndarray
    axis: int | None
    leaf: object = None  # the original DequantizeLinear node when nothing was rewired yet
    removed: list = field(default_factory=list)


class _Tail:
    def __init__(self, model) -> None:
        import onnx
        from onnx import numpy_helper

        self.onnx, self.nh = onnx, numpy_helper
        self.model = model
        g = model.graph
        self.init = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.uses: dict[str, int] = {}
        for n in g.node:
            for i in n.input:
                self.uses[i] = self.uses.get(i, 0) + 1
        for o in g.output:
            self.uses[o.name] = self.uses.get(o.name, 0) + 1
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes = {}
        for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
            dims = v.type.tensor_type.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                self.shapes[v.name] = tuple(d.dim_value for d in dims)
        self.new_nodes: list = []
        self.dead: set[int] = set()
        self.count = 0
        self.renamed: set[str] = set()

    def const(self, name: str) -> np.ndarray | None:
        return self.nh.to_array(self.init[name]) if name in self.init else None

    def lift(self, name: str) -> _Lifted | None:
        node = self.producer.get(name)
        if node is None or node.domain not in ("", "ai.onnx"):
            return None
        if node.op_type == "DequantizeLinear":
            s = self.const(node.input[1])
            z = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
            if s is None or z is None or s.size != 1 or z.size != 1 or node.input[0] in self.init:
                return None
            return _Lifted(node.input[0], s.reshape(1).astype(np.float32), z.reshape(1), None, leaf=node)
        if node.op_type == "Concat":
            return self._concat(node)
        if node.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            return self._reshape(node)
        return None

    def _inputs(self, node) -> list[_Lifted] | None:
        got = []
        for i in node.input[: 1 if node.op_type != "Concat" else None]:
            lf = self.lift(i) if self.uses.get(i, 0) == 1 else None
            if lf is None:
                self._materialize_all(node, got)
                return None
            got.append((i, lf))
        return got

    def _materialize_all(self, node, got) -> None:
        for name, lf in got:
            self.materialize(name, lf)

    def materialize(self, name: str, lf: _Lifted) -> None:
        """Produce the float tensor ``name`` again from a rewired integer subtree (nothing to do for a leaf DQ)."""
        if lf.leaf is not None:
            return
        self._dequantize(lf, name)

    def _dequantize(self, lf: _Lifted, out: str) -> None:
        h = self.onnx.helper
        k = len(self.new_nodes)
        s_name, z_name = f"{out}_tail_scale", f"{out}_tail_zero_point"
        per_axis = lf.axis is not None
        self.model.graph.initializer.extend([self.nh.from_array(lf.scale if per_axis else lf.scale.reshape(()), s_name),
                                             self.nh.from_array(lf.zero if per_axis else lf.zero.reshape(()), z_name)])
        attrs = {"axis": lf.axis} if per_axis else {}
        self.new_nodes.append(h.make_node("DequantizeLinear", [lf.integer, s_name, z_name], [out],
                                          name=f"tail_dequantize_{k}", **attrs))

    def _retarget(self, node, lifted: list[tuple[str, _Lifted]]) -> str:
        """Feed ``node`` the integer tensors; its output becomes an integer tensor (renamed). -> that name."""
        for idx, (_, lf) in enumerate(lifted):
            node.input[idx] = lf.integer
            if lf.leaf is not None:
                self.dead.add(lf.leaf.output[0])  # the leaf DQ, by its (unique) output
        node.output[0] = node.output[0] + "_integer"
        self.renamed.add(node.output[0])
        self.count += 1
        return node.output[0]

    def _concat(self, node) -> _Lifted | None:
        got = self._inputs(node)
        if not got:
            return None
        shape = self.shapes.get(node.output[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), None)
        if shape is None or axis is None or len({lf.zero.dtype for _, lf in got}) != 1:
            self._materialize_all(node, got)
            return None
        axis %= len(shape)
        lfs = [lf for _, lf in got]
        if all(lf.axis is None for lf in lfs) and len({(float(lf.scale[0]), int(lf.zero[0])) for lf in lfs}) == 1:
            scale, zero, ax = lfs[0].scale, lfs[0].zero, None
        elif axis == 1 and all(lf.axis in (None, 1) for lf in lfs):
            sizes = [self.shapes.get(n, (None, None))[1] for n, _ in got]
            if None in sizes:
                self._materialize_all(node, got)
                return None
            scale = np.concatenate([np.broadcast_to(lf.scale, (c,)) for lf, c in zip(lfs, sizes)]).astype(np.float32)
            zero = np.concatenate([np.broadcast_to(lf.zero, (c,)) for lf, c in zip(lfs, sizes)])
            ax = 1
        elif axis != 1 and all(lf.axis == 1 for lf in lfs) and all(
                np.array_equal(lf.scale, lfs[0].scale) and np.array_equal(lf.zero, lfs[0].zero) for lf in lfs):
            scale, zero, ax = lfs[0].scale, lfs[0].zero, 1
        else:
            self._materialize_all(node, got)
            return None
        return _Lifted(self._retarget(node, got), scale, zero, ax)

    def _reshape(self, node) -> _Lifted | None:
        got = self._inputs(node)
        if not got:
            return None
        (name, lf), = got
        a, b = self.shapes.get(name), self.shapes.get(node.output[0])
        if lf.axis is not None and (a is None or b is None or a[: lf.axis + 1] != b[: lf.axis + 1]):
            self._materialize_all(node, got)
            return None
        return _Lifted(self._retarget(node, got), lf.scale, lf.zero, lf.axis)

    def finish(self) -> None:
        g = self.model.graph
        nodes = []
        for n in [*g.node, *self.new_nodes]:
            if n.output[0] not in self.dead:
                nodes.append(self.onnx.NodeProto())
                nodes[-1].CopyFrom(n)  # copies: clearing the repeated field below invalidates its elements
        del g.node[:]
        g.node.extend(_topological(nodes, {i.name for i in g.input} | {i.name for i in g.initializer}))
        made = {o for n in g.node for o in n.output}
        keep = [v for v in g.value_info if v.name in made and v.name not in self.renamed]
        del g.value_info[:]
        g.value_info.extend(keep)  # the renamed float tensors are integer now: let shape inference retype them


def _topological(nodes: list, available: set[str]) -> list:
    ready, order, pending = set(available), [], list(nodes)
    while pending:
        rest = [n for n in pending if not all(not i or i in ready for i in n.input)]
        done = [n for n in pending if all(not i or i in ready for i in n.input)]
        if not done:  # a cycle cannot arise from the rewrite; keep the rest in their order rather than lose nodes
            order += rest
            break
        order += done
        ready.update(o for n in done for o in n.output)
        pending = rest
    return order


def integer_output_tail(model) -> int:
    """Rewrite, in place in an ``onnx.ModelProto``, each graph output computed from DequantizeLinear outputs by
    Concat / Reshape only so that those ops run on the integer tensors and one DequantizeLinear (per channel
    where the branches' grids differ) produces the output. Values are unchanged. Returns the number of ops that
    now run on integers (0: the graph was left as it was)."""
    tail = _Tail(model)
    for out in model.graph.output:
        lf = tail.lift(out.name) if tail.uses.get(out.name, 0) == 1 else None
        if lf is not None and lf.leaf is None:
            tail._dequantize(lf, out.name)
    if tail.count:
        tail.finish()
    return tail.count


def integer_output_tail_file(path) -> int:
    """:func:`integer_output_tail` on an ONNX file, rewritten in place only when something changed."""
    import onnx

    model = onnx.load(str(path))
    n = integer_output_tail(model)
    if n:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return n
