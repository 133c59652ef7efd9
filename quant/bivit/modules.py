"""Binarized layers for BiViT (He et al., "BiViT: Extremely Compressed Binary Vision Transformers", ICCV 2023).

* :class:`BinaryLinear`: binary weights ``alpha * sign(W - rowmean W)`` (learnable per-channel ``alpha``) and
  binary (``act_bits=1``: ``mean|x - b| * sign(x - b)`` with a learnable per-feature threshold ``b``, the
  RSign of ReActNet), 8-bit (``act_bits=8``) or float (``act_bits=32``) inputs. After :meth:`freeze` it holds
  the weights packed 1 bit each (uint8 buffer ``packed_weight``) and unpacks them in ``forward``, so a
  ``torch.export`` of the model stores 1 bit per binarized weight; the per-channel scales ``alpha``, the bias
  and the activation thresholds become float16 buffers (rounded once, at freeze; computed in float32).
  :meth:`storage_bytes` counts exactly that.
* :class:`BinaryMatMul`: replaces ``Attention.matmul_qk`` / ``matmul_av``; binarizes its operands (scales over
  the contraction dimension) or fake-quantizes them to int8.
* :class:`BinarySoftmax`: replaces ``Attention.softmax``; softmax-aware binarization of the probabilities
  (``A = 1[P >= 0.25 * rowmax P]``, computed from the scores as ``s - rowmax s >= ln 0.25`` so that no
  runtime's ``exp`` decides a threshold; straight-through via the softmax gradient) or the naive ablation.

Every module belongs to a ``group`` ("attn", "mlp" or "linear") and can be switched off (``active=False``,
it then computes in float) so that the cross-layer schedule binarizes the groups in separate phases.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from edgekit.quant.bivit import functional as BF
from edgekit.quant.bivit.pack import pack_signs, packed_nbytes, unpack_signs_torch

__all__ = ["BinaryLinear", "BinaryMatMul", "BinarySoftmax", "freeze", "binary_modules", "set_active"]

ActBits = Literal[1, 8, 32]
SIDE_DTYPE = torch.float16  # storage of alpha / bias / act_shift once frozen
_SIDE = ("alpha", "bias", "act_shift")


def _f32(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype == torch.float32 else t.to(torch.float32)


class _Switchable(nn.Module):
    group: str
    active: bool

    def extra_repr(self) -> str:
        return f"group={self.group}, active={self.active}"


class BinaryLinear(_Switchable):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, act_bits: ActBits = 1,
                 group: str = "linear", act_shift: bool = True, act_shift_init: float = 0.0) -> None:
        super().__init__()
        if act_bits not in (1, 8, 32):
            raise ValueError(f"BinaryLinear: act_bits must be 1, 8 or 32, got {act_bits}")
        self.in_features, self.out_features = in_features, out_features
        self.act_bits = act_bits
        self.group = group
        self.active = True
        self.frozen = False
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        self.alpha = nn.Parameter(BF.init_alpha(self.weight))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.act_shift = (nn.Parameter(torch.full((in_features,), float(act_shift_init)))
                          if (act_bits == 1 and act_shift) else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, act_bits: ActBits = 1, group: str = "linear",
                    act_shift: bool = True, act_shift_init: float = 0.0) -> "BinaryLinear":
        m = cls(linear.in_features, linear.out_features, linear.bias is not None, act_bits, group, act_shift,
                act_shift_init)
        with torch.no_grad():
            m.weight.copy_(linear.weight)
            m.alpha.copy_(BF.init_alpha(linear.weight))
            if linear.bias is not None:
                m.bias.copy_(linear.bias)
        return m.to(linear.weight.device)

    # ------------------------------------------------------------------ state

    def set_active(self, active: bool) -> None:
        """Switch binarization on/off. Switching it on re-initialises ``alpha`` to ``rowmean|W|`` of the
        current weights (binarization starts from the weights the float phase left)."""
        if self.frozen and not active:
            raise ValueError("a frozen BinaryLinear cannot be switched back to float")
        if active and not self.active and not self.frozen:
            with torch.no_grad():
                self.alpha.copy_(BF.init_alpha(self.weight))
        self.active = active

    def signs(self) -> torch.Tensor:
        """The +-1 weight matrix (out, in)."""
        if self.frozen:
            return unpack_signs_torch(self.packed_weight, self.in_features)
        return BF.weight_signs(self.weight)

    def freeze(self) -> None:
        """Replace the latent float weights by their packed signs (1 bit each) and store ``alpha``, bias and
        thresholds in float16; idempotent."""
        if self.frozen:
            return
        packed = torch.from_numpy(pack_signs(BF.weight_signs(self.weight))).to(self.weight.device)
        del self.weight
        self.register_buffer("packed_weight", packed)
        for name in _SIDE:
            t = getattr(self, name)
            if t is not None:
                delattr(self, name)
                self.register_buffer(name, t.detach().to(SIDE_DTYPE))
        self.frozen = True
        self.active = True

    def to_float(self) -> nn.Linear:
        """The float layer this one was made from (only before freezing)."""
        if self.frozen:
            raise ValueError("a frozen BinaryLinear has no float weights any more")
        lin = nn.Linear(self.in_features, self.out_features, self.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.bias is not None:
                lin.bias.copy_(self.bias)
        return lin

    # ------------------------------------------------------------------ compute

    def binary_weight(self) -> torch.Tensor:
        """``alpha * signs`` (out, in): the effective weight."""
        return self._signs_ste() * _f32(self.alpha).unsqueeze(1)

    def _signs_ste(self) -> torch.Tensor:
        if self.frozen:
            return unpack_signs_torch(self.packed_weight, self.in_features, torch.float32)
        return BF.weight_signs_ste(self.weight, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return F.linear(x, self.weight, self.bias)
        signs = self._signs_ste()
        alpha = _f32(self.alpha)
        if self.act_bits == 1:
            if self.act_shift is not None:
                x = x - _f32(self.act_shift)
            scale = x.abs().mean(dim=-1, keepdim=True)
            # +-1 product first (exact integers), scales after: see functional's docstring
            y = F.linear(BF.sign_ste(x, self.training), signs) * scale * alpha
        elif self.act_bits == 8:
            q, scale = BF.int8_codes(x, self.training)
            y = F.linear(q, signs) * scale * alpha  # integer product first, exact (see functional)
        else:
            y = F.linear(x, signs) * alpha
        return y + _f32(self.bias) if self.bias is not None else y

    def param_count(self) -> int:
        """Logical weights (frozen layers hold them packed in buffers, which are not parameters)."""
        return self.out_features * self.in_features + (self.out_features if self.bias is not None else 0)

    def storage_bytes(self) -> int:
        """Deployed size: 1 bit per weight (rows padded to bytes) + float16 scales, bias and thresholds."""
        if not self.active and not self.frozen:
            return self.weight.numel() * 4 + (self.bias.numel() * 4 if self.bias is not None else 0)
        side = sum(getattr(self, n).numel() for n in _SIDE if getattr(self, n) is not None)
        return packed_nbytes(self.out_features, self.in_features) + side * SIDE_DTYPE.itemsize

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, act_bits={self.act_bits}, "
                f"frozen={self.frozen}, " + super().extra_repr())


class BinaryMatMul(_Switchable):
    """``a @ b`` with binarized (``bits=1``) or int8 fake-quantized (``bits=8``) operands.

    Binary operands are scaled over the contraction dimension (rows of ``a``, columns of ``b``), so the
    product is a popcount times an outer product of scales. ``binarize_a=False`` leaves ``a`` as it is
    (the 0/1 attention map of :class:`BinarySoftmax`); ``normalize_a=True`` then divides each output row by the
    number of ones in that row of ``a`` (the mean over the selected tokens, so the output keeps the scale of a
    softmax-weighted average; one scalar per row, the count is not differentiated).
    """

    def __init__(self, bits: ActBits = 1, binarize_a: bool = True, group: str = "attn", normalize_a: bool = False) -> None:
        super().__init__()
        self.bits, self.binarize_a, self.group, self.active = bits, binarize_a, group, True
        self.normalize_a = normalize_a

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.active and self.bits == 1:
            # +-1 (or 0/1) product first, exact in float32; the scales after it (see functional's docstring)
            sb = b.abs().mean(dim=-2, keepdim=True)
            if self.binarize_a:
                sa = a.abs().mean(dim=-1, keepdim=True)
                return (BF.sign_ste(a, self.training) @ BF.sign_ste(b, self.training)) * sa * sb
            out = (a @ BF.sign_ste(b, self.training)) * sb
            if self.normalize_a:
                out = out / BF.stop_gradient(a, self.training).sum(dim=-1, keepdim=True).clamp_min(1.0)
            return out
        if self.active and self.bits == 8:
            (qa, sa), (qb, sb) = BF.int8_codes(a, self.training), BF.int8_codes(b, self.training)
            return (qa @ qb) * sa * sb  # integer product first, exact (see functional)
        return a @ b

    def extra_repr(self) -> str:
        return f"bits={self.bits}, binarize_a={self.binarize_a}, normalize_a={self.normalize_a}, " + super().extra_repr()


class BinarySoftmax(_Switchable):
    """Softmax whose probabilities are binarized: ``softmax_aware`` (BiViT) or ``naive`` (ablation)."""

    def __init__(self, dim: int = -1, mode: Literal["softmax_aware", "naive"] = "softmax_aware",
                 ratio: float = BF.SOFTMAX_THRESHOLD, group: str = "attn") -> None:
        super().__init__()
        if mode not in ("softmax_aware", "naive"):
            raise ValueError(f"BinarySoftmax: mode must be 'softmax_aware' or 'naive', got {mode!r}")
        self.dim, self.mode, self.ratio, self.group, self.active = dim, mode, ratio, group, True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return torch.softmax(x, dim=self.dim)
        last = self.dim in (-1, x.dim() - 1)
        if not last:
            x = x.transpose(self.dim, -1)
        if self.mode == "softmax_aware":
            # the mask from the scores (s - rowmax s >= ln ratio, no exp); the softmax only for the gradient
            a = BF.softmax_aware_mask(x, self.ratio, self.training)
            if self.training and torch.is_grad_enabled() and x.requires_grad:
                p = torch.softmax(x, dim=-1)
                a = a - p.detach() + p
        else:
            a = BF.naive_binarize_probs(torch.softmax(x, dim=-1), self.training)
        return a if last else a.transpose(self.dim, -1)

    def extra_repr(self) -> str:
        return f"mode={self.mode}, ratio={self.ratio}, " + super().extra_repr()


# ----------------------------------------------------------------------------------------------- model-wide


def binary_modules(model: nn.Module) -> list[tuple[str, _Switchable]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, _Switchable)]


def set_active(model: nn.Module, groups: set[str] | list[str] | tuple[str, ...]) -> dict[str, bool]:
    """Binarize exactly the modules whose group is in ``groups``; the others compute in float."""
    groups = set(groups)
    state = {}
    for name, m in binary_modules(model):
        on = m.group in groups
        if isinstance(m, BinaryLinear):
            if m.frozen:
                continue
            m.set_active(on)
        else:
            m.active = on
        state[name] = on
    return state


def freeze(model: nn.Module) -> dict[str, list[str]]:
    """Deploy form, in place: active BinaryLinear layers are packed; inactive binary modules (a group that
    the schedule never switched on) go back to float layers. Returns the names of both kinds."""
    packed, reverted = [], []
    for name, m in list(binary_modules(model)):
        if isinstance(m, BinaryLinear):
            if m.active or m.frozen:
                m.freeze()
                packed.append(name)
            else:
                _replace(model, name, m.to_float())
                reverted.append(name)
        elif not m.active:
            reverted.append(name)  # float when inactive; kept as is (its forward is the float op)
    return {"packed": packed, "reverted_to_float": reverted}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
