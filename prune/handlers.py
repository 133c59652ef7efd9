"""Per-layer-type pruning handlers with a symmetric interface (prune out-channels / prune in-channels).

A handler describes a leaf layer to the dependency graph (:mod:`edgekit.prune.graph`): which tensor dimension
carries its input and output channels, whether input and output are coupled (BatchNorm, LayerNorm, depthwise
convs), how many internal units it has (attention heads), and how to remove or zero a set of indices. The
graph never looks inside a handled layer. Register a handler for your own layer type with
:func:`register_handler`::

    @register_handler(MyGatedConv)
    class MyGatedConvHandler(ConvHandler):
        ...

``tensors(m, side, get)`` returns ``(tensor, dim)`` pairs whose slices along ``dim`` belong to the unit index
(importance criteria read them; ``get`` maps a parameter to the tensor to score, e.g. ``p * p.grad``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from edgekit.ops.convbn import ConvBN
from edgekit.ops.transformer import Attention
from edgekit.registry import KeyedRegistry
from edgekit.prune.slots import Coupling, Depthwise, Grouped, Independent, Same, Side

Get = Callable[[torch.Tensor], torch.Tensor]

HANDLERS: KeyedRegistry["Handler"] = KeyedRegistry("pruning handler")  # by layer type, found along the MRO


def register_handler(*layer_types: type) -> Callable:
    """Class decorator: register a :class:`Handler` subclass (instantiated once) for ``layer_types``."""

    def decorator(cls):
        inst = cls() if isinstance(cls, type) else cls
        for t in layer_types:
            HANDLERS.add(t, inst, replace=True)  # a user's handler may replace a built-in one
        return cls

    return decorator


def find_handler(layer_type: type) -> "Handler | None":
    return HANDLERS.lookup(layer_type)


def handled_types() -> list[str]:
    return HANDLERS.names()


def _keep(n: int, idx: Sequence[int]) -> torch.Tensor:
    drop = set(int(i) for i in idx)
    return torch.tensor([i for i in range(n) if i not in drop], dtype=torch.long)


def _set(m: nn.Module, name: str, t: torch.Tensor | None) -> None:
    old = getattr(m, name, None)
    if old is None or t is None:
        return
    if isinstance(old, nn.Parameter):
        setattr(m, name, nn.Parameter(t.detach().clone(), requires_grad=old.requires_grad))
    else:
        m.register_buffer(name, t.detach().clone())


def _select(m: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    t = getattr(m, name, None)
    if t is not None:
        _set(m, name, t.detach().index_select(dim, keep))


class Handler:
    """Base class. Subclasses override what differs; the defaults describe a per-channel layer."""

    def in_dim(self, m: nn.Module) -> int:
        return 1

    def out_dim(self, m: nn.Module) -> int:
        return 1

    def channels(self, m: nn.Module, side: Side) -> int:
        raise NotImplementedError

    def coupling(self, m: nn.Module) -> Coupling:
        return Independent()

    def internal_units(self, m: nn.Module) -> int:
        return 0

    def prune_out(self, m: nn.Module, idx: Sequence[int]) -> None:
        raise NotImplementedError

    def prune_in(self, m: nn.Module, idx: Sequence[int]) -> None:
        raise NotImplementedError

    def prune_internal(self, m: nn.Module, idx: Sequence[int]) -> None:
        raise NotImplementedError(f"{type(m).__name__} has no internal units")

    def zero_out(self, m: nn.Module, idx: Sequence[int]) -> None:
        raise NotImplementedError

    def zero_internal(self, m: nn.Module, idx: Sequence[int]) -> None:
        raise NotImplementedError

    def tensors(self, m: nn.Module, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        return []

    def norm_tensors(self, m: nn.Module, get: Get) -> list[tuple[torch.Tensor, int]]:
        """The per-channel scales of a normalisation the layer applies (for ``bn_gamma`` importance)."""
        return []

    def prune(self, m: nn.Module, side: Side, idx: Sequence[int]) -> None:
        {Side.OUT: self.prune_out, Side.IN: self.prune_in, Side.INTERNAL: self.prune_internal}[side](m, idx)

    def zero(self, m: nn.Module, side: Side, idx: Sequence[int]) -> None:
        """Zero what produces the indices (inputs are not zeroed: they follow their producers)."""
        if side is Side.OUT:
            self.zero_out(m, idx)
        elif side is Side.INTERNAL:
            self.zero_internal(m, idx)


@register_handler(nn.Conv1d, nn.Conv2d, nn.Conv3d)
class ConvHandler(Handler):
    def channels(self, m: nn.Conv2d, side: Side) -> int:
        return m.out_channels if side is Side.OUT else m.in_channels

    def coupling(self, m: nn.Conv2d) -> Coupling:
        if m.groups == 1:
            return Independent()
        if m.groups == m.in_channels:
            return Depthwise(m.out_channels // m.in_channels)
        return Grouped(m.groups)

    def prune_out(self, m: nn.Conv2d, idx: Sequence[int]) -> None:
        keep = _keep(m.out_channels, idx)
        _select(m, "weight", 0, keep)
        _select(m, "bias", 0, keep)
        m.out_channels = len(keep)

    def prune_in(self, m: nn.Conv2d, idx: Sequence[int]) -> None:
        if m.groups == 1:
            keep = _keep(m.in_channels, idx)
            _select(m, "weight", 1, keep)
            m.in_channels = len(keep)
        elif m.groups == m.in_channels:  # depthwise: out-channels were removed by prune_out
            m.in_channels -= len(idx)
            m.groups = m.in_channels
        else:  # grouped: the same within-group positions were removed in every group
            cin_g = m.in_channels // m.groups
            pos = sorted({int(i) % cin_g for i in idx})
            keep = _keep(cin_g, pos)
            _select(m, "weight", 1, keep)
            m.in_channels = len(keep) * m.groups

    def zero_out(self, m: nn.Conv2d, idx: Sequence[int]) -> None:
        with torch.no_grad():
            m.weight[list(idx)] = 0
            if m.bias is not None:
                m.bias[list(idx)] = 0

    def tensors(self, m: nn.Conv2d, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        w = get(m.weight)
        if side is Side.OUT:
            out = [(w, 0)]
            if m.bias is not None:
                out.append((get(m.bias), 0))
            return out
        if m.groups == 1:
            return [(w, 1)]
        if m.groups == m.in_channels:
            return []  # depthwise in == out slots, already scored on the out side
        return []  # grouped: in-slots span every group; the out side of the producer scores them


@register_handler(nn.Linear)
class LinearHandler(Handler):
    def in_dim(self, m: nn.Linear) -> int:
        return -1

    def out_dim(self, m: nn.Linear) -> int:
        return -1

    def channels(self, m: nn.Linear, side: Side) -> int:
        return m.out_features if side is Side.OUT else m.in_features

    def prune_out(self, m: nn.Linear, idx: Sequence[int]) -> None:
        keep = _keep(m.out_features, idx)
        _select(m, "weight", 0, keep)
        _select(m, "bias", 0, keep)
        m.out_features = len(keep)

    def prune_in(self, m: nn.Linear, idx: Sequence[int]) -> None:
        keep = _keep(m.in_features, idx)
        _select(m, "weight", 1, keep)
        m.in_features = len(keep)

    def zero_out(self, m: nn.Linear, idx: Sequence[int]) -> None:
        with torch.no_grad():
            m.weight[list(idx)] = 0
            if m.bias is not None:
                m.bias[list(idx)] = 0

    def tensors(self, m: nn.Linear, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        if side is Side.OUT:
            return [(get(m.weight), 0)] + ([(get(m.bias), 0)] if m.bias is not None else [])
        return [(get(m.weight), 1)]


@register_handler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.InstanceNorm2d)
class BatchNormHandler(Handler):
    def channels(self, m: nn.BatchNorm2d, side: Side) -> int:
        return m.num_features

    def coupling(self, m: nn.Module) -> Coupling:
        return Same()

    def prune_out(self, m: nn.BatchNorm2d, idx: Sequence[int]) -> None:
        keep = _keep(m.num_features, idx)
        for name in ("weight", "bias", "running_mean", "running_var"):
            _select(m, name, 0, keep)
        m.num_features = len(keep)

    prune_in = prune_out

    def zero_out(self, m: nn.BatchNorm2d, idx: Sequence[int]) -> None:
        with torch.no_grad():
            if m.affine:
                m.weight[list(idx)] = 0
                m.bias[list(idx)] = 0
            else:
                raise ValueError("cannot zero channels of a non-affine BatchNorm")

    def tensors(self, m: nn.BatchNorm2d, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        return [(get(m.weight), 0)] if m.affine else []

    def norm_tensors(self, m: nn.Module, get: Get) -> list[tuple[torch.Tensor, int]]:
        return self.tensors(m, Side.OUT, get)


@register_handler(nn.LayerNorm)
class LayerNormHandler(BatchNormHandler):
    """LayerNorm over the last dimension only (its statistics change when channels are removed)."""

    def in_dim(self, m: nn.LayerNorm) -> int:
        return -1

    out_dim = in_dim

    def channels(self, m: nn.LayerNorm, side: Side) -> int:
        if len(m.normalized_shape) != 1:
            raise ValueError("LayerNorm over several dimensions is not prunable")
        return m.normalized_shape[0]

    def prune_out(self, m: nn.LayerNorm, idx: Sequence[int]) -> None:
        keep = _keep(m.normalized_shape[0], idx)
        _select(m, "weight", 0, keep)
        _select(m, "bias", 0, keep)
        m.normalized_shape = (len(keep),)

    prune_in = prune_out

    def zero_out(self, m: nn.LayerNorm, idx: Sequence[int]) -> None:
        with torch.no_grad():
            m.weight[list(idx)] = 0
            if m.bias is not None:
                m.bias[list(idx)] = 0

    def tensors(self, m: nn.LayerNorm, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        return [(get(m.weight), 0)] if m.weight is not None else []


# ---- edgekit's own blocks that hide a reshape (attention) or a mode switch (ConvBN)

_conv, _bn = ConvHandler(), BatchNormHandler()

@register_handler(ConvBN)
class ConvBNHandler(Handler):
    def channels(self, m: ConvBN, side: Side) -> int:
        return _conv.channels(m.conv, side)

    def coupling(self, m: ConvBN) -> Coupling:
        return _conv.coupling(m.conv)

    def prune_out(self, m: ConvBN, idx: Sequence[int]) -> None:
        _conv.prune_out(m.conv, idx)
        if m.bn is not None:
            _bn.prune_out(m.bn, idx)

    def prune_in(self, m: ConvBN, idx: Sequence[int]) -> None:
        _conv.prune_in(m.conv, idx)

    def zero_out(self, m: ConvBN, idx: Sequence[int]) -> None:
        _conv.zero_out(m.conv, idx)
        if m.bn is not None:
            _bn.zero_out(m.bn, idx)

    def tensors(self, m: ConvBN, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        out = _conv.tensors(m.conv, side, get)
        return out + (_bn.tensors(m.bn, side, get) if side is Side.OUT and m.bn is not None else [])

    def norm_tensors(self, m: ConvBN, get: Get) -> list[tuple[torch.Tensor, int]]:
        return _bn.tensors(m.bn, Side.OUT, get) if m.bn is not None else []

@register_handler(Attention)
class AttentionHandler(Handler):
    """edgekit's Attention: in = qkv inputs, out = proj outputs, internal units = heads."""

    def in_dim(self, m: Attention) -> int:
        return -1

    out_dim = in_dim

    def channels(self, m: Attention, side: Side) -> int:
        return m.proj.out_features if side is Side.OUT else m.qkv.in_features

    def internal_units(self, m: Attention) -> int:
        return m.num_heads

    def _qkv_rows(self, m: Attention, heads: Sequence[int]) -> list[int]:
        inner, hd = m.num_heads * m.head_dim, m.head_dim
        return [s * inner + h * hd + j for s in range(3) for h in heads for j in range(hd)]

    def prune_in(self, m: Attention, idx: Sequence[int]) -> None:
        LinearHandler().prune_in(m.qkv, idx)

    def prune_out(self, m: Attention, idx: Sequence[int]) -> None:
        LinearHandler().prune_out(m.proj, idx)

    def prune_internal(self, m: Attention, idx: Sequence[int]) -> None:
        lin = LinearHandler()
        lin.prune_out(m.qkv, self._qkv_rows(m, idx))
        lin.prune_in(m.proj, [h * m.head_dim + j for h in idx for j in range(m.head_dim)])
        m.num_heads -= len(idx)  # Attention's forward uses num_heads * head_dim as its inner width

    def zero_out(self, m: Attention, idx: Sequence[int]) -> None:
        LinearHandler().zero_out(m.proj, idx)

    def zero_internal(self, m: Attention, idx: Sequence[int]) -> None:
        LinearHandler().zero_out(m.qkv, self._qkv_rows(m, idx))

    def tensors(self, m: Attention, side: Side, get: Get) -> list[tuple[torch.Tensor, int]]:
        if side is Side.IN:
            return [(get(m.qkv.weight), 1)]
        if side is Side.OUT:
            return [(get(m.proj.weight), 0)]
        h, hd = m.num_heads, m.head_dim
        w = get(m.qkv.weight).reshape(3, h, hd, -1).transpose(0, 1).reshape(h, -1)
        p = get(m.proj.weight).reshape(-1, h, hd).transpose(0, 1).reshape(h, -1)
        out = [(w, 0), (p, 0)]
        if m.qkv.bias is not None:
            out.append((get(m.qkv.bias).reshape(3, h, hd).transpose(0, 1).reshape(h, -1), 0))
        return out
