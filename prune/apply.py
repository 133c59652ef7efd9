"""Physical pruning: remove a set of units from a :class:`~edgekit.prune.depgraph.DependencyGraph`'s model.

Layer slots (fx path) are removed by their handlers; parameter slots are sliced by qualified name in the
user's model and in the captured graph module, then each edited module's attributes are brought in line with
its parameters (:data:`ATTRIBUTE_SYNC`, by module type: ``Conv2d.out_channels``, ``Linear.in_features``,
``nn.MultiheadAttention.embed_dim`` / ``num_heads`` ...). Size arguments the graph hard-codes (view shapes,
split sizes, ``LayerNorm``'s normalized shape, a depthwise conv's groups) are rewritten in the graph.

The pruned model is the user's own class when its ``forward`` still runs and matches the rewritten graph
(integer attributes of the module that owns a rewritten view, e.g. ``num_heads``, are updated when that is
what it takes); otherwise it is the rewritten graph module. :class:`PruneResult` says which.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import fx, nn

from edgekit.prune.capture import CaptureMethod, output_tensors
from edgekit.prune.fx_rules import SIZE_ARG_TARGETS, SPLIT_TARGETS, kept_count
from edgekit.prune.handlers import find_handler
from edgekit.prune.slots import Labeled, LayerSlot, ParamSlot, Side, TypeRegistry, Unit, norm_dim


class PrunedModelKind(Enum):
    USER_CLASS = "user class"  # the user's module, edited in place (a copy)
    GRAPH_MODULE = "graph module"  # the rewritten captured graph (the user's forward hard-codes a pruned size)


@dataclass
class PruneResult:
    removed: dict[str, dict[str, int]]  # layer -> slot family -> indices removed
    graph_rewrites: int
    model_kind: PrunedModelKind
    model_type: str
    capture: CaptureMethod
    attribute_updates: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- attributes

AttributeSync = Callable[[nn.Module], None]
ATTRIBUTE_SYNC: TypeRegistry[AttributeSync] = TypeRegistry()
register_attribute_sync = ATTRIBUTE_SYNC.register


@register_attribute_sync(nn.modules.conv._ConvNd)
def _sync_conv(m: nn.modules.conv._ConvNd) -> None:
    out = m.weight.shape[0]
    if m.groups > 1 and m.groups == m.in_channels:  # depthwise: one group per input channel
        mult = max(1, m.out_channels // m.in_channels)
        m.in_channels = m.groups = out // mult
    else:
        m.in_channels = m.weight.shape[1] * m.groups
    m.out_channels = out


@register_attribute_sync(nn.Linear)
def _sync_linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_attribute_sync(nn.modules.batchnorm._BatchNorm)
def _sync_bn(m: nn.Module) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@register_attribute_sync(nn.LayerNorm)
def _sync_ln(m: nn.LayerNorm) -> None:
    if m.weight is not None and len(m.normalized_shape) == 1:
        m.normalized_shape = (m.weight.shape[0],)


@register_attribute_sync(nn.GroupNorm)
def _sync_gn(m: nn.GroupNorm) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


@register_attribute_sync(nn.MultiheadAttention)
def _sync_mha(m: nn.MultiheadAttention) -> None:
    if m.in_proj_weight is None:
        return
    e = m.in_proj_weight.shape[1]
    m.embed_dim = m.kdim = m.vdim = e
    m.num_heads = e // m.head_dim


def sync_attributes(model: nn.Module) -> None:
    """Bring every module's size attributes in line with its parameters (children before parents)."""
    for _, m in reversed(list(model.named_modules())):
        sync = ATTRIBUTE_SYNC.find(type(m))
        if sync is not None:
            sync(m)


# ---------------------------------------------------------------------------------------------- removal


