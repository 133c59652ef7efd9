"""Fusion: BatchNorm folding, ConvBN mode switching and structural reparameterization.

``fuse(model, mode)`` works on any traceable PyTorch model. It

1. (``deploy``) replaces every block that has a ``to_deploy()`` method by its deploy form (RepConv,
   MobileOne, DilatedReparamBlock, ConvBN, ... -- the pass knows no block by name), and sets every remaining
   :class:`~edgekit.ops.convbn.ConvBN` to the requested mode (``tune`` / ``eval``);
2. captures the graph (:func:`edgekit.capture.capture`: torch.fx as a fast path, torch.export on the example
   inputs when fx cannot trace the model; ATen ops are mapped to the user's modules by ``nn_module_stack``), finds
   Conv->BN, ConvTranspose->BN and Linear->BatchNorm1d pairs whose producer output has no other user, and
   whose modules are each called once;
3. ``deploy``: folds each pair, W_f = W * gamma / sigma, b_f = beta + (b - mu) * gamma / sigma,
   sigma = sqrt(var + eps), and replaces the BN by nn.Identity; ``tune`` / ``eval``: wraps each Conv->BN pair
   into a ConvBN in that mode (see "Efficient ConvBN Blocks for Transfer Learning and Beyond", ICLR'24).

The model's own class and forward are kept (modules are swapped in place on a deep copy), so the result
stays traceable by torch.export and exportable to ONNX. The report lists what was folded or merged and
every BatchNorm left, with the reason.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Protocol, Sequence, runtime_checkable

import torch
from torch import fx, nn

from edgekit.capture import FX, Capture, capture
from edgekit.errors import UserInputError
from edgekit.ops.convbn import MODES, ConvBN, folded_weight_bias
from edgekit.outputs import rewrap, unwrap

FUSE_MODES = ("deploy", "tune", "eval")
_BN = nn.modules.batchnorm._BatchNorm
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PAIRS = {
    nn.BatchNorm1d: (nn.Linear, nn.Conv1d, nn.ConvTranspose1d),
    nn.BatchNorm2d: (nn.Conv2d, nn.ConvTranspose2d),
    nn.BatchNorm3d: (nn.Conv3d, nn.ConvTranspose3d),
}


@runtime_checkable
class Reparameterizable(Protocol):
    """A multi-branch block with a single-branch deploy form (RepConv, MobileOne, ...)."""

    def to_deploy(self) -> nn.Module: ...


@dataclass
class Pair:
    bn: str  # qualified name of the BatchNorm
    layer: str | None  # producer conv/linear, or None when the BN cannot be folded
    reason: str = ""  # why not, when layer is None
    out_dims: int | None = None  # rank of the producer's output when known (Linear -> BN1d needs 2)


def set_convbn_mode(model: nn.Module, mode: str) -> list[str]:
    """Switch every :class:`ConvBN` in ``model`` (in place) to ``mode``; returns the names switched."""
    if mode not in MODES:
        raise UserInputError(f"ConvBN mode {mode!r}; accepted: {', '.join(MODES)}")
    names = []
    for name, module in model.named_modules():
        if isinstance(module, ConvBN):
            module.set_mode(mode)
            names.append(name)
    return names


@torch.no_grad()
def fold_bn(layer: nn.Module, bn: _BN) -> nn.Module:
    """A copy of ``layer`` (Conv*, ConvTranspose* or Linear) with ``bn`` folded in (eval semantics)."""
    out = copy.deepcopy(layer)
    groups = out.groups if isinstance(out, _TRANSPOSED) else 0
    w, b = folded_weight_bias(out.weight, out.bias, bn, transposed_groups=groups)
    out.weight = nn.Parameter(w.detach().clone())
    out.bias = nn.Parameter(b.detach().to(w.dtype).clone())
    return out


def _replace_deploy_blocks(module: nn.Module, prefix: str, merged: list[dict[str, str]]) -> None:
    for name, child in list(module.named_children()):
        full = f"{prefix}{name}"
        if isinstance(child, Reparameterizable):
            new = child.to_deploy()
            setattr(module, name, new)
            merged.append({"module": full, "type": type(child).__name__, "into": type(new).__name__})
        else:
            _replace_deploy_blocks(child, full + ".", merged)


class _Tracer(fx.Tracer):
    """fx tracer that keeps blocks with a deploy form (and ConvBN) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (ConvBN, Reparameterizable)) or super().is_leaf_module(m, qualname)


