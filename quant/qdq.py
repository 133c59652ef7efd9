"""Where the Quantize/DequantizeLinear pairs go, so that int8 runtimes fuse them into integer kernels.

Rules (the QDQ patterns ONNX Runtime, OpenVINO and TensorRT recognise):

1. Every tensor input of a quantized op (conv, linear, matmul, residual add) gets a Q/DQ pair. One pair per
   tensor, shared by all its consumers (the runtimes expect this, and it keeps branches on one grid).
2. The output of a quantized op gets a Q/DQ pair too, placed *after* its fused activation (ReLU / ReLU6 /
   clamp) so ``DQ -> Conv(+bias) -> Relu -> Q`` becomes one ``QLinearConv`` (ORT drops the ReLU when the
   output zero point sits at the grid's bottom, which an affine grid calibrated on a ReLU output has).
   Without an output Q a runtime would run that conv in float on dequantized inputs.
3. Residual adds: both inputs and the output are quantized, so ``DQ, DQ -> Add -> Q`` fuses (QLinearAdd in
   ORT, an int8 eltwise in OpenVINO/TensorRT). An add of a parameter (a positional embedding) is not a
   residual add: it stays float (quantizing the embedding per tensor cost 1.7 pt top-1 on the digits vit).
4. Weights are int8 initializers feeding a per-channel DequantizeLinear (axis 0); biases stay float
   initializers (ORT and OpenVINO quantize them to int32 at the fusion; TensorRT ignores bias Q/DQ), except a
   Linear on a 2-D input (exported as Gemm: a classifier): its bias is int32 on the grid input scale x weight
   scale (``ptq.gemm_input_scales``), the only form ORT fuses into QGemm.
   A max pool's output stays on its input's grid (:func:`moves_data`), so it runs on the integer tensor.
5. Graph outputs are never quantized (the logits stay float).
6. Per runtime (:mod:`edgekit.quant.placement`): with ``softmax_input=False`` the output of an op that feeds a
   softmax (the attention logits Q·Kᵀ, through a scaling mul/div) is not quantized, as NNCF places it for
   OpenVINO (whose CPU plugin runs the attention subgraph in int8 with float logits).
7. Per runtime: with ``output_tail=False`` the output of an op that reaches the graph outputs through
   concatenation / reshapes only (a detector head's last convs before the packed output) is not quantized,
   as NNCF places it for OpenVINO: the CPU plugin then runs the int8 conv with a float output and a float
   concat, instead of an int8 concat (its reference kernel) followed by a dequantizing subgraph.
8. A global average pool (``nn.AdaptiveAvgPool2d(1)``, ``x.mean((2, 3), keepdim=True)``) of a quantized
   tensor whose result is read quantized anyway (a classifier's input, through a flatten) gets its own output
   Q/DQ pair (:func:`is_global_avg_pool`; a pool that feeds a float norm stays float), and the ONNX export writes the mean as
   ``GlobalAveragePool`` (:func:`global_pools_in_onnx`; torch.export records every such pool as
   ``aten.mean.dim``, which exports as ``ReduceMean``): ``DQ -> GlobalAveragePool -> Q`` is the pattern ONNX
   Runtime fuses into ``QLinearGlobalAveragePool``, as it does for ``quantize_static``'s graph (a float
   ``ReduceMean`` between a DQ and the classifier's Q cost the transformers MobileNetV2 ~1.5% of a call). The
   classifier's input (a flatten of the pool) is then tied to the pool's grid: the same values, the same scale.

Ops the quantizer does not handle are left in float and listed by :func:`plan` (nothing is silently dropped).
"""

from __future__ import annotations

import fnmatch
import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

QUANT_OPS = ("conv", "linear", "matmul", "add")

aten = torch.ops.aten

# Ops are looked up by target: torch functions / methods (torch.fx graphs) and ATen overload packets
# (torch.export graphs, see edgekit.capture), so one table serves both graph dialects.
_FUSED_ACTS_MOD = (nn.ReLU, nn.ReLU6, nn.Hardtanh)
_FUSED_ACTS_FN = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.clamp, torch.clip,
                  aten.relu, aten.relu_, aten.hardtanh, aten.hardtanh_, aten.clamp, aten.clamp_, aten.clip, aten.relu6}