def apply_removal(graph, remove: list[Unit]) -> tuple[nn.Module, PruneResult]:
    removed_roots = np.fromiter({u.root for u in remove}, dtype=np.int64)
    per_family: dict[tuple, set[int]] = {}
    for u in remove:
        for s in u.slots:
            per_family.setdefault(s.family, set()).add(s.index)
    changes = _rewrite_sizes(graph, removed_roots)
    sliced: set[tuple[int, str]] = set()
    for fam, idxs in sorted(per_family.items(), key=lambda kv: (str(type(kv[0][1])), kv[0][1] != Side.OUT)):
        idx = sorted(idxs)
        if isinstance(fam[1], Side):
            m = graph.modules[fam[0]]
            find_handler(type(m)).prune(m, fam[1], idx)
        else:
            for root, name in ((graph.model, fam[0]), (graph.gm, graph.captured.prefix + fam[0])):
                _slice_param(root, name, fam[1], idx, sliced)
    sync_attributes(graph.model)
    graph.gm.recompile()
    model, kind, updates = _choose(graph, changes)
    removed: dict[str, dict[str, int]] = {}
    for fam, idxs in per_family.items():
        if isinstance(fam[1], Side):
            removed.setdefault(fam[0], {})[fam[1].value] = len(idxs)
        else:
            owner, _, attr = fam[0].rpartition(".")
            removed.setdefault(owner or fam[0], {})[f"{attr}[{fam[1]}]"] = len(idxs)
    kind_name = type(graph.model).__name__ if kind is PrunedModelKind.USER_CLASS else f"GraphModule({type(graph.model).__name__})"
    return model, PruneResult(removed, len(changes), kind, kind_name, graph.capture_method, updates)


def _slice_param(root: nn.Module, target: str, dim: int, idx: list[int], done: set) -> None:
    owner_name, _, attr = target.rpartition(".")
    try:
        owner = root.get_submodule(owner_name) if owner_name else root
    except AttributeError:
        return
    t = getattr(owner, attr, None)
    if t is None or (id(owner), attr, dim) in done:
        return
    done.add((id(owner), attr, dim))
    drop = set(idx)
    keep = torch.tensor([i for i in range(t.shape[dim]) if i not in drop], dtype=torch.long)
    new = torch.index_select(t.detach(), dim, keep).clone()
    if isinstance(t, nn.Parameter):
        setattr(owner, attr, nn.Parameter(new, requires_grad=t.requires_grad))
    elif attr in owner._buffers:
        owner.register_buffer(attr, new, persistent=attr not in owner._non_persistent_buffers_set)
    else:
        setattr(owner, attr, new)


def _new_shape(graph, v: Any, removed: np.ndarray) -> tuple[int, ...] | None:
    if not isinstance(v, Labeled) or v.field is None:
        return None
    new = list(v.shape)
    for d in v.dims():
        new[d] = kept_count(graph.space, v.field, d, removed)
    return tuple(new)


def _set_sizes(sizes: Sequence[Any], old: Sequence[int], new: Sequence[int], offset: int = 0) -> list[Any] | None:
    out, changed = list(sizes), False
    for d, (o, n) in enumerate(zip(old, new)):
        k = d - offset
        if o != n and 0 <= k < len(out) and not (isinstance(out[k], int) and out[k] == -1):
            if isinstance(out[k], fx.Node):  # a size computed from the batch, now fixed
                out[k].graph.owning_module.meta["prune_static_batch"] = True
            out[k], changed = n, True
    return out if changed else None


def _rewrite_sizes(graph, removed: np.ndarray) -> dict[fx.Node, tuple]:
    """Rewrite hard-coded sizes in the graph; returns ``{node: (old shape, new shape)}`` of the rewritten nodes."""
    changes = {}
    rewrite = _aten_rewrite if graph.capture_method is CaptureMethod.EXPORT else _fx_rewrite
    for node in graph.gm.graph.nodes:
        if node.op in ("call_method", "call_function"):
            v = graph.values.get(node)
            if rewrite(graph, node, v, removed):
                new = _new_shape(graph, v, removed)
                changes[node] = (tuple(v.shape), new) if new is not None else ((), ())
    return changes


