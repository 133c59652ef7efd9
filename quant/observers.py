"""Calibration observers: watch activations, then choose the range ``[lo, hi]`` a quantizer covers.

Each observer has ``update(x)`` (called on every calibration batch) and ``range() -> (lo, hi)``; turn the range
into a scale and zero point with :func:`edgekit.quant.config.qparams`. Pick one by name with
:func:`make_observer` (``minmax``, ``moving_average``, ``percentile``, ``mse``, ``entropy``).

- min-max: the extreme values seen.
- moving-average min-max: an exponential moving average of each batch's extremes (momentum 0.9), as in
  Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
  Inference" (CVPR 2018).
- percentile: the p-th / (100-p)-th percentiles (clips rare outliers).
- MSE: the clipping range that minimises the mean squared quantization error of the observed values
  (grid search over fractions of the extreme range).
- entropy: the clipping threshold that minimises the KL divergence between the histogram of the values
  and its quantized version (Migacz, "8-bit Inference with TensorRT", GTC 2017).

The histogram-based observers keep a bounded random sample of the values (``max_samples``), so their
memory does not grow with the number of calibration batches.
"""

from __future__ import annotations

import math

import torch

from edgekit.quant.config import QScheme, qparams
from edgekit.registry import Registry

OBSERVERS: Registry[type] = Registry("calibration method")


class Observer:
    """Base: tracks the running min and max; subclasses refine :meth:`range`."""

    def __init__(self, scheme: QScheme, **_: object) -> None:
        self.scheme = scheme
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self.batches = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)
        self.batches += 1

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None:
            raise RuntimeError("observer saw no data: calibration did not reach this tensor")
        return self.lo, self.hi

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.range()
        return qparams(lo, hi, self.scheme)


@OBSERVERS.register("minmax")
class MinMaxObserver(Observer):
    """The extremes seen over all calibration batches."""


@OBSERVERS.register("moving_average")
class MovingAverageMinMaxObserver(Observer):
    """EMA of per-batch min and max: ``r <- momentum * r + (1 - momentum) * r_batch``."""

    def __init__(self, scheme: QScheme, momentum: float = 0.9, **kw: object) -> None:
        super().__init__(scheme)
        self.momentum = momentum
        self.avg_lo: torch.Tensor | None = None
        self.avg_hi: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        x = x.detach().float()
        lo, hi = x.min(), x.max()
        if self.avg_lo is None:
            self.avg_lo, self.avg_hi = lo, hi
        else:
            m = self.momentum
            self.avg_lo = m * self.avg_lo + (1 - m) * lo
            self.avg_hi = m * self.avg_hi + (1 - m) * hi

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        super().range()
        return self.avg_lo, self.avg_hi