_ADD_FNS = {operator.add, operator.iadd, torch.add, aten.add, aten.add_}
_MATMUL_FNS = {operator.matmul, torch.matmul, torch.bmm, aten.matmul, aten.bmm}
SOFTMAX_FNS = {torch.softmax, torch.nn.functional.softmax, aten.softmax, aten._softmax}
# Ops that move or pool values without arithmetic a quantizer would care about: not reported as float.
_PASSTHROUGH_MOD = (nn.ZeroPad2d, nn.ConstantPad2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.ReLU, nn.ReLU6, nn.Hardtanh)
_PASSTHROUGH_FN = {torch.nn.functional.pad, torch.flatten, torch.reshape, operator.getitem, torch.cat, torch.relu, torch.nn.functional.relu,
                   torch.nn.functional.relu6, torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.max_pool2d,
                   torch.nn.functional.avg_pool2d, torch.transpose, torch.permute, torch.clamp, torch.chunk, torch.split,
                   getattr, operator.mul, operator.truediv, torch.mean,
                   aten.pad, aten.constant_pad_nd, aten.flatten, aten.reshape, aten.view, aten._unsafe_view, aten.cat,
                   aten.adaptive_avg_pool2d, aten.adaptive_avg_pool1d, aten.max_pool2d, aten.avg_pool2d, aten.transpose,
                   aten.permute, aten.chunk, aten.split, aten.split_with_sizes, aten.unbind, aten.mul, aten.div, aten.mean,
                   aten.contiguous, aten.clone, aten.expand, aten.unsqueeze, aten.squeeze, aten.select, aten.slice,
                   aten.unflatten, aten.t, aten.dropout, aten.dropout_, aten.sym_size, aten.softmax, aten._softmax,
                   aten.roll, aten.index, aten.alias, aten.detach}
_PASSTHROUGH_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "size", "chunk", "split",
                        "unsqueeze", "squeeze", "mean", "expand", "__getitem__", "relu", "clamp", "softmax", "mul", "dim"}


# Ops that only select / reorder / reshape values (no arithmetic): a slice of a quantized tensor stays on its grid.
DATA_MOVEMENT = {aten.select, aten.slice, aten.permute, aten.transpose, aten.view, aten.reshape, aten._unsafe_view,
                 aten.squeeze, aten.unsqueeze, aten.expand, aten.clone, aten.contiguous, aten.t, aten.flatten,
                 aten.unflatten, aten.alias, aten.unbind, aten.chunk, aten.split, aten.split_with_sizes,
                 operator.getitem, torch.transpose, torch.permute, torch.reshape, torch.flatten, torch.chunk,
                 torch.split, torch.squeeze, torch.unsqueeze}
_DATA_MOVEMENT_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "contiguous", "chunk", "split",
                          "unsqueeze", "squeeze", "expand", "__getitem__"}


# Ops whose every output value is one of their input's values (max pooling pads with -inf, never with a value).
_SELECTS_VALUES = {aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.max_pool2d_with_indices,
                   aten.max_pool3d_with_indices, torch.nn.functional.max_pool1d, torch.nn.functional.max_pool2d,
                   torch.nn.functional.max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d}
_SELECTS_VALUES_MOD = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def moves_data(node: fx.Node) -> bool:
    """A select / slice / view / permutation of its first argument (see :data:`DATA_MOVEMENT`), a
    nearest-neighbour resize (it copies values: an FPN's top-down upsample keeps its input's grid, and ONNX
    Runtime then runs ``DQ -> Resize -> Q`` on uint8 instead of in float with a requantization), or a max pool
    (it selects values: a ResNet stem's ``DQ -> MaxPool -> Q`` on one grid runs as a uint8 MaxPool in ONNX
    Runtime, where a grid of its own left a float MaxPool between a DequantizeLinear and a QuantizeLinear)."""
    if node.op == "call_method":
        return node.target in _DATA_MOVEMENT_METHODS
    if node.op == "call_module":
        owner = node.graph.owning_module
        try:
            return owner is not None and isinstance(owner.get_submodule(str(node.target)), _SELECTS_VALUES_MOD)
        except AttributeError:
            return False
    if node.op != "call_function":
        return False
    t = target_of(node)
    if t in _SELECTS_VALUES:
        return True
    if t is torch.nn.functional.interpolate:
        return node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest") == "nearest"
    return t in DATA_MOVEMENT or t in (aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d)


def only_reaches_outputs(node: fx.Node, hops: int = 4) -> bool:
    """Whether every use of ``node`` reaches a graph output through data movement and concatenation only (a
    detector head's last convs: ``conv -> cat -> flatten -> cat -> output``), no op that reads a quantized input."""
    for u in node.users:
        if u.op == "output":
            continue
        cat = u.op == "call_function" and target_of(u) in (torch.cat, aten.cat, torch.concat)
        if hops <= 0 or not (cat or moves_data(u)) or not only_reaches_outputs(u, hops - 1):
            return False
    return True