def _fx_rewrite(graph, node: fx.Node, v: Any, removed: np.ndarray) -> bool:
    t = node.target
    if t in SIZE_ARG_TARGETS:
        new = _new_shape(graph, v, removed)
        if new is None or new == tuple(v.shape):
            return False
        sizes = list(node.args[1:])
        packed = len(sizes) == 1 and isinstance(sizes[0], (tuple, list))
        out = _set_sizes(list(sizes[0]) if packed else sizes, v.shape, new)
        if out is None:
            return False
        node.args = (node.args[0], tuple(out)) if packed else (node.args[0], *out)
        return True
    if t in SPLIT_TARGETS and isinstance(v, (tuple, list)) and isinstance(node.args[1], (tuple, list)):
        dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        return _rewrite_split(graph, node, v, dim, removed)
    return False


def _rewrite_split(graph, node: fx.Node, parts: Sequence[Labeled], dim: int, removed: np.ndarray) -> bool:
    sizes = []
    for part in parts:
        d = norm_dim(dim, len(part.shape))
        lab = part.field is not None and part.field.shape[d] > 1
        sizes.append(kept_count(graph.space, part.field, d, removed) if lab else part.shape[d])
    if list(sizes) == list(node.args[1]):
        return False
    node.args = (node.args[0], sizes, *node.args[2:])
    return True


def _aten_rewrite(graph, node: fx.Node, v: Any, removed: np.ndarray) -> bool:
    packet = str(getattr(node.target, "overloadpacket", ""))
    if packet in ("aten.view", "aten.reshape", "aten._unsafe_view", "aten.expand", "aten.unflatten"):
        new = _new_shape(graph, v, removed)
        if new is None or new == tuple(v.shape):
            return False
        if packet == "aten.unflatten":  # sizes replace input dim ``dim``: output dims dim .. dim + len(sizes) - 1
            pos, offset = 2, norm_dim(int(node.args[1]), len(v.shape) - len(node.args[2]) + 1)
        else:
            pos, offset = 1, 0
        out = _set_sizes(node.args[pos], v.shape, new, offset)
        if out is None:
            return False
        node.args = (*node.args[:pos], out, *node.args[pos + 1:])
        return True
    if packet in ("aten.split_with_sizes", "aten.split") and isinstance(v, (tuple, list)):
        dim = int(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0))
        if packet == "aten.split":
            old = list(node.args)
            if not isinstance(old[1], int):
                return _rewrite_split(graph, node, v, dim, removed)
            part = v[0]
            d = norm_dim(dim, len(part.shape))
            if part.field is None or part.field.shape[d] == 1:
                return False
            size = kept_count(graph.space, part.field, d, removed)
            if size == old[1]:
                return False
            node.args = (old[0], size, *old[2:])
            return True
        return _rewrite_split(graph, node, v, dim, removed)
    if packet == "aten.layer_norm":
        new = _new_shape(graph, v, removed)
        if new is None or new[-1] == v.shape[-1]:
            return False
        node.args = (node.args[0], [new[-1]], *node.args[2:])
        return True
    if packet in ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution"):
        pos = 8 if packet == "aten.convolution" else 6
        groups = int(node.args[pos]) if len(node.args) > pos else int(node.kwargs.get("groups", 1))
        x = graph.values.get(node.args[0])
        if groups > 1 and isinstance(x, Labeled) and groups == x.shape[1]:  # depthwise
            new = _new_shape(graph, x, removed)
            if new is None or new[1] == groups:
                return False
            if len(node.args) > pos:
                node.args = (*node.args[:pos], new[1], *node.args[pos + 1:])
            else:
                node.kwargs = {**node.kwargs, "groups": new[1]}
            return True
    return False


# ---------------------------------------------------------------------------------------------- choice


def _same(a: Any, b: Any) -> bool:
    la, lb = output_tensors(a), output_tensors(b)
    return len(la) == len(lb) and all(x.shape == y.shape and torch.allclose(x, y, rtol=1e-4, atol=1e-5) for x, y in zip(la, lb))


def _runs_like(model: nn.Module, ref: Any, inputs: Sequence[torch.Tensor]) -> bool:
    try:
        with torch.no_grad():
            return _same(model(*inputs), ref)
    except Exception:  # noqa: BLE001 - the module's forward hard-codes a pruned size
        return False


