"""Conversion of a float ViT-style model into the integer-only I-ViT form ("I-ViT: Integer-only Quantization
for Efficient Vision Transformer Inference", Li & Gu, ICCV 2023).

The model is traced with torch.fx (Linear, Conv2d, LayerNorm, GELU, Softmax, MatMul, ... kept as leaves) or,
when fx cannot trace it (third-party models: shape control flow, dict outputs, nn.MultiheadAttention,
scaled_dot_product_attention), captured with torch.export and lifted to the same ops found by op
(:mod:`.aten`); then calibrated (per-node activation ranges on the calibration split) and rebuilt node by
node. What replaces a node is looked up in registries (:mod:`.handlers`) -- by module type for
``call_module``, by function for ``call_function``, by method name for ``call_method`` -- never by the
node's name; :func:`register_module` lets users add their own layer types. The logits are the model's
output, or the first tensor of a tuple / dict output. Shape ops (reshape, permute, cat, getitem, ...) are kept and carry their input's scale;
multiplying by a constant (the attention's 1/sqrt(d)) only changes a scale; parameters used as activations
(class token, position embedding) become integer constants.

Bit widths: activations int8; the residual stream (every add), softmax inputs and the logits 16-bit;
accumulators int32; weights int8 per output channel. A consumer that needs int8 gets a dyadic requant
inserted automatically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgekit.registry import KeyedRegistry
from edgekit.errors import UserInputError
from edgekit.ops.transformer import Softmax
from edgekit.quant.ivit import modules as M
from edgekit.quant.ivit.program import IViTModel

ACT_BITS = 8
WIDE_BITS = 16  # residual stream, softmax input, logits, constants


@dataclass
class Q:
    """An integer activation (or a tuple of them) in the new graph: its node, scale and value range."""

    node: fx.Node
    scale: float
    lo: int
    hi: int


@dataclass
class V:
    """A float input or a non-tensor value (shapes, sizes) in the new graph."""

    node: Any


# ------------------------------------------------------------------------------------------- registries

Handler = Callable[["Converter", fx.Node, Any], Any]
MODULE_HANDLERS: KeyedRegistry[Handler] = KeyedRegistry("I-ViT module converter")  # by type, along the MRO
FUNCTION_HANDLERS: KeyedRegistry[Handler] = KeyedRegistry("I-ViT function converter")
METHOD_HANDLERS: KeyedRegistry[Handler] = KeyedRegistry("I-ViT method converter")


def register_module(*types: type):
    """Register ``handler(converter, node, module) -> Q`` for modules of these types (subclasses too)."""

    def deco(fn: Handler) -> Handler:
        for t in types:
            MODULE_HANDLERS.add(t, fn, replace=True)
        return fn

    return deco


def register_function(*fns: Any):
    def deco(fn: Handler) -> Handler:
        for f in fns:
            FUNCTION_HANDLERS.add(f, fn, replace=True)
        return fn

    return deco


def register_method(*names: str):
    def deco(fn: Handler) -> Handler:
        for n in names:
            METHOD_HANDLERS.add(n, fn, replace=True)
        return fn

    return deco


def module_handler(module: nn.Module) -> Handler | None:
    return MODULE_HANDLERS.lookup(type(module))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return module_handler(m) is not None or super().is_leaf_module(m, qualname)


# ------------------------------------------------------------------------------------------ calibration


class _Recorder(fx.Interpreter):
    """Runs the float graph and records per node max|x| (mean over batches) and one example value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.amax: dict[str, list[float]] = {}
        self.example: dict[str, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and out.is_floating_point():
            self.amax.setdefault(n.name, []).append(float(out.detach().abs().max()))
        elif isinstance(out, (tuple, list)) and out and all(isinstance(o, torch.Tensor) for o in out):
            self.amax.setdefault(n.name, []).append(max(float(o.detach().abs().max()) for o in out))
        self.example[n.name] = out
        return out


@dataclass
class Converter:
    gm: fx.GraphModule
    amax: dict[str, float]
    example: dict[str, Any]
    graph: fx.Graph = field(default_factory=fx.Graph)
    root: nn.Module = field(default_factory=nn.Module)
    env: dict[str, Any] = field(default_factory=dict)
    wide: set[str] = field(default_factory=set)
    log: list[dict[str, Any]] = field(default_factory=list)

    # helpers used by handlers --------------------------------------------------------------------
    def arg(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            return self.env[a.name]
        if isinstance(a, (list, tuple)):
            return type(a)(self.arg(x) for x in a)
        return a

    def plain(self, a: Any) -> Any:
        """The new-graph form of an argument (nodes of Q / V, other values as they are)."""
        a = self.arg(a) if isinstance(a, (fx.Node, list, tuple)) else a
        if isinstance(a, (Q, V)):
            return a.node
        if isinstance(a, (list, tuple)):
            return type(a)(self.plain(x) for x in a)
        return a

    def bits(self, node: fx.Node) -> int:
        return WIDE_BITS if node.name in self.wide else ACT_BITS

    def out_scale(self, node: fx.Node, bits: int) -> float:
        amax = self.amax.get(node.name)
        if amax is None:
            raise UserInputError(f"I-ViT: no calibration range for node {node.name} ({node.format_node()})")
        return max(amax, 1e-8) / (2 ** (bits - 1) - 1)

    def emit(self, name: str, module: nn.Module, args: Iterable[Any]) -> fx.Node:
        target, i = name, 0
        while _has_module(self.root, target):  # a module called twice gets one integer module per call
            i += 1
            target = f"{name}_{i}"
        set_module(self.root, target, module)
        self.log.append({"node": name, "type": type(module).__name__})
        return self.graph.call_module(target, tuple(args))

    def emit_q(self, name: str, module: M.IntModule, args: Iterable[Any]) -> Q:
        return Q(self.emit(name, module, args), module.s_out, module.out_lo, module.out_hi)

    def need_q(self, a: Any, node: fx.Node, what: str) -> Q:
        q = self.arg(a)
        if not isinstance(q, Q):
            raise UserInputError(f"I-ViT: {what} at node {node.name} needs an integer activation input, got a {type(q).__name__}")
        return q

    def to_int8(self, a: fx.Node, node: fx.Node, what: str) -> Q:
        """An int8 (or uint8) operand; inserts a dyadic requant from a wider tensor."""
        q = self.need_q(a, node, what)
        if (-128 <= q.lo and q.hi <= 127) or (0 <= q.lo and q.hi <= 255):
            return q
        s = self.out_scale(a, ACT_BITS)
        return self.emit_q(f"{node.name}_in8_{a.name}", M.IntRequant(q.scale, s, ACT_BITS), (q.node,))

    def requant_to(self, q: Q, scale: float, bits: int, name: str) -> Q:
        if abs(q.scale - scale) <= 1e-12 * scale and q.hi <= 2 ** (bits - 1) - 1 and q.lo >= -(2 ** (bits - 1)):
            return q
        return self.emit_q(name, M.IntRequant(q.scale, scale, bits), (q.node,))

    def copy(self, node: fx.Node) -> fx.Node:
        return self.graph.node_copy(node, lambda n: self.plain(n))


def _has_module(root: nn.Module, target: str) -> bool:
    try:
        root.get_submodule(target)
        return True
    except AttributeError:
        return False


def set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    *path, last = target.split(".")
    parent = root
    for p in path:
        if not hasattr(parent, p):
            parent.add_module(p, nn.Module())
        parent = getattr(parent, p)
    parent.add_module(last, module)


# ------------------------------------------------------------------------------------------ the driver


EXPORT_ONLY = {F.scaled_dot_product_attention}  # fused ops converted on the torch.export graph (see .aten)


def trace(model: nn.Module, example: torch.Tensor | None = None) -> tuple[fx.GraphModule, int | None]:
    """The model's graph: torch.fx (integer-convertible layers kept as leaves) when it traces, else
    ``torch.export`` on ``example`` lifted to torch-level ops (:mod:`.aten`); and the batch size the graph is
    fixed to (None: any)."""
    try:
        graph = _Tracer().trace(model)
        fused = [n.name for n in graph.nodes if n.op == "call_function" and n.target in EXPORT_ONLY]
        if not fused:
            return fx.GraphModule(model, graph), None
        fx_error = f"fused ops {', '.join(fused)} are written out on the ATen graph"
    except Exception as exc:  # noqa: BLE001 - fx raises many types
        fx_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if example is None:
        raise UserInputError(f"I-ViT: torch.fx cannot trace the model ({fx_error}) and no example input was given")
    from edgekit.quant.ivit.aten import capture_graph

    return capture_graph(model, example)


def calibrate(gm: fx.GraphModule, batches: Iterable[torch.Tensor]) -> _Recorder:
    from edgekit.progress import track

    rec = _Recorder(gm)
    with torch.no_grad():
        for xb in track(batches, "calibrating (I-ViT)"):
            rec.run(xb)
    return rec


def _wide_nodes(gm: fx.GraphModule) -> set[str]:
    """Nodes whose integer output should be 16-bit: inputs of softmax and the model's outputs (following
    shape ops and constant scalings, which keep the integers)."""
    from edgekit.quant.ivit.handlers import SCALE_TARGETS, SHAPE_FUNCTIONS, SHAPE_METHODS, SOFTMAX_TARGETS

    wide: set[str] = set()
    mods = dict(gm.named_modules())
    shape_ops = set(SHAPE_FUNCTIONS) | set(SHAPE_METHODS)

    def transparent(n: fx.Node) -> bool:
        return n.op in ("call_function", "call_method") and (n.target in shape_ops or n.target in SCALE_TARGETS)

    def wants(n: fx.Node, seen: set[str]) -> bool:
        for u in n.users:
            if u.op == "output":
                return True
            is_softmax = (u.op == "call_module" and isinstance(mods.get(u.target), (Softmax, nn.Softmax))) or (
                u.op in ("call_function", "call_method") and u.target in SOFTMAX_TARGETS)
            if is_softmax or (transparent(u) and u.name not in seen and wants(u, seen | {u.name})):
                return True
        return False

    for n in gm.graph.nodes:
        if wants(n, {n.name}):
            wide.add(n.name)
    return wide


def convert(model: nn.Module, calib: torch.Tensor, batch_size: int = 64, max_batches: int = 4) -> fx.GraphModule:
    """Return the I-ViT integer form of ``model`` (a new module; the input is not modified), calibrated on
    ``calib`` (N, C, H, W float32). The result is un-frozen (ready for QAT); call :func:`freeze` before
    running it on the executor or exporting it."""
    from edgekit.fusion.fuse import fuse

    model, _ = fuse(model.eval(), "deploy", (calib[:2],))
    gm, fixed = trace(model, calib[:2])
    calib = calib[: batch_size * max_batches]
    step = fixed or batch_size  # a graph fixed to one batch size is calibrated in chunks of it
    batches = [calib[i : i + step] for i in range(0, len(calib) - len(calib) % step if fixed else len(calib), step)]
    rec = calibrate(gm, batches)
    amax = {k: sum(v) / len(v) for k, v in rec.amax.items()}
    cv = Converter(gm, amax, rec.example, wide=_wide_nodes(gm))
    modules = dict(gm.named_modules())
    n_inputs = 0
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if n_inputs:
                raise UserInputError("I-ViT: the model must take a single input tensor")
            n_inputs += 1
            x = cv.graph.placeholder(node.name)
            s = cv.out_scale(node, ACT_BITS)
            cv.env[node.name] = cv.emit_q("quant_in", M.IntQuantize(s, ACT_BITS), (x,))
        elif node.op == "get_attr":
            value = rec.example[node.name]
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                cv.env[node.name] = V(cv.copy(node))
                continue
            cv.env[node.name] = cv.emit_q(f"const_{node.name}", M.IntConst(value, WIDE_BITS), ())
        elif node.op == "output":  # the logits: the output, or the first tensor of a tuple / list / dict
            leaves = [a for a in torch.utils._pytree.tree_leaves(node.args[0]) if isinstance(a, fx.Node)]
            if not leaves:
                raise UserInputError("I-ViT: the model returns no tensor")
            q = cv.need_q(leaves[0], node, "output")
            cv.graph.output(cv.emit("dequant_out", M.IntDequantize(q.scale), (q.node,)))
        elif node.op != "call_module" and not _is_tensorish(rec.example[node.name]):
            cv.env[node.name] = V(cv.copy(node))  # shape arithmetic (sizes, products of sizes)
        else:
            mod = modules.get(node.target) if node.op == "call_module" else None
            if node.op == "call_module":
                handler = module_handler(mod)
                what = f"module {node.target} of type {type(mod).__name__}"
            elif node.op == "call_function":
                handler = FUNCTION_HANDLERS.lookup(node.target)
                what = f"function {getattr(node.target, '__name__', node.target)}"
            else:
                handler = METHOD_HANDLERS.lookup(node.target)
                what = f"method .{node.target}()"
            if handler is None:
                raise UserInputError(
                    f"I-ViT: no integer form for {what} (node {node.name}); supported modules: "
                    f"{', '.join(MODULE_HANDLERS.names())}; register one with "
                    "edgekit.quant.ivit.convert.register_module"
                )
            cv.env[node.name] = handler(cv, node, mod)
    cv.graph.lint()
    out = IViTModel(cv.root, cv.graph)
    out.graph.eliminate_dead_code()  # constants that folded into a multiplier
    out.recompile()
    out.delete_all_unused_submodules()
    out.ivit_layers = cv.log
    return out.eval()


def _is_tensorish(v: Any) -> bool:
    return isinstance(v, torch.Tensor) or (isinstance(v, (tuple, list)) and bool(v) and isinstance(v[0], torch.Tensor))


def int_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (M.IntModule, M.IntQuantize, M.IntDequantize))]


def freeze(model: nn.Module) -> nn.Module:
    """Store every integer parameter as a buffer (in place); the float copies are dropped."""
    for _, m in int_modules(model):
        if isinstance(m, M.IntModule):
            m.freeze()
            for name in ("weight", "bias", "value"):
                if isinstance(getattr(m, name, None), nn.Parameter):
                    delattr(m, name)
    return model.eval()


from edgekit.quant.ivit import handlers as _handlers  # noqa: E402,F401 - registers the handlers