def target_of(node: fx.Node) -> object:
    """A call_function's target, ATen overloads folded into their packet (``aten.add.Tensor`` -> ``aten.add``)."""
    return getattr(node.target, "overloadpacket", node.target)


@dataclass
class Plan:
    """What :func:`plan` decided: layers to quantize, tensors to quantize, and what stays in float."""

    layers: list[str] = field(default_factory=list)  # call_module targets whose weights become int8
    op_nodes: list[str] = field(default_factory=list)  # names of the quantized op nodes (incl. add/matmul)
    tensors: list[str] = field(default_factory=list)  # node names whose output gets a Q/DQ pair
    inputs_of: dict[str, list[str]] = field(default_factory=dict)  # quantized op node -> its quantized inputs
    ignored: list[str] = field(default_factory=list)
    float_ops: list[str] = field(default_factory=list)  # ops left in float that carry arithmetic


def _is_float_tensor(n) -> bool:
    if not isinstance(n, fx.Node):
        return False
    meta = n.meta.get("tensor_meta")
    return meta is not None and hasattr(meta, "dtype") and meta.dtype.is_floating_point


def _is_parameter(n: fx.Node) -> bool:
    """A graph constant (a parameter such as a positional embedding), possibly broadcast / reshaped."""
    while n.op in ("call_function", "call_method") and n.args and isinstance(n.args[0], fx.Node) and (
            (target_of(n) if n.op == "call_function" else n.target) in _VIEW_OPS):
        n = n.args[0]
    return n.op == "get_attr"


_VIEW_OPS = {"expand", "view", "reshape", "expand_as", aten.expand, aten.view, aten.reshape, aten._unsafe_view,
             torch.reshape}


def matches(name: str, patterns) -> bool:
    """Wildcard match of a layer name against ``ignore`` patterns (``head``, ``features.*``, ``*.attn.*``)."""
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + ".") for p in patterns)