def _choose(graph, changes: dict) -> tuple[nn.Module, PrunedModelKind, list[str]]:
    """The edited user model if its own forward matches the rewritten graph, else the graph module."""
    with torch.no_grad():
        ref = graph.gm(*graph.example_inputs)
    if _runs_like(graph.model, ref, graph.example_inputs):
        return graph.model, PrunedModelKind.USER_CLASS, []
    edits = _int_attribute_edits(graph, changes)
    for m, attr, _, new in edits:
        setattr(m, attr, new)
    if edits and _runs_like(graph.model, ref, graph.example_inputs):
        kept = []
        for m, attr, old, new in edits:  # keep only the edits the forward needs
            setattr(m, attr, old)
            if not _runs_like(graph.model, ref, graph.example_inputs):
                setattr(m, attr, new)
                kept.append(f"{type(m).__name__}.{attr}: {old} -> {new}")
        return graph.model, PrunedModelKind.USER_CLASS, kept
    return _plain_graph_module(graph), PrunedModelKind.GRAPH_MODULE, []


def _plain_graph_module(graph) -> fx.GraphModule:
    """An exported program's module refuses ``.eval()`` / ``.train()``; a plain GraphModule of it does not."""
    if graph.capture_method is not CaptureMethod.EXPORT:
        return graph.gm
    gm = fx.GraphModule(graph.gm, graph.gm.graph, f"Pruned{type(graph.model).__name__}")
    gm.meta.update(graph.gm.meta)
    if graph.captured.dynamic_batch and not graph.gm.meta.get("prune_static_batch"):
        return gm
    from edgekit.capture import FixedBatch

    return FixedBatch(gm, int(graph.example_inputs[0].shape[0]))


def _int_attribute_edits(graph, changes: dict) -> list[tuple[nn.Module, str, int, int]]:
    """Integer attributes of the module owning a rewritten size (``self.num_heads`` in a view) that may follow
    it: ``(module, attribute, old, new)``."""
    edits: dict[tuple[int, str], tuple[nn.Module, str, int, int]] = {}
    for node, (old, new) in changes.items():
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            continue
        path = list(stack.values())[-1][0]
        name = path[len(graph.captured.prefix):] if path.startswith(graph.captured.prefix) else path
        try:
            m = graph.model.get_submodule(name) if name else graph.model
        except AttributeError:
            continue
        for o, n in zip(old, new):
            if o == n:
                continue
            for attr, val in vars(m).items():
                if type(val) is int and val == o and not attr.startswith("_"):
                    edits[(id(m), attr)] = (m, attr, o, n)
    return list(edits.values())


# ---------------------------------------------------------------------------------------------- zeroing


def zero_units(model: nn.Module, units: Sequence[Unit]) -> nn.Module:
    """A copy of ``model`` (the dense original) with the units' producing channels / heads set to zero.

    Zeroes conv/linear output rows and biases, norm scales and shifts, attention heads' q/k/v rows and every
    free parameter slot (class token, position embedding, layer scale); input slices and running statistics
    stay. With a per-channel norm (BatchNorm) or none, the removed channels then contribute nothing, so the
    output equals the pruned model's (before fine-tuning).
    """
    model = copy.deepcopy(model).eval()
    mods = dict(model.named_modules())
    per: dict[tuple, set[int]] = {}
    for u in units:
        for s in u.slots:
            if s.side is not Side.IN:
                per.setdefault(s.family, set()).add(s.index)
    with torch.no_grad():
        for fam, idx in per.items():
            idx = sorted(idx)
            if isinstance(fam[1], Side):
                m = mods[fam[0]]
                find_handler(type(m)).zero(m, fam[1], idx)
                continue
            owner, _, attr = fam[0].rpartition(".")
            t = getattr(model.get_submodule(owner) if owner else model, attr)
            if isinstance(t, nn.Parameter):
                t.index_fill_(fam[1], torch.tensor(idx, dtype=torch.long), 0.0)
    return model


__all__ = ["PrunedModelKind", "PruneResult", "ATTRIBUTE_SYNC", "register_attribute_sync", "sync_attributes",
           "apply_removal", "zero_units", "LayerSlot", "ParamSlot"]
