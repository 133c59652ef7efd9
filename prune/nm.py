"""N:M semi-structured sparsity: masks, eligibility, SR-STE and progressive gradient flow schedules.

* Mask: in every group of M consecutive weights along the input (reduction) dimension keep the N of largest
  magnitude. Linear weights [out, in] are grouped along ``in``; conv weights [out, in, kh, kw] are permuted to
  (out, kh, kw, in) so groups run along input channels: the layout TensorRT's sparse kernels use.
* Eligibility follows NVIDIA's ASP: out % 8 == 0 and in % 16 == 0 (and in % M == 0); depthwise convs skipped.
* SR-STE ("Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch", Zhou et al., ICLR 2021):
  forward W * M (mask recomputed from the dense weights every step); backward g + lambda * (1 - M) * W.
* Progressive gradient flow ("Progressive Gradient Flow for Robust N:M Sparsity Training in Transformers",
  Bambhaniya et al., 2024):
  MDGF (mask decay): forward W * (M + (1 - M) * alpha(t)), dense (straight-through) gradient; alpha linear
  max(0, 1 - c t) or exponential exp(-c t), t = optimizer steps after the dense phase; the last ``final``
  steps use the plain sparse step W * M (gradient masked).
  SDGF (structure decay): the sparse steps are split evenly over a sequence of patterns, e.g. for 1:8
  ``sparsify`` 7:8 -> 4:8 -> 2:8 -> 1:8 or ``fine`` 8:64 -> 4:32 -> 2:16 -> 1:8.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from edgekit.errors import UserInputError

SDGF_SCHEDULES = {
    # target (n, m) -> schedule name -> frames
    "sparsify": lambda n, m: [(k, m) for k in _halvings(m - 1, n)],
    "fine": lambda n, m: [(n * f, m * f) for f in (8, 4, 2, 1)],
}


def _halvings(start: int, end: int) -> list[int]:
    """7 -> 4 -> 2 -> 1 style: start, then powers of two down to ``end``."""
    out = [start]
    k = 2 ** int(math.floor(math.log2(max(1, start))))
    if k == start:
        k //= 2
    while k > end:
        out.append(k)
        k //= 2
    if out[-1] != end:
        out.append(end)
    return out


def _to_groups(w: torch.Tensor, m: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Weight -> (G, m) groups along the input dim in TensorRT's layout; returns the permuted shape."""
    if w.dim() == 2:
        perm = w
    elif w.dim() >= 3:
        perm = w.permute(0, *range(2, w.dim()), 1)  # out, kh, kw, in
    else:
        raise ValueError(f"N:M masks need a 2-D or 4-D weight, got {tuple(w.shape)}")
    if perm.shape[-1] % m:
        raise ValueError(f"input dimension {perm.shape[-1]} is not a multiple of M={m}")
    return perm.reshape(-1, m), tuple(perm.shape)


def _from_groups(g: torch.Tensor, shape: tuple[int, ...], ndim: int) -> torch.Tensor:
    t = g.reshape(shape)
    if ndim == 2:
        return t
    return t.permute(0, ndim - 1, *range(1, ndim - 1))


def nm_mask(w: torch.Tensor, n: int = 2, m: int = 4) -> torch.Tensor:
    """Float mask keeping the ``n`` largest-|w| weights of every ``m`` consecutive input weights."""
    if not 0 < n <= m:
        raise ValueError(f"N:M needs 0 < N <= M, got {n}:{m}")
    groups, shape = _to_groups(w.detach(), m)
    idx = groups.abs().topk(n, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, idx, 1.0)
    return _from_groups(mask, shape, w.dim())


