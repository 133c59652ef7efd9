"""AdaRound: learn, per weight, whether to round down or up, so that the layer's output on calibration data
changes least ("Up or Down? Adaptive Rounding for Post-Training Quantization", Nagel et al., ICML 2020).

For a layer with weight ``W`` on a per-output-channel grid of scale ``s`` (zero point 0, range [qmin, qmax]):

    W~ = s * clip(floor(W / s) + h(V), qmin, qmax),   h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)

with ``zeta = 1.1``, ``gamma = -0.1`` (the rectified sigmoid). ``V`` starts where ``h(V)`` equals the
fractional part of ``W / s`` (so the soft weight starts at the float weight) and is trained with Adam to
minimise the paper's asymmetric reconstruction objective (its eq. 25)

    || f_a(W x) - f_a(W~ x^) ||^2  +  lambda * sum(1 - |2 h(V) - 1| ** beta)

where ``x`` is the layer's input in the float model, ``x^`` its input in the model whose preceding layers are
already rounded (and whose activation quantizers are on, when the quantizer has calibrated them), and
``f_a`` the activation that follows the layer when it is a ReLU / ReLU6 in the graph (identity otherwise:
then the loss is on the pre-activation output). The layers are therefore rounded one after another in
execution order. The squared error is summed over output channels and averaged over samples and positions,
the regulariser summed over the weights, ``lambda = 0.01``, as in the reference implementations. ``beta`` is
annealed from 20 to 2 (cosine) after a warm-up without the regulariser (20% of the iterations, as in the
paper). At the end each weight is rounded up where ``h(V) >= 0.5`` and down otherwise; a channel's largest
weight keeps its nearest rounding (+-qmax), so the quantizer's max-abs scale of the rounded weight is the
scale AdaRound used. Round-to-nearest is the special case where every ``h`` is the rounded fractional part.

This module is the algorithm only (framework-neutral beyond torch); :func:`adaround_layers` applies it to
every Conv / Linear layer the quantizer will quantize, replacing the float weight by its rounded value on
the grid, so that the quantizer's own round-to-nearest then reproduces the learned rounding exactly. It
returns the float weights too: bias correction, run after it, must measure ``(W - W~) x`` against them (the
module's weight is then already ``W~``); a bias shift leaves the learned rounding as it is.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

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
    asymmetric: bool = True  # inputs from the model with the preceding layers rounded (paper eq. 25); False: float inputs
    activation: bool = True  # the loss after the ReLU / ReLU6 that follows the layer, where one does


def _h(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _init_v(frac: torch.Tensor) -> torch.Tensor:
    p = ((frac - GAMMA) / (ZETA - GAMMA)).clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


def channel_scale(weight: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric per-output-channel scale ``max|W| / qmax``, shaped to broadcast over ``weight``."""
    amax = weight.detach().abs().flatten(1).amax(dim=1).clamp(min=torch.finfo(torch.float32).eps)
    return (amax / qmax).view(-1, *([1] * (weight.dim() - 1)))


