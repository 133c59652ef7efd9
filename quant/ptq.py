"""Post-training int8 quantization: fuse, (equalize), insert fake-quant, calibrate, (bias-correct), freeze.

    >>> qmodel, report = quantize_ptq(model, calib_x, example, PTQConfig(calibration={"method": "mse"}))

The result is a ``torch.fx.GraphModule`` whose conv/linear layers hold int8 weights (QuantConv2d /
QuantLinear) and whose activations pass through per-tensor quantizers (ActFakeQuant) placed by
:mod:`edgekit.quant.qdq`. It runs in PyTorch (fake quant), survives ``torch.export`` and exports to a QDQ
ONNX graph. Bias correction is the empirical variant of Nagel et al., "Data-Free Quantization Through
Weight Equalization and Bias Correction" (ICCV 2019): the mean per-channel output shift that weight
rounding causes, measured on the calibration data, is subtracted from the bias.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Collection

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edgekit.capture import FX, Capture, FixedBatch, capture, layers_as_modules
from edgekit.errors import UserInputError
from edgekit.progress import track
from edgekit.quant import qdq
from edgekit.quant.config import PTQConfig
from edgekit.quant.fakequant import (QUANT_LAYERS, ActFakeQuant, ActMode, QuantConv2d, QuantLinear, QuantWeight,
                                     TiedFakeQuant, WeightMode)
from edgekit.quant.observers import make_observer
from edgekit.quant.placement import Placement, activation_policy
from edgekit.quant.placement_linear2d import before_reshapes, linear_on_2d_tokens, quantize_before_reshapes


def check_calibration(x: Any, example: torch.Tensor, samples: int) -> torch.Tensor:
    """Validate calibration data before any work: a float tensor shaped like the model input."""
    if not isinstance(x, torch.Tensor):
        raise UserInputError(f"quantize.calibration: data must be a tensor of shape (N, {', '.join(map(str, example.shape[1:]))}); got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise UserInputError(f"quantize.calibration: data has dtype {x.dtype}; accepted: float32 (normalized like the training data)")
    if tuple(x.shape[1:]) != tuple(example.shape[1:]):
        raise UserInputError(
            f"quantize.calibration: samples have shape {tuple(x.shape[1:])}; the model takes {tuple(example.shape[1:])}"
        )
    if x.shape[0] == 0:
        raise UserInputError("quantize.calibration: no calibration samples")
    if samples <= 0:
        raise UserInputError(f"quantize.calibration.samples: {samples}; accepted: a positive count")
    return x[:samples].float()


def trace(model: nn.Module, example: torch.Tensor, fuse: bool = True) -> tuple[fx.GraphModule, Capture]:
    """Fused (BN folded, reparameterized) graph with shapes in ``node.meta['tensor_meta']``, and its capture.

    The graph comes from :func:`edgekit.capture.capture` (torch.fx when it traces the model, else torch.export
    on ``example``); ATen ``conv2d`` / ``linear`` calls become ``nn.Conv2d`` / ``nn.Linear`` modules named after
    the user's layers. Identity and Dropout nodes (what BN folding leaves behind) are removed, so a conv's
    fused activation follows it directly in the graph.
    """
    model = copy.deepcopy(model).eval()
    if fuse:
        from edgekit.fusion import fuse as fuse_fn

        model = fuse_fn(model, mode="deploy", example_inputs=(example,))[0]
    if isinstance(model, fx.GraphModule):
        cap = Capture(FX, model, {n.name: str(n.target) for n in model.graph.nodes if n.op == "call_module"})
    else:
        cap = capture(model, (example,), fx=True, what="quantize")
    layers_as_modules(cap)
    gm = cap.graph_module
    mods = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if (node.op == "call_module" and isinstance(mods.get(node.target), (nn.Identity, nn.Dropout))) or (
                node.op == "call_function" and qdq.target_of(node) in _DROPOUT_FNS):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    x = example[: cap.batch_size] if cap.batch_size else example
    ShapeProp(gm).propagate(x)
    from edgekit.quant.placement_attention import decompose_attention

    from edgekit.quant.placement_gelu import rewrite_gelu

    if decompose_attention(gm, x) + rewrite_gelu(gm):  # fused attention -> matmul / softmax / matmul (quantizable
        ShapeProp(gm).propagate(x)  # products); exact GELU -> the form ONNX Runtime fuses into one Gelu kernel
    return gm, cap


_DROPOUT_FNS = {torch.ops.aten.dropout, torch.ops.aten.dropout_, torch.ops.aten.feature_dropout}


def prepare(gm: fx.GraphModule, opts: PTQConfig) -> tuple[fx.GraphModule, qdq.Plan]:
    """Swap conv/linear for int8-weight layers and insert observing ActFakeQuant modules (in place)."""
    from edgekit.quant.placement_ends import float_ends

    place = activation_policy(opts.target, opts.symmetric_activations)
    if place.linear_2d:  # OpenVINO: Linears on 2-D tokens, int8 outputs and GELUs of their own (placement_linear2d)
        linear_on_2d_tokens(gm)
    ends = [e for e in float_ends(gm, opts.ends) if not qdq.matches(e, opts.ignore)]
    p = qdq.plan(gm, ops=opts.ops, ignore=[*opts.ignore, *ends], softmax_input=place.softmax_input,
                  output_tail=place.output_tail)
    p.float_ends = ends
    if place.linear_2d:
        p.tensors = quantize_before_reshapes(gm, p.tensors)
    if not place.gelu_input:  # the placement leaves a GELU's input float (ONNX Runtime: it fuses the GELU then)
        from edgekit.quant.placement_gelu import only_read_by_gelu

        nodes = {n.name: n for n in gm.graph.nodes}
        p.tensors = [t for t in p.tensors if not only_read_by_gelu(nodes[t])]
    for target in p.layers:
        parent, _, attr = target.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        layer = getattr(owner, attr)
        setattr(owner, attr, QUANT_LAYERS[type(layer)](layer))
    scheme = place.initial_scheme()
    nodes = {n.name: n for n in gm.graph.nodes}
    ties = tied_sources(nodes, p.tensors)
    if not place.requantize_moved:  # q / k / v already on the qkv output's grid: no Q/DQ of their own
        mods = dict(gm.named_modules())
        moved = {t for t in ties if all(qdq.op_kind(u, mods) == "matmul" for u in nodes[t].users)}
        p.tensors = [t for t in p.tensors if t not in moved]
        ties = {t: s for t, s in ties.items() if t not in moved}
    quant_of: dict[str, str] = {}
    from edgekit.quant.placement_tail import joint_output_grids

    joint = joint_output_grids(gm, p.tensors) if place.joint_output_grids else {}  # a detector head's levels
    for i, name in sorted(enumerate(p.tensors), key=lambda t: (t[1] in ties, t[1] in joint)):  # sources first
        node = nodes[name]
        qname = f"act_quant_{i}"
        if name in joint:  # one quantizer module called on every level: calibrated on all of them
            gm.add_module(qname, gm.get_submodule(quant_of[joint[name]]))
        elif name in ties:
            gm.add_module(qname, TiedFakeQuant(gm.get_submodule(quant_of[ties[name]])))
        else:
            # probabilities (softmax outputs) keep their full [0, 1] range, and so do the logits a softmax reads:
            # clipping observers (MSE, percentile, entropy) would cut the few large attention scores that matter most
            keep_range = _is_softmax(node, gm) or qdq.feeds_softmax(node, dict(gm.named_modules()))
            method = "minmax" if keep_range else opts.calibration.method
            obs = make_observer(method, scheme, percentile=opts.calibration.percentile)
            gm.add_module(qname, ActFakeQuant(scheme, obs))
        quant_of[name] = qname
        with gm.graph.inserting_after(node):
            qn = gm.graph.call_module(qname, (node,))
        node.replace_all_uses_with(qn, delete_user_cb=lambda u: u is not qn and u.op != "output")
        qn.meta["source"] = name
    gm.graph.lint()
    gm.recompile()
    return gm, p


def tied_sources(nodes: dict[str, fx.Node], tensors: list[str]) -> dict[str, str]:
    """``{tensor: source}`` for each quantized tensor that is a pure data movement (select, slice, view,
    permute, transpose, ...: :data:`qdq.DATA_MOVEMENT`) of another quantized tensor: it takes the source's grid
    (:class:`TiedFakeQuant`) instead of being calibrated again on its own."""
    quantized, ties = set(tensors), {}
    for name in tensors:
        n = nodes[name]
        while qdq.moves_data(n) and isinstance(n.args[0], fx.Node):
            n = n.args[0]
            if n.name in quantized:
                ties[name] = ties.get(n.name, n.name)
                break
    return {t: _root(s, ties) for t, s in ties.items()}


def _root(name: str, ties: dict[str, str]) -> str:
    while name in ties:
        name = ties[name]
    return name


def _is_softmax(node: fx.Node, gm: fx.GraphModule) -> bool:
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), nn.Softmax)
    if node.op == "call_method":
        return node.target == "softmax"
    return node.op == "call_function" and qdq.target_of(node) in qdq.SOFTMAX_FNS


def act_quants(gm: nn.Module) -> dict[str, ActFakeQuant]:
    return {n: m for n, m in gm.named_modules() if isinstance(m, ActFakeQuant)}


def weight_layers(gm: nn.Module) -> dict[str, QuantWeight]:
    return {n: m for n, m in gm.named_modules() if isinstance(m, QuantWeight)}


@torch.no_grad()
def calibrate(gm: fx.GraphModule, x: torch.Tensor, batch_size: int = 32, placement: Placement | None = None) -> int:
    """Run the calibration samples through the observers, then set every quantizer's scale/zero point
    (on the grid ``placement`` settles on for the observed range, see :mod:`edgekit.quant.placement`)."""
    gm.eval()
    quants = act_quants(gm)
    for q in quants.values():
        q.mode = ActMode.OBSERVE
    batches = [x[i : i + batch_size] for i in range(0, len(x), batch_size)]
    for xb in track(batches, "calibrating"):
        gm(xb)
    for name, q in quants.items():
        settled = placement.settle(float(q.observer.lo)) if placement is not None and q.observer.lo is not None else None
        if settled is not None:  # placement ``by_range``: uint8 (zero point 0) for a non-negative tensor, else int8
            q.scheme = q.observer.scheme = settled
        try:
            q.freeze_from_observer()
        except RuntimeError as exc:
            raise RuntimeError(f"{name}: {exc}") from None
    return len(x)


def layer_input_quantizers(gm: fx.GraphModule) -> dict[str, list[str]]:
    """Map a quantized layer (module target) to the ActFakeQuant modules feeding it."""
    out: dict[str, list[str]] = {}
    mods = dict(gm.named_modules())
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods.get(n.target), QuantWeight):
            a = before_reshapes(n.args[0]) if isinstance(n.args[0], fx.Node) else n.args[0]  # placement_linear2d
            out[n.target] = [a.target] if isinstance(a, fx.Node) and a.op == "call_module" and isinstance(mods.get(a.target), ActFakeQuant) else []
    return out


@torch.no_grad()
def bias_correct(gm: fx.GraphModule, x: torch.Tensor, batch_size: int = 32,
                 reference: dict[str, torch.Tensor] | None = None, skip: Collection[str] = ()) -> dict[str, float]:
    """Empirical bias correction: ``b += E[W x] - E[Q(W) x]`` per output channel, on the layer's real inputs.

    The layer is linear in its weight, so ``W x - Q(W) x = (W - Q(W)) x``: each batch adds its per-channel sum
    of that difference as it passes, and no layer input is kept (memory bounded by the batch). ``reference``
    gives the float ``W`` of layers whose module weight was already rounded (AdaRound). Layers named in ``skip``
    keep their bias."""
    skip = set(skip)
    layers = {n: m for n, m in weight_layers(gm).items() if n not in skip}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {n: 0 for n in layers}

    @torch.no_grad()
    def accumulate(m: QuantWeight, xin: torch.Tensor, name: str) -> None:
        mode = m.wmode
        m.wmode = WeightMode.FAKE if mode is WeightMode.FLOAT else mode
        dw = (reference[name] if reference and name in reference else m.weight) - m.qweight()
        m.wmode = mode
        # The layer is linear in its input too: the batch is summed first, so one sample's output is computed
        # (a batch of 224x224 activations would otherwise be allocated again per layer).
        if isinstance(m, QuantConv2d):
            d = F.conv2d(xin.sum(0, keepdim=True), dw, None, m.stride, m.padding, m.dilation, m.groups)
            part, n = d.sum(dim=(0, 2, 3)), xin.shape[0] * d.shape[2] * d.shape[3]
        else:
            rows = xin.reshape(-1, xin.shape[-1])
            part, n = F.linear(rows.sum(0), dw), rows.shape[0]
        sums[name] = sums[name] + part if name in sums else part
        counts[name] += n

    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: accumulate(mod, a[0].detach(), n)) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                gm(x[i : i + batch_size])
    finally:
        for h in hooks:
            h.remove()
    shifts = {}
    for name, m in layers.items():
        if not counts[name]:
            continue
        delta = sums[name] / counts[name]
        m.bias.data += delta.to(m.bias.dtype)
        shifts[name] = float(delta.abs().max())
    return shifts


def freeze(gm: fx.GraphModule, int32_gemm_bias: bool = True) -> fx.GraphModule:
    """int8 weights, constant activation qparams; drops the observers. A linear layer on a 2-D input (exported
    as Gemm) gets an int32 bias on its input's grid (:meth:`QuantWeight.freeze`) unless ``int32_gemm_bias`` is
    False (TensorRT's parser takes no int32 DequantizeLinear: the tensorrt placement keeps float biases)."""
    for q in act_quants(gm).values():
        if q.mode is ActMode.LSQ:
            q.end_lsq()
        q.observer = None
    gemm_scales = gemm_input_scales(graph_of(gm)) if int32_gemm_bias else {}
    for name, m in weight_layers(gm).items():
        m.freeze(input_scale=gemm_scales.get(name))
    graph_of(gm).recompile()
    return gm.eval()


def gemm_input_scales(gm: fx.GraphModule) -> dict[str, float]:
    """``{linear layer: scale of its input quantizer}`` for each quantized Linear called once on a 2-D tensor
    behind an :class:`ActFakeQuant` (the layers exported as ``Gemm``: ONNX Runtime fuses them into QGemm only
    with an int32 bias; a Linear on 3-D tokens becomes MatMul + Add, which keeps its float bias), and for each
    whose output is read, unquantized, only by a GELU (the ONNX Runtime placement: with a float bias ORT ran that
    MatMul + Add as a float Gemm; with an int32 bias, as a QGemm with a float output)."""
    from edgekit.quant.placement_gelu import only_read_by_gelu

    mods, calls, scales = dict(gm.named_modules()), {}, {}
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(mods.get(n.target), QuantLinear):
            calls[n.target] = calls.get(n.target, 0) + 1
            a, meta = n.args[0], n.meta.get("tensor_meta")
            q = mods.get(a.target) if isinstance(a, fx.Node) and a.op == "call_module" else None
            q = q.source if isinstance(q, TiedFakeQuant) else q  # a classifier on a global pool's grid (qdq rule 8)
            if isinstance(q, ActFakeQuant) and q.mode is ActMode.QUANT and meta is not None and (
                    len(meta.shape) == 2 or only_read_by_gelu(n)):  # a float GELU input (ORT): QGemm only so too
                scales[n.target] = q.scale_f
    return {k: v for k, v in scales.items() if calls[k] == 1}


def set_weight_mode(gm: nn.Module, mode: WeightMode) -> None:
    for m in weight_layers(gm).values():
        m.wmode = mode


def quantize_ptq(model: nn.Module, calib: torch.Tensor, example: torch.Tensor, opts: PTQConfig | None = None,
                 do_freeze: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Int8 PTQ of ``model`` (not modified); returns the quantized model and a report dict.

    The model is the quantized ``fx.GraphModule``, or a :class:`~edgekit.capture.FixedBatch` around it when the
    model's forward fixes its batch size (``report["capture"]["batch_size"]``); :func:`graph_of` gives the graph.
    """
    opts = opts or PTQConfig()
    cal = opts.calibration
    calib = check_calibration(calib, example, cal.samples)
    t0 = time.perf_counter()
    gm, cap = trace(model, example, fuse=opts.fuse)
    batch = cap.batch_size or cal.batch_size
    report: dict[str, Any] = {"method": cal.method, "samples": int(len(calib)), "capture": cap.summary()}
    if opts.equalization:
        from edgekit.quant.equalize import equalize

        report["equalized_pairs"] = equalize(gm)
    if opts.smoothquant.enabled:
        from edgekit.quant.smoothquant import smooth

        report["smoothquant"] = smooth(gm, calib[:64], opts.smoothquant.alpha, batch)
    gm, p = prepare(gm, opts)
    set_weight_mode(gm, WeightMode.FLOAT)
    if opts.weight_bits != 8:
        from edgekit.quant.config import weight_scheme

        for layer in weight_layers(gm).values():
            layer.scheme = weight_scheme(opts.weight_bits)
    calibrate(gm, calib, batch, activation_policy(opts.target, opts.symmetric_activations))
    float_weights = None
    if opts.rounding == "adaround":  # after calibration: each layer learns its rounding on quantized inputs
        from edgekit.quant.adaround import AdaRoundOptions, adaround_layers

        report["adaround"], float_weights = adaround_layers(gm, weight_layers(gm), calib, opts.weight_bits,
                                                            AdaRoundOptions(iters=opts.adaround_iters), batch_size=batch)
    set_weight_mode(gm, WeightMode.FAKE)
    if opts.bias_correction:
        # a layer whose float bias is zero (none, or folded from an untrained BatchNorm) keeps it unless asked:
        # a correction would add a bias op that runtimes drop for a zero bias (OpenVINO: a bias add per conv,
        # +5% on ResNet-50, docs/benchmarks.md thirdparty_vs_peers)
        zero = [] if opts.bias_correction_adds_bias else [
            n for n, m in weight_layers(gm).items() if not m.bias.detach().any()]
        shifts = bias_correct(gm, calib, batch, reference=float_weights, skip=zero)
        report["bias_correction_max_shift"] = max(shifts.values(), default=0.0)
        report["bias_correction_skipped"] = zero
    if do_freeze:
        freeze(gm, int32_gemm_bias=opts.target != "tensorrt")
    report.update({
        "quantized_layers": p.layers,
        "quantized_ops": len(p.op_nodes),
        "activation_quantizers": len(p.tensors),
        "target": opts.target,
        "activations": activation_policy(opts.target, opts.symmetric_activations).describe(),
        "weights": f"{'int8' if opts.weight_bits == 8 else f'{opts.weight_bits}-bit grid in int8'} symmetric per-channel, "
                   f"{opts.rounding} rounding",
        "ignored": p.ignored,
        "float_ends": p.float_ends,  # quantize.ends (edgekit.quant.placement_ends): first / last layers kept float
        "float_ops": p.float_ops,
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return (gm if cap.batch_size is None else FixedBatch(gm, cap.batch_size)), report


def graph_of(model: nn.Module) -> fx.GraphModule:
    """The quantized graph of a :func:`quantize_ptq` result (unwrapping a :class:`FixedBatch`)."""
    return model.body if isinstance(model, FixedBatch) else model