def check_pattern(w: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` input weights has at most ``n`` nonzeros."""
    try:
        groups, _ = _to_groups(w.detach(), m)
    except ValueError:
        return False
    return bool(((groups != 0).sum(1) <= n).all())


def eligibility(module: nn.Module, m: int = 4, rule: str = "asp") -> tuple[bool, str]:
    """(eligible, reason): ASP rules (out % 8, in % 16), input dim a multiple of M, no depthwise/grouped."""
    if isinstance(module, nn.Linear):
        out, cin = module.out_features, module.in_features
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if module.groups > 1:
            return False, "depthwise conv" if module.groups == module.in_channels else "grouped conv"
        out, cin = module.out_channels, module.in_channels
    else:
        return False, f"{type(module).__name__} has no N:M kernel"
    if rule == "asp":
        if out % 8:
            return False, f"out {out} % 8 != 0"
        if cin % 16:
            return False, f"in {cin} % 16 != 0"
    if cin % m:
        return False, f"in {cin} % {m} != 0"
    return True, ""


def eligible_layers(model: nn.Module, m: int = 4, rule: str = "asp", ignore: Sequence[str] = ()) -> tuple[list[str], list[dict]]:
    chosen, skipped = [], []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in ignore):
            skipped.append({"layer": name, "reason": "ignored by pattern"})
            continue
        ok, why = eligibility(mod, m, rule)
        (chosen.append(name) if ok else skipped.append({"layer": name, "reason": why}))
    return chosen, skipped


# ---------------------------------------------------------------------------------------------- training


class _SRSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask, lam):
        ctx.save_for_backward(w, mask)
        ctx.lam = lam
        return w * mask

    @staticmethod
    def backward(ctx, g):
        w, mask = ctx.saved_tensors
        return g + ctx.lam * (1 - mask) * w, None, None


class _Decayed(torch.autograd.Function):
    """forward W * (M + (1 - M) * alpha); straight-through (dense) gradient."""

    @staticmethod
    def forward(ctx, w, mask, alpha):
        return w * (mask + (1 - mask) * alpha)

    @staticmethod
    def backward(ctx, g):
        return g, None, None


class _Masked(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, mask):
        ctx.save_for_backward(mask)
        return w * mask

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * mask, None


@dataclass
class Schedule:
    """Which mask and which forward rule apply at optimizer step ``t`` (shared by every layer)."""

    n: int = 2
    m: int = 4
    method: str = "srste"  # srste | mdgf | sdgf | masked
    lam: float = 2e-4
    decay: str = "exp"  # mdgf: linear | exp
    rate: float = 2e-4  # mdgf: c
    dense_steps: int = 0
    total_steps: int = 0
    final_steps: int = 0
    frames: list[tuple[int, int]] = field(default_factory=list)  # sdgf patterns
    step: int = 0

    def alpha(self, t: int | None = None) -> float:
        t = max(0, (self.step if t is None else t) - self.dense_steps)
        if self.decay == "linear":
            return max(0.0, 1.0 - self.rate * t)
        return math.exp(-self.rate * t)

    def frame(self, t: int | None = None) -> tuple[int, int]:
        """SDGF: the (n, m) pattern at step t (sparse steps split evenly over the frames)."""
        if not self.frames:
            return self.n, self.m
        t = max(0, (self.step if t is None else t) - self.dense_steps)
        sparse = max(1, self.total_steps - self.dense_steps)
        i = min(len(self.frames) - 1, int(t * len(self.frames) / sparse))
        return self.frames[i]

    def phase(self) -> str:
        if self.step < self.dense_steps:
            return "dense"
        if self.method in ("mdgf",) and self.total_steps and self.step >= self.total_steps - self.final_steps:
            return "final"
        return "sparse"


class NMWeight(nn.Module):
    """Parametrization ``weight -> sparse weight`` driven by a shared :class:`Schedule`."""

    def __init__(self, schedule: Schedule) -> None:
        super().__init__()
        self.schedule = schedule

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        s = self.schedule
        phase = s.phase()
        if phase == "dense":
            return w
        if s.method == "sdgf":
            n, m = s.frame()
            return _Decayed.apply(w, nm_mask(w, n, m), 0.0)
        mask = nm_mask(w, s.n, s.m)
        if s.method == "srste":
            return _SRSTE.apply(w, mask, s.lam)
        if s.method == "mdgf" and phase != "final":
            return _Decayed.apply(w, mask, s.alpha())
        return _Masked.apply(w, mask)


def attach(model: nn.Module, layers: Sequence[str], schedule: Schedule) -> None:
    mods = dict(model.named_modules())
    for name in layers:
        parametrize.register_parametrization(mods[name], "weight", NMWeight(schedule))


@torch.no_grad()
def finalize(model: nn.Module, layers: Sequence[str], n: int, m: int) -> None:
    """Remove the parametrizations and store the hard N:M-masked dense weights."""
    mods = dict(model.named_modules())
    for name in layers:
        mod = mods[name]
        if parametrize.is_parametrized(mod, "weight"):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)
        mod.weight.mul_(nm_mask(mod.weight, n, m))


@torch.no_grad()
def apply_masks(model: nn.Module, layers: Sequence[str], n: int, m: int) -> None:
    mods = dict(model.named_modules())
    for name in layers:
        mods[name].weight.mul_(nm_mask(mods[name].weight, n, m))


def sdgf_frames(n: int, m: int, schedule: str | Sequence[str]) -> list[tuple[int, int]]:
    if isinstance(schedule, str):
        if schedule not in SDGF_SCHEDULES:
            raise UserInputError(f"sparsify: sdgf schedule {schedule!r}; accepted: {', '.join(SDGF_SCHEDULES)} or a list like ['4:8', '2:8', '1:8']")
        return SDGF_SCHEDULES[schedule](n, m)
    return [parse_nm(s) for s in schedule]


def parse_nm(text: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in str(text).split(":"))
    except ValueError:
        raise UserInputError(f"N:M pattern {text!r}: expected 'N:M', e.g. '2:4'") from None
    if not 0 < a <= b:
        raise UserInputError(f"N:M pattern {text!r}: needs 0 < N <= M")
    return a, b


# ---------------------------------------------------------------------------------------------- inspection

_CANDIDATE_M = (4, 8, 16, 32, 64)


def describe_pattern(model: nn.Module) -> list[dict[str, Any]]:
    """Per conv/linear layer: the tightest N:M pattern its weight satisfies and its zero fraction.

    ``n``/``m`` are None when no candidate M (4, 8, 16, 32, 64) shows a pattern sparser than dense.
    """
    rows = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)) or w is None:
            continue
        rows.append({"layer": name, **pattern_of(w.detach())})
    return rows


def pattern_of(w: torch.Tensor) -> dict[str, Any]:
    sparsity = float((w == 0).float().mean())
    best = (None, None)
    best_density = 1.0
    for m in _CANDIDATE_M:
        try:
            groups, _ = _to_groups(w, m)
        except ValueError:
            continue
        n = int((groups != 0).sum(1).max())
        if n < m and n / m < best_density - 1e-9:
            best, best_density = (n, m), n / m
    return {"n": best[0], "m": best[1], "sparsity": sparsity}


def compressed_bytes(w: torch.Tensor, n: int, m: int, value_bytes: int = 2) -> int:
    """Size in a compressed N:M format: the N kept values per group plus ceil(log2 M) index bits each
    (2:4 -> 2 bits of metadata per kept value, as in NVIDIA's sparse tensor cores)."""
    groups = w.numel() // m
    bits = max(1, math.ceil(math.log2(m)))
    return groups * n * value_bytes + math.ceil(groups * n * bits / 8)


__all__ = ["nm_mask", "check_pattern", "eligibility", "eligible_layers", "Schedule", "NMWeight", "attach",
           "finalize", "apply_masks", "sdgf_frames", "parse_nm", "describe_pattern", "pattern_of",
           "compressed_bytes"]