def _recon(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over output channels (dim 1; the last dim of a token layer), mean over the rest."""
    d = (out - target).pow(2)
    return d.sum(dim=1 if d.dim() != 3 else -1).mean()


def adaround(layer_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], weight: torch.Tensor, scale: torch.Tensor,
             qmin: int, qmax: int, inputs: torch.Tensor, opts: AdaRoundOptions = AdaRoundOptions(),
             float_inputs: torch.Tensor | None = None, act: Callable[[torch.Tensor], torch.Tensor] | None = None,
             ) -> tuple[torch.Tensor, dict]:
    """Learned integer weights ``q`` (same shape as ``weight``) for ``layer_fn(x, w)``.

    The target is ``act(layer_fn(float_inputs, weight))`` (``float_inputs`` default to ``inputs``, ``act`` to
    the identity) and the rounded layer sees ``inputs``. Returns ``(q, stats)``: ``stats`` has the
    reconstruction error of nearest rounding and of AdaRound on all ``inputs`` and the fraction of weights
    whose rounding differs from nearest.
    """
    act = act or (lambda t: t)
    x_float = inputs if float_inputs is None else float_inputs
    w = weight.detach().float()
    s = scale.detach().float()
    base = torch.floor(w / s)
    nearest = torch.clamp(torch.round(w / s), qmin, qmax)
    v = _init_v(w / s - base).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=opts.lr)
    gen = torch.Generator().manual_seed(opts.seed)
    with torch.no_grad():
        target = act(layer_fn(x_float, w))
    n = inputs.shape[0]
    start = int(opts.iters * opts.warmup)
    for it in range(opts.iters):
        idx = torch.randint(0, n, (min(opts.batch, n),), generator=gen)
        soft = s * torch.clamp(base + _h(v), qmin, qmax)
        loss = _recon(act(layer_fn(inputs[idx], soft)), target[idx])
        if it >= start:
            t = (it - start) / max(1, opts.iters - start)
            beta = opts.beta[1] + 0.5 * (opts.beta[0] - opts.beta[1]) * (1 + math.cos(math.pi * t))
            loss = loss + opts.reg * (1 - (2 * _h(v) - 1).abs().pow(beta)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        q = torch.clamp(base + (_h(v) >= 0.5).float(), qmin, qmax)
        top = w.abs() >= w.abs().flatten(1).amax(dim=1).view_as(s) * (1 - 1e-6)
        q = torch.where(top, nearest, q)  # the channel's max keeps +-qmax: the quantizer's scale stays s
        err_nearest = _recon(act(layer_fn(inputs, s * nearest)), target).item()
        err_ada = _recon(act(layer_fn(inputs, s * q)), target).item()
    return q, {"mse_nearest": err_nearest, "mse_adaround": err_ada, "flipped": float((q != nearest).float().mean())}


def _layer_fn(mod: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``f(x, w)``: the layer's computation with weight ``w`` (nn.Conv2d / nn.Linear or their int8 forms)."""
    from edgekit.quant.fakequant import QuantConv2d, QuantLinear

    if isinstance(mod, (nn.Conv2d, QuantConv2d)):
        return lambda x, w: F.conv2d(x, w, mod.bias, mod.stride, mod.padding, mod.dilation, mod.groups)
    if isinstance(mod, (nn.Linear, QuantLinear)):
        return lambda x, w: F.linear(x, w, mod.bias)
    raise TypeError(f"AdaRound handles Conv2d and Linear layers, not {type(mod).__name__}")


_RELUS = {nn.ReLU: F.relu, nn.ReLU6: F.relu6}
_RELU_FNS = {F.relu: F.relu, torch.relu: F.relu, F.relu6: F.relu6}


def _activation(model: nn.Module, name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The ReLU / ReLU6 that alone consumes layer ``name``'s output in an fx graph (None when there is none)."""
    if not isinstance(model, fx.GraphModule):
        return None
    mods = dict(model.named_modules())
    for node in model.graph.nodes:
        if node.op == "call_module" and node.target == name:
            if len(node.users) != 1:
                return None
            user = next(iter(node.users))
            if user.op == "call_module" and type(mods.get(user.target)) in _RELUS:
                return _RELUS[type(mods[user.target])]
            if user.op == "call_function" and user.target in _RELU_FNS:
                return _RELU_FNS[user.target]
            if user.op == "call_method" and user.target == "relu":
                return F.relu
            return None
    return None


class _Stop(Exception):
    pass


def _capture(model: nn.Module, layer: nn.Module, calib: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The inputs ``layer`` receives when ``model`` runs ``calib`` (each batch stops at the layer)."""
    got: list[torch.Tensor] = []

    def hook(_m, a):
        got.append(a[0].detach())
        raise _Stop

    h = layer.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for chunk in calib.split(batch_size):
                try:
                    model(chunk)
                except _Stop:
                    pass
    finally:
        h.remove()
    if len(got) != len(calib.split(batch_size)):
        raise RuntimeError(f"AdaRound: layer {type(layer).__name__} did not run once per batch")
    return torch.cat(got)


def _order(model: nn.Module, layers: dict[str, nn.Module], example: torch.Tensor) -> list[str]:
    """The layers in the order the model first calls them (so preceding layers are rounded first)."""
    seen: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda _m, _a, n=n: seen.append(n) if n not in seen else None) for n, m in layers.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen + [n for n in layers if n not in seen]


def adaround_layers(model: nn.Module, layers: dict[str, nn.Module], calib: torch.Tensor, bits: int = 8,
                    opts: AdaRoundOptions = AdaRoundOptions(), batch_size: int = 64,
                    samples: int = 256) -> tuple[dict, dict[str, torch.Tensor]]:
    """Round the weights of ``layers`` (name -> module of ``model``) with AdaRound, in place, one after another.

    Each weight is replaced by ``scale * q`` on the symmetric per-channel grid of ``bits`` bits
    (``qmax = 2**(bits-1) - 1``), which the quantizer's max-abs scale reproduces exactly, so its
    round-to-nearest then yields ``q``. With ``opts.asymmetric`` a layer's inputs come from ``model`` with the
    layers before it rounded (quantizer layers in fake-quant mode) and its activation quantizers as they are
    (calibrated: quantizing; not yet: observing nothing, passed through); the target from a float copy.
    Returns ``(report, float_weights)``: the per-layer report and each layer's float weight before rounding.
    """
    from edgekit.quant.fakequant import ActFakeQuant, ActMode, QuantWeight, WeightMode

    qmax = 2 ** (bits - 1) - 1
    calib = calib[:samples]
    was_training = model.training
    model.eval()
    float_model = copy.deepcopy(model).eval()
    float_layers = dict(float_model.named_modules())
    for m in float_model.modules():
        if isinstance(m, ActFakeQuant):
            m.mode = ActMode.OFF
        elif isinstance(m, QuantWeight):
            m.wmode = WeightMode.FLOAT
    quants = [m for m in model.modules() if isinstance(m, ActFakeQuant)]
    modes = [q.mode for q in quants]
    for q in quants:
        if q.mode is ActMode.OBSERVE or not opts.asymmetric:
            q.mode = ActMode.OFF  # not calibrated yet (or float inputs asked for): pass through
    for m in layers.values():
        if isinstance(m, QuantWeight):
            m.wmode = WeightMode.FLOAT
    float_weights = {n: m.weight.detach().clone() for n, m in layers.items()}
    report = {}
    try:
        for n in _order(model, layers, calib[:batch_size]):  # a whole batch: a graph may fix its batch size
            mod = layers[n]
            xf = _capture(float_model, float_layers[n], calib, batch_size)
            x = _capture(model, mod, calib, batch_size) if opts.asymmetric else xf
            if x.dim() > 2 and not hasattr(mod, "stride"):  # a linear layer on tokens: every token is a sample
                x, xf = x.reshape(-1, x.shape[-1])[:4096], xf.reshape(-1, xf.shape[-1])[:4096]
            act = _activation(model, n) if opts.activation else None
            scale = channel_scale(mod.weight, qmax)
            q, stats = adaround(_layer_fn(mod), mod.weight, scale, -qmax, qmax, x, opts, float_inputs=xf, act=act)
            with torch.no_grad():
                mod.weight.copy_(scale * q)
            if isinstance(mod, QuantWeight):
                mod.wmode = WeightMode.FAKE  # on the grid: fake quant reproduces q exactly
            report[n] = {**{k: round(v, 6) for k, v in stats.items()}, "loss_after": "relu" if act else "output"}
    finally:
        for q, mode in zip(quants, modes):
            q.mode = mode
        model.train(was_training)
    inputs = "preceding layers rounded, activation quantizers as calibrated" if opts.asymmetric else "float model"
    return {"bits": bits, "iters": opts.iters, "inputs": inputs, "layers": report}, float_weights


def adaround_model(model: nn.Module, calib: torch.Tensor, layers: list[str], bits: int = 8,
                   opts: AdaRoundOptions = AdaRoundOptions(), samples: int = 256) -> tuple[nn.Module, dict]:
    """:func:`adaround_layers` on the named Conv2d / Linear layers of a float ``model``; returns ``(model, report)``."""
    mods = dict(model.named_modules())
    missing = [n for n in layers if not isinstance(mods.get(n), (nn.Conv2d, nn.Linear))]
    if missing:
        raise ValueError(f"AdaRound: not Conv2d/Linear layers of the model: {', '.join(missing)}")
    report, _ = adaround_layers(model, {n: mods[n] for n in layers}, calib, bits, opts, samples=samples)
    return model, report
