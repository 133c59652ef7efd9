"""AdaRound: learn, per weight, whether to round down or up, so that the layer's output on calibration data
changes least ("Up or Down? Adaptive Rounding for Post-Training Quantization", Nagel et al., ICML 2020).

For a layer with weight ``W`` on a per-output-channel grid of scale ``s`` (zero point 0, range [qmin, qmax]):

    W~ = s * clip(floor(W / s) + h(V), qmin, qmax),   h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)

with ``zeta = 1.1``, ``gamma = -0.1``. ``V`` starts where ``h(V)`` equals the fractional part of ``W / s``
(so the soft weight starts at the float weight) and is trained to minimise

    || f(x; W) - f(x; W~) ||^2  +  lambda * sum(1 - |2 h(V) - 1| ** beta)

on the layer's own calibration inputs ``x``; the regulariser pushes every ``h`` to 0 or 1 while ``beta`` is
annealed from 20 to 2 (after a warm-up without it, 20% of the iterations, as in the paper). At the end each
weight is rounded up where ``h(V) >= 0.5`` and down otherwise. Round-to-nearest is the special case where
every ``h`` is the rounded fractional part.

This module is the algorithm only (framework-neutral beyond torch); :func:`adaround_model` applies it to
every Conv / Linear layer the quantizer will quantize, replacing the float weight by its rounded value on
the grid, so that the quantizer's own round-to-nearest then reproduces the learned rounding exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class AdaRoundOptions:
    iters: int = 1000
    lr: float = 1e-2
    reg: float = 0.01  # lambda
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2  # fraction of iterations without the rounding regulariser
    batch: int = 32
    seed: int = 0


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _init_v(frac: torch.Tensor) -> torch.Tensor:
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def channel_scale(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric per-output-channel scale ``max|W| / qmax``, shaped to broadcast over ``weight``."""
    amax = weight.detach().abs().flatten(1).amax(dim=1).clamp(min=torch.finfo(torch.float32).eps)
    return (amax / qmax).view(-1, *([1] * (weight.dim() - 1)))


def adaround(layer_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weight: torch.Tensor, scale: torch.Tensor,
             qmin: int, qmax: int, inputs: torch.Tensor, opts: AdaRoundOptions = AdaRoundOptions()) -> tuple[torch.Tensor, dict]:
    """Learned integer weights ``q`` (same shape as ``weight``) for ``layer_fn(x, w)`` on ``inputs``.

    Returns ``(q, stats)``: ``stats`` has the output MSE of nearest rounding and of AdaRound on ``inputs``
    and the fraction of weights whose rounding differs from nearest.
    """
    w = weight.detach().float()
    s = scale.detach().float()
    base = torch.floor(w / s)
    nearest = torch.clamp(torch.round(w / s), qmin, qmax)
    v = _init_v(w / s - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=opts.lr)
    gen = torch.Generator().manual_seed(opts.seed)
    with torch.no_grad():
        target = layer_fn(inputs, w)
    n = inputs.shape[0]
    start = int(opts.iters * opts.warmup)
    for it in range(opts.iters):
        idx = torch.randint(0, n, (min(opts.batch, n),), generator=gen)
        soft = s * torch.clamp(base + _h(v), qmin, qmax)
        loss = F.mse_loss(layer_fn(inputs[idx], soft), target[idx], reduction="mean")
        if it >= start:
            t = (it - start) / max(1, opts.iters - start)
            beta = opts.beta[1] + 0.5 * (opts.beta[0] - opts.beta[1]) * (1 + math.cos(math.pi * t))
            loss = loss + opts.reg * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum() / w[0].numel()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.clamp(base + (_h(v) >= 0.5).float(), qmin, qmax)
        mse_nearest = F.mse_loss(layer_fn(inputs, s * nearest), target).item()
        mse_ada = F.mse_loss(layer_fn(inputs, s * q), target).item()
    return q, {"mse_nearest": mse_nearest, "mse_adaround": mse_ada, "flipped": float((q != nearest).float().mean())}


def _layer_fn(mod: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x, w)``: the layer's computation with weight ``w`` (nn.Conv2d / nn.Linear or their int8 forms)."""
    from edgekit.quant.fakequant import QuantConv2d, QuantLinear

    if isinstance(mod, (nn.Conv2d, QuantConv2d)):
        return lambda x, w: F.conv2d(x, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
    if isinstance(mod, (nn.Linear, QuantLinear)):
        return lambda x, w: F.linear(x, w, mod.bias)
    raise TypeError(f"AdaRound handles Conv2d and Linear layers, not {type(mod).__name__}")


def _layer_inputs(model: nn.Module, layers: dict[str, nn.Module], calib: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    captured: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: captured[n].append(a[0].detach())) for n, m in layers.items()]
    try:
        with torch.no_grad():
            for chunk in calib.split(batch_size):
                model(chunk)
    finally:
        for h in hooks:
            h.remove()
    return {n: torch.cat(xs) for n, xs in captured.items()}


def adaround_layers(model: nn.Module, layers: dict[str, nn.Module], calib: torch.Tensor, bits: int = 8,
                    opts: AdaRoundOptions = AdaRoundOptions(), batch_size: int = 64, samples: int = 256) -> dict:
    """Round the weights of ``layers`` (name -> module of ``model``) with AdaRound, in place.

    The layers' inputs come from running ``model`` as it is (float: the quantizer calls this before its
    activation quantizers are set) on ``calib[:samples]``. Each weight is replaced by ``scale * q`` on the
    symmetric per-channel grid of ``bits`` bits (``qmax = 2**(bits-1) - 1``), which the quantizer's max-abs
    scale reproduces exactly, so its round-to-nearest then yields ``q``. Returns the per-layer report.
    """
    from edgekit.quant.fakequant import ActFakeQuant, ActMode

    qmax = 2 ** (bits - 1) - 1
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    modes = [q.mode for q in quants]
    for q in quants:
        q.mode = ActMode.OFF  # plain float forward: observers see the calibration data once, in calibrate()
    was_training = model.training
    model.eval()
    try:
        inputs = _layer_inputs(model, layers, calib[:samples], batch_size)
    finally:
        for q, mode in zip(quants, modes):
            q.mode = mode
    report = {}
    for n, mod in layers.items():
        x = inputs[n]
        if x.dim() > 2 and not hasattr(mod, "stride"):
            x = x.reshape(-1, x.shape[-1])[:4096]  # a linear layer on tokens: every token is a sample
        scale = channel_scale(mod.weight, qmax)
        q, stats = adaround(_layer_fn(mod), mod.weight, scale, -qmax, qmax, x, opts)
        with torch.no_grad():
            mod.weight.copy_(scale * q)
        report[n] = {k: round(v, 6) for k, v in stats.items()}
    model.train(was_training)
    return {"bits": bits, "iters": opts.iters, "layers": report}


def adaround_model(model: nn.Module, calib: torch.Tensor, layers: list[str], bits: int = 8,
                   opts: AdaRoundOptions = AdaRoundOptions(), samples: int = 256) -> tuple[nn.Module, dict]:
    """:func:`adaround_layers` on the named Conv2d / Linear layers of a float ``model``; returns ``(model, report)``."""
    mods = dict(model.named_modules())
    missing = [n for n in layers if not isinstance(mods.get(n), (nn.Conv2d, nn.Linear))]
    if missing:
        raise ValueError(f"AdaRound: not Conv2d/Linear layers of the model: {', '.join(missing)}")
    return model, adaround_layers(model, {n: mods[n] for n in layers}, calib, bits, opts, samples=samples)