def op_kind(node: fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """``conv`` | ``linear`` | ``matmul`` | ``add`` for nodes the quantizer handles, else None."""
    if node.op == "call_module":
        m = modules.get(node.target)
        if isinstance(m, nn.Conv2d):
            return "conv"
        if isinstance(m, nn.Linear):
            return "linear"
        return None
    if node.op == "call_function" or node.op == "call_method":
        t = target_of(node) if node.op == "call_function" else node.target
        if (t in _ADD_FNS or t == "add") and not node.meta.get("attention_mask_add"):  # placement_attention.MASK_ADD
            a = node.args[:2]
            if len(a) == 2 and all(_is_float_tensor(x) and not _is_parameter(x) for x in a) and \
                    a[0].meta["tensor_meta"].shape == a[1].meta["tensor_meta"].shape:
                return "add"
        if t in _MATMUL_FNS or t == "matmul":
            if len(node.args) >= 2 and all(_is_float_tensor(x) for x in node.args[:2]):
                return "matmul"
    return None


def _fused_output(node: fx.Node, modules: dict[str, nn.Module]) -> fx.Node:
    """Follow a single-user chain through a fused activation (ReLU/ReLU6/clamp) after ``node``."""
    users = list(node.users)
    if len(users) == 1:
        u = users[0]
        if (u.op == "call_module" and isinstance(modules.get(u.target), _FUSED_ACTS_MOD)) or (
            u.op == "call_function" and target_of(u) in _FUSED_ACTS_FN) or (u.op == "call_method" and u.target in ("relu", "clamp")):
            return u
    return node


def _is_passthrough(node: fx.Node, modules) -> bool:
    if node.op in ("placeholder", "output", "get_attr"):
        return True
    if node.op == "call_module":
        return isinstance(modules.get(node.target), _PASSTHROUGH_MOD)
    if node.op == "call_method":
        return node.target in _PASSTHROUGH_METHODS
    t = target_of(node)
    return t in _PASSTHROUGH_FN or t in _FUSED_ACTS_FN or t in _ADD_FNS or t in _MATMUL_FNS


def feeds_softmax(node: fx.Node, modules: dict[str, nn.Module], hops: int = 3) -> bool:
    """Whether ``node``'s only use chain reaches a softmax within ``hops`` scaling / reshaping ops."""
    for _ in range(hops):
        users = list(node.users)
        if len(users) != 1:
            return False
        node = users[0]
        if is_softmax(node, modules):
            return True
        if not _is_passthrough(node, modules) or op_kind(node, modules) is not None:
            return False
    return False


def is_softmax(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A softmax call: ``nn.Softmax`` module, ``x.softmax(...)``, ``torch.softmax`` / ATen ``_softmax``."""
    if node.op == "call_module":
        return isinstance(modules.get(node.target), nn.Softmax)
    if node.op == "call_method":
        return node.target == "softmax"
    return node.op == "call_function" and target_of(node) in SOFTMAX_FNS


_GLOBAL_MEAN_FNS = {aten.mean, torch.mean}
_ADAPTIVE_AVG_FNS = {aten.adaptive_avg_pool2d, aten._adaptive_avg_pool2d, torch.nn.functional.adaptive_avg_pool2d}


def is_global_avg_pool(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """A mean of a 4-D tensor over its two spatial dims that keeps them (N, C, 1, 1): ``nn.AdaptiveAvgPool2d(1)``,
    ``F.adaptive_avg_pool2d(x, 1)``, ``x.mean((2, 3), keepdim=True)`` / ATen ``mean.dim(x, [-1, -2], True)``."""
    if node.op not in ("call_module", "call_function", "call_method") or not node.args:
        return False
    x = node.args[0]
    meta = x.meta.get("tensor_meta") if isinstance(x, fx.Node) else None
    if meta is None or len(getattr(meta, "shape", ())) != 4:
        return False
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.AdaptiveAvgPool2d) and m.output_size in (1, (1, 1), [1, 1])
    t = target_of(node) if node.op == "call_function" else node.target
    if t in _ADAPTIVE_AVG_FNS:
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    if t in _GLOBAL_MEAN_FNS or t == "mean":
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        dims = [dims] if isinstance(dims, int) else list(dims or ())
        return bool(keep) and sorted(d % 4 for d in dims) == [2, 3]
    return False


def global_pools_in_onnx(model) -> int:
    """Rewrite, in an ``onnx_ir`` model (what the dynamo exporter builds), each ``ReduceMean`` over the two
    trailing dims of a 4-D tensor with ``keepdims=1`` as the ``GlobalAveragePool`` it equals (rule 8). Returns
    how many were rewritten."""
    n_done = 0
    for node in list(model.graph):
        if node.op_type != "ReduceMean" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        x, axes = node.inputs
        keep = node.attributes.get("keepdims")
        rank = len(x.shape) if x is not None and x.shape is not None else None
        const = axes.const_value if axes is not None else None
        if rank != 4 or const is None or (keep is not None and keep.value != 1):
            continue
        if sorted(int(a) % 4 for a in const.numpy().reshape(-1)) != [2, 3]:
            continue
        node.resize_inputs(1)
        for key in list(node.attributes):
            del node.attributes[key]
        node.op_type = "GlobalAveragePool"
        n_done += 1
    return n_done


def plan(gm: fx.GraphModule, ops=QUANT_OPS, ignore=(), softmax_input: bool = True, output_tail: bool = True) -> Plan:
    """Decide the QDQ placement on a shape-propagated graph (``node.meta['tensor_meta']`` set).

    ``softmax_input=False``: leave a quantized op's output in float when it feeds a softmax (rule 6).
    ``output_tail=False``: leave a quantized op's output in float when it reaches the graph outputs through
    concatenation / data movement only (:func:`only_reaches_outputs`, rule 7)."""
    modules = dict(gm.named_modules())
    p = Plan()
    needs: dict[str, None] = {}
    outputs = _output_names(gm)
    pools: list[fx.Node] = []
    for node in gm.graph.nodes:
        kind = op_kind(node, modules)
        label = node.target if node.op == "call_module" else node.name
        if kind is None:
            if is_global_avg_pool(node, modules) and node.args[0].name in needs and node.name not in outputs:
                pools.append(node)  # rule 8, decided once the consumers' inputs are known
                continue
            if not _is_passthrough(node, modules) and _is_float_tensor(node):
                p.float_ops.append(f"{label} ({_describe(node, modules)})")
            continue
        if kind not in ops or matches(str(label), ignore):
            p.ignored.append(str(label))
            continue
        p.op_nodes.append(node.name)
        if kind in ("conv", "linear"):
            if node.target not in p.layers:  # a layer called twice is one module
                p.layers.append(node.target)
            ins = [node.args[0]]
        else:
            ins = list(node.args[:2])
        p.inputs_of[node.name] = []
        for a in ins:
            a = _before_zero_pad(a, modules) if kind == "conv" else a
            if isinstance(a, fx.Node) and _is_float_tensor(a):
                needs[a.name] = None
                p.inputs_of[node.name].append(a.name)
        out = _fused_output(node, modules)
        if not softmax_input and feeds_softmax(out, modules):
            continue
        if not output_tail and only_reaches_outputs(out):
            continue
        if out.name not in outputs and not all(u.op == "output" for u in out.users):
            needs[out.name] = None
    for pool in pools:  # rule 8: only where the pooled tensor is read quantized anyway (a classifier's input)
        if pool.name not in needs and all(_read_quantized(u, needs) for u in pool.users):
            needs[pool.name] = None
    p.tensors = list(needs)
    return p


_IDENTITY_MOD = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout)
_IDENTITY_FN = {aten.dropout, aten.clone, aten.alias, torch.nn.functional.dropout}


def _read_quantized(node: fx.Node, needs: dict[str, None], hops: int = 4) -> bool:
    """Whether ``node`` only passes its input's values on (a flatten, an eval-mode dropout) to a quantized output
    (the input of a quantized Linear), itself or through more such ops."""
    owner = node.graph.owning_module
    same = moves_data(node) or (node.op == "call_module" and owner is not None and isinstance(
        owner.get_submodule(str(node.target)), _IDENTITY_MOD)) or (
        node.op == "call_function" and target_of(node) in _IDENTITY_FN)
    if hops <= 0 or not same or not node.users:
        return False
    return node.name in needs or all(_read_quantized(u, needs, hops - 1) for u in node.users)


def _before_zero_pad(node, modules):
    """The input of a chain of zero constant pads that feed only this conv (TF-style padding, as in the
    ``transformers`` MobileNetV2): quantizing before the pad is the same tensor (0 is exact on the int8 grid), and
    ONNX Runtime folds ``DQ -> Pad -> Conv`` into its integer conv, where ``Pad -> Q -> DQ -> Conv`` left 52
    float pads with their own Q/DQ pair and made the int8 model 3x slower than ``quantize_static``'s."""
    while isinstance(node, fx.Node) and len(node.users) == 1 and _is_zero_pad(node, modules):
        node = node.args[0]
    return node


def _is_zero_pad(node: fx.Node, modules) -> bool:
    if node.op == "call_module":
        m = modules.get(node.target)
        return isinstance(m, nn.ZeroPad2d) or (isinstance(m, nn.ConstantPad2d) and m.value == 0)
    if node.op != "call_function":
        return False
    t = target_of(node)
    if t is aten.constant_pad_nd:
        value = node.kwargs.get("value", node.args[2] if len(node.args) > 2 else 0)
        return value == 0
    if t in (torch.nn.functional.pad, aten.pad):
        mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
        value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
        return mode == "constant" and value in (None, 0)
    return False


def _output_names(gm: fx.GraphModule) -> set[str]:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    names: set[str] = set()
    fx.node.map_arg(out.args, lambda a: names.add(a.name))
    return names


def _describe(node: fx.Node, modules) -> str:
    if node.op == "call_module":
        return type(modules.get(node.target)).__name__
    t = target_of(node)
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


# ----------------------------------------------------------------------------------------- ONNX checks


def onnx_op_types(path) -> dict[str, int]:
    """Op-type histogram of an ONNX file."""
    onnx = __import__("edgekit.backends", fromlist=["require"]).require("onnx", "QDQ inspection")
    counts: dict[str, int] = {}
    for n in onnx.load(str(path)).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def ort_optimized_op_types(path, threads: int = 2) -> dict[str, int]:
    """Op types of the graph ONNX Runtime actually runs (after its QDQ fusions), from its optimized-model dump.

    An int8 model shows ``QLinearConv`` / ``QLinearMatMul`` / ``QGemm`` / ``QLinearAdd`` / ``MatMulInteger``
    and (almost) no float ``Conv``.
    """
    import os
    import tempfile

    from edgekit.backends import require

    ort = require("onnxruntime", "QDQ inspection")
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "opt.onnx")
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.optimized_model_filepath = out
        so.intra_op_num_threads = threads
        so.log_severity_level = 3
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx_op_types(out)


INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "MatMulInteger", "ConvInteger",
                "QLinearGlobalAveragePool", "QLinearAveragePool", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def int8_summary(op_types: dict[str, int]) -> dict[str, object]:
    """Counts of integer kernels vs float compute ops in an op-type histogram."""
    int8 = {k: v for k, v in op_types.items() if k in INT8_KERNELS}
    flt = {k: v for k, v in op_types.items() if k in ("Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul")}
    return {"int8_kernels": int8, "float_compute": flt, "all_int8": not flt and bool(int8)}