def _pairs_fx(cap: Capture, model: nn.Module, example_inputs: Sequence[torch.Tensor] | None) -> list[Pair]:
    gm = cap.graph_module
    modules = dict(model.named_modules())
    if example_inputs is not None:
        from torch.fx.passes.shape_prop import ShapeProp

        with torch.no_grad():
            ShapeProp(gm).propagate(*example_inputs)
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BN):
            continue
        src = node.args[0] if node.args else None
        # look through identities (e.g. the nn.Identity activation of a deploy-form block)
        while (isinstance(src, fx.Node) and src.op == "call_module" and isinstance(modules.get(src.target), nn.Identity)
               and len(src.users) == 1):
            src = src.args[0]
        if not (isinstance(src, fx.Node) and src.op == "call_module"):
            pairs.append(Pair(node.target, None, "input is not the output of a conv/linear module"))
            continue
        meta = src.meta.get("tensor_meta")
        out_dims = len(meta.shape) if meta is not None and hasattr(meta, "shape") else None
        pairs.append(_check(node.target, src.target, modules, calls, len(src.users), out_dims))
    return pairs


_PRODUCER_OPS = {torch.ops.aten.conv1d, torch.ops.aten.conv2d, torch.ops.aten.conv3d, torch.ops.aten.convolution,
                 torch.ops.aten.linear, torch.ops.aten.conv_transpose1d, torch.ops.aten.conv_transpose2d,
                 torch.ops.aten.conv_transpose3d}
_BN_OPS = {torch.ops.aten.batch_norm, torch.ops.aten._native_batch_norm_legit_no_training,
           torch.ops.aten._native_batch_norm_legit, torch.ops.aten.native_batch_norm}


def _packet(node: fx.Node) -> object:
    return getattr(node.target, "overloadpacket", node.target)


def _pairs_export(cap: Capture, model: nn.Module) -> list[Pair]:
    """Pairs on an ATen graph: each conv/linear/BN op is mapped to the user's module by ``nn_module_stack``."""
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    nodes = [n for n in cap.graph_module.graph.nodes if n.op == "call_function"]
    for n in nodes:
        if _packet(n) in _PRODUCER_OPS or _packet(n) in _BN_OPS:
            owner = cap.module_path(n) or ""
            calls[owner] = calls.get(owner, 0) + 1
    pairs = []
    for n in nodes:
        name = cap.module_path(n)
        if _packet(n) not in _BN_OPS or name is None or not isinstance(modules.get(name), _BN):
            continue
        src = n.args[0]
        if not (isinstance(src, fx.Node) and _packet(src) in _PRODUCER_OPS and cap.module_path(src) is not None):
            pairs.append(Pair(name, None, "input is not the output of a conv/linear module"))
            continue
        val = src.meta.get("val")
        pairs.append(_check(name, cap.module_path(src), modules, calls, len(src.users), val.dim() if val is not None else None))
    return pairs


def _check(bn: str, layer: str, modules: dict[str, nn.Module], calls: dict[str, int], users: int,
           out_dims: int | None) -> Pair:
    bn_mod, mod = modules[bn], modules.get(layer)
    if mod is None or not isinstance(mod, _PAIRS.get(type(bn_mod), ())):
        return Pair(bn, None, f"input comes from {type(mod).__name__} {layer!r}, not a foldable conv/linear")
    if users > 1:
        return Pair(bn, None, f"output of {layer!r} has other users")
    if calls.get(layer, 0) > 1 or calls.get(bn, 0) > 1:
        return Pair(bn, None, f"{layer!r} or {bn!r} is called more than once")
    if isinstance(mod, nn.Linear):
        if out_dims is None:
            return Pair(bn, None, f"Linear {layer!r}: output rank unknown; pass example inputs to fold Linear->BN1d")
        if out_dims != 2:
            return Pair(bn, None, f"Linear {layer!r} output has rank {out_dims}; BatchNorm1d folds only (N, C)")
    return Pair(bn, layer, out_dims=out_dims)