class _SampleObserver(Observer):
    """Keeps up to ``max_samples`` values (a uniform random subset of each batch) for range searches."""

    def __init__(self, scheme: QScheme, max_samples: int = 1 << 16, seed: int = 0, **kw: object) -> None:
        super().__init__(scheme)
        self.max_samples = max_samples
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self.gen = torch.Generator().manual_seed(seed)

    def update(self, x: torch.Tensor) -> None:
        super().update(x)
        flat = x.detach().float().reshape(-1)
        per_batch = max(1, self.max_samples // 16)
        if flat.numel() > per_batch:
            flat = flat[torch.randint(flat.numel(), (per_batch,), generator=self.gen)]
        self.samples.append(flat)
        self.count += flat.numel()
        if self.count > 2 * self.max_samples:  # thin out: keep a random half
            allv = torch.cat(self.samples)
            self.samples = [allv[torch.randperm(allv.numel(), generator=self.gen)[: self.max_samples]]]
            self.count = self.samples[0].numel()

    def values(self) -> torch.Tensor:
        super().range()
        return torch.cat(self.samples)

    def _nonneg(self) -> bool:
        return bool(self.lo >= 0)


@OBSERVERS.register("percentile")
class PercentileObserver(_SampleObserver):
    """``[q(100 - p), q(p)]`` of the observed values (``p = 99.99`` by default); ``lo = 0`` for ReLU outputs."""

    def __init__(self, scheme: QScheme, percentile: float = 99.99, **kw: object) -> None:
        super().__init__(scheme, **kw)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values()
        p = self.percentile / 100.0
        hi = torch.quantile(v, p)
        lo = torch.zeros(()) if self._nonneg() else torch.quantile(v, 1.0 - p)
        return lo, hi


def quant_error(v: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, scheme: QScheme) -> torch.Tensor:
    """Mean squared error of fake-quantizing ``v`` on the grid that covers ``[lo, hi]``."""
    scale, zp = qparams(lo, hi, scheme)
    q = torch.clamp(torch.round(v / scale) + zp, scheme.qmin, scheme.qmax)
    return ((q - zp) * scale - v).pow(2).mean()


@OBSERVERS.register("mse")
class MSEObserver(_SampleObserver):
    """Shrinks the min-max range by a factor in (0, 1] (``steps`` candidates) to minimise the quantization MSE."""

    def __init__(self, scheme: QScheme, steps: int = 100, **kw: object) -> None:
        super().__init__(scheme, **kw)
        self.steps = steps

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values()
        lo0, hi0 = self.lo, self.hi
        if self.scheme.symmetric:  # shrink the symmetric range, not the two ends independently
            hi0 = torch.maximum(-lo0, hi0)
            lo0 = -hi0 if bool(self.lo < 0) else torch.zeros_like(hi0)

        def err(f: float) -> float:
            return float(quant_error(v, lo0 * f, hi0 * f, self.scheme))

        # coarse grid over (0.1, 1], then a fine grid around the best coarse point
        coarse = [1.0 - i * 0.9 / self.steps * 5 for i in range(self.steps // 5 + 1)]
        best = min(coarse, key=err)
        step = 0.9 / self.steps
        fine = [min(1.0, max(0.05, best + k * step)) for k in range(-5, 6)]
        best = min(fine, key=err)
        return lo0 * best, hi0 * best


@OBSERVERS.register("entropy")
class EntropyObserver(_SampleObserver):
    """KL-divergence calibration on a 2048-bin histogram of ``|x|`` (TensorRT's entropy calibrator).

    For each candidate threshold ``i`` (bins), P = histogram[:i] with the clipped tail added to its last bin;
    Q = P merged into ``levels`` equal groups and spread back uniformly over each group's non-empty bins.
    The threshold minimising KL(P || Q) wins. Non-negative tensors use all levels on ``[0, t]``, signed
    tensors half of them on ``[-t, t]``.
    """

    def __init__(self, scheme: QScheme, bins: int = 2048, **kw: object) -> None:
        super().__init__(scheme, **kw)
        self.bins = bins

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values().abs()
        amax = float(v.max())
        if amax == 0.0:
            return torch.zeros(()), torch.zeros(())
        nonneg = self._nonneg()
        levels = self.scheme.levels + 1 if nonneg else (self.scheme.levels + 1) // 2
        hist = torch.histc(v, bins=self.bins, min=0.0, max=amax).double()
        best_i, best_kl = self.bins, math.inf
        start = min(levels, self.bins)
        for i in range(start, self.bins + 1, 16):
            p = hist[:i].clone()
            p[-1] += hist[i:].sum()
            kl = _kl_quantized(p, levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        t = torch.tensor((best_i + 0.5) * amax / self.bins).clamp(max=amax)
        return (torch.zeros(()) if nonneg else -t), t


def _kl_quantized(p: torch.Tensor, levels: int) -> float:
    """KL(P || Q) where Q quantizes the histogram P to ``levels`` groups (empty bins stay empty)."""
    n = p.numel()
    edges = torch.linspace(0, n, levels + 1).floor().long()
    q = torch.zeros_like(p)
    nz = p > 0
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if b <= a:
            continue
        cnt = int(nz[a:b].sum())
        if cnt:
            q[a:b] = torch.where(nz[a:b], p[a:b].sum() / cnt, torch.zeros(()))
    ps, qs = p / p.sum(), q / q.sum()
    mask = ps > 0
    return float((ps[mask] * torch.log(ps[mask] / qs[mask].clamp_min(1e-12))).sum())


def make_observer(method: str, scheme: QScheme, **options: object) -> Observer:
    """Build the observer registered as ``method`` (see :data:`OBSERVERS`)."""
    if method not in OBSERVERS.names():
        from edgekit.errors import UserInputError

        raise UserInputError(f"unknown calibration method {method!r}; accepted: {', '.join(OBSERVERS.names())}")
    return OBSERVERS.get(method)(scheme, **options)