def find_bn_pairs(model: nn.Module, example_inputs: Sequence[torch.Tensor] | None = None) -> tuple[list[Pair], Capture]:
    """(pairs, capture): every BatchNorm called in ``model`` with its foldable producer or the reason it has none.

    The graph comes from :func:`edgekit.capture.capture` (torch.fx when it can trace the model, else
    torch.export on ``example_inputs``); module names are those of the user's model (``unwrap``-ed).
    """
    cap = capture(model, example_inputs, tracer=_Tracer(), what="fuse")
    inner, _ = unwrap(model)
    pairs = _pairs_fx(cap, inner, example_inputs) if cap.method == FX else _pairs_export(cap, inner)
    return pairs, cap


def fuse(model: nn.Module, mode: str = "deploy",
         example_inputs: Sequence[torch.Tensor] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Return ``(new_model, report)``; ``model`` is not modified. See the module docstring for ``mode``."""
    if mode not in FUSE_MODES:
        raise UserInputError(f"fuse mode {mode!r}; accepted: {', '.join(FUSE_MODES)}")
    training = model.training
    model = copy.deepcopy(model)
    model.eval()
    merged: list[dict[str, str]] = []
    switched: list[str] = []
    if mode == "deploy":
        if isinstance(model, Reparameterizable):  # the model itself is a reparameterizable block
            new = model.to_deploy()
            merged.append({"module": "", "type": type(model).__name__, "into": type(new).__name__})
            model = new.eval()
        else:
            _replace_deploy_blocks(model, "", merged)
    else:
        switched = set_convbn_mode(model, mode)
    inner, output_path = unwrap(model)  # fold inside the user's model; the output wrapper is put back after
    pairs, cap = find_bn_pairs(model, example_inputs)
    model = inner
    folded: list[dict[str, str]] = []
    left: list[dict[str, str]] = []
    for pair in pairs:
        if pair.layer is None:
            left.append({"layer": pair.bn, "reason": pair.reason})
            continue
        layer, bn = model.get_submodule(pair.layer), model.get_submodule(pair.bn)
        if mode == "deploy":
            model.set_submodule(pair.layer, fold_bn(layer, bn))
        elif isinstance(layer, _CONVS):
            model.set_submodule(pair.layer, ConvBN.wrap(layer, bn, mode=mode))
        else:
            left.append({"layer": pair.bn, "reason": f"{mode} mode wraps Conv->BN only; {type(layer).__name__} left"})
            continue
        model.set_submodule(pair.bn, nn.Identity())
        folded.append({"layer": pair.layer, "bn": pair.bn, "type": type(layer).__name__})
    if mode != "deploy":
        model.train(training)
    in_convbn = {id(m.bn) for m in model.modules() if isinstance(m, ConvBN) and m.bn is not None}
    remaining = [n for n, m in model.named_modules() if isinstance(m, _BN) and id(m) not in in_convbn]
    seen = {e["layer"] for e in left}
    left += [{"layer": n, "reason": "not called in the traced forward"} for n in remaining if n not in seen]
    report = {
        "mode": mode,
        "tracer": cap.method,
        "capture": cap.summary(),
        "merged": merged,
        "folded": folded,
        "convbn_mode_set": switched,
        "left": left,
        "summary": f"{len(merged)} blocks reparameterized, {len(folded)} BN {'folded' if mode == 'deploy' else 'wrapped'}"
        f", {len(left)} BN left",
    }
    return rewrap(model, output_path), report
