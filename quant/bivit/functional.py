"""The arithmetic of BiViT binarization, framework-neutral apart from torch tensors.

"BiViT: Extremely Compressed Binary Vision Transformers", Y. He, Z. Lou, L. Zhang, J. Liu, W. Wu, H. Zhou,
B. Zhuang, ICCV 2023. What is implemented here (see ``shared/docs/methods.md``, section BiViT):

* Weights: ``W_b = alpha * sign(W - rowmean(W))`` with a learnable per-output-channel ``alpha`` initialised to
  ``rowmean(|W|)`` (:func:`init_alpha`). The straight-through estimator passes the gradient of ``sign`` only
  where ``|x| < 1`` (clipped STE, :func:`sign_ste`).
* Softmax-aware attention binarization (:func:`softmax_aware_binarize`): ``P = softmax(S)``, ``tau = 0.25 *
  max_j P_ij`` per row, ``A = 1[P >= tau]``; the backward pass is the softmax gradient
  (``A.detach() - P.detach() + P``). In eval mode ``A`` is returned as it is (exactly 0/1).
* Without softmax awareness (the ablation, :func:`naive_binarize_probs`): ``A = 1[P >= mean_j P_ij]``
  (= ``1[P >= 1/N]``), the sign of the centred probabilities, with the same straight-through gradient: only the
  threshold rule differs.
* Binary activations (:func:`binarize_act`): ``sign(x)`` times a per-row scale ``mean|x|`` over the contraction
  dimension (the XNOR-Net scaling, so that the binary product still factors into scale x popcount).
  The layers compute the +-1 product first and apply the scales after it (``(sign x @ sign W^T) * s * alpha``):
  the integer part is then exact in float32 in every runtime, so a zero dot product gives exactly the bias
  in torch and in ONNX Runtime alike (applying the scales first makes such ties runtime-dependent, and
  a binary network flips the next sign on them).
* 8-bit activations (:func:`int8_codes`, :func:`fake_quant_int8`): symmetric per-tensor int8 fake
  quantization with a dynamic scale ``max|x| / 127`` and a straight-through round. The layers multiply the
  integer codes first and apply the scales after (``(q_x @ sign W^T) * s_x * alpha``), as for 1-bit
  activations: the integer sum is exact in float32 (below 2**24) whatever order a runtime adds in. This is a minimal stand-in used by the ``w1a8`` recipe;
  it is local to BiViT so that binarization does not depend on the int8 calibration machinery.

``sign(0)`` is ``+1`` everywhere here (a binary weight must be one of two values).
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "sign",
    "sign_ste",
    "init_alpha",
    "binarize_weight",
    "weight_signs",
    "weight_signs_ste",
    "binarize_act",
    "fake_quant_int8",
    "int8_codes",
    "stop_gradient",
    "softmax_aware_mask",
    "attention_threshold",
    "softmax_aware_binarize",
    "naive_binarize_probs",
]

SOFTMAX_THRESHOLD = 0.25  # tau = 0.25 * row max of the attention probabilities


def sign(x: torch.Tensor) -> torch.Tensor:
    """``+1`` where ``x >= 0``, ``-1`` elsewhere (no zeros), in ``x``'s dtype.

    Scalar branches (not ``ones_like``): exporters would fold ``ones_like`` into activation-sized constants."""
    out = torch.where(x >= 0, 1.0, -1.0)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def sign_ste(x: torch.Tensor, ste: bool = True) -> torch.Tensor:
    """``sign(x)`` forward; backward passes the gradient where ``|x| < 1`` and zeroes it elsewhere.

    Written as ``clip + (sign - clip).detach()`` so that it traces as plain ops. In training the forward value
    is still exactly +-1: ``c`` has the sign of ``s`` and ``|c| <= 1``, so ``fl(s - c)`` is within half an ulp
    and adding ``c`` back rounds to ``s`` (checked on random inputs in the tests). Outside autograd, or with
    ``ste=False`` (a module in eval mode: its traced graph is then the plain op), the plain sign is returned.
    """
    s = sign(x)
    if not _grad(x, ste):
        return s
    # the gradient of hardtanh is 1 strictly inside (-1, 1) and 0 outside
    c = torch.nn.functional.hardtanh(x)
    return c + (s - c).detach()


def init_alpha(weight: torch.Tensor) -> torch.Tensor:
    """The initial per-output-channel scale: ``rowmean(|W|)`` (shape ``(out,)``)."""
    w = weight.detach().flatten(1)
    return w.abs().mean(dim=1)


def weight_signs(weight: torch.Tensor) -> torch.Tensor:
    """``sign(W - rowmean(W))`` with rows = output channels (no gradient)."""
    w = weight.detach().flatten(1)
    return sign(w - w.mean(dim=1, keepdim=True)).reshape(weight.shape)


def weight_signs_ste(weight: torch.Tensor, ste: bool = True) -> torch.Tensor:
    """``sign_ste(W - rowmean(W))``: the +-1 weights with the clipped straight-through gradient to ``W``."""
    w = weight.flatten(1)
    return sign_ste(w - w.mean(dim=1, keepdim=True), ste).reshape(weight.shape)


def binarize_weight(weight: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha[:, None] * sign_ste(W - rowmean(W))`` for a weight whose first dimension is the output."""
    w = weight.flatten(1)
    centred = w - w.mean(dim=1, keepdim=True)
    return (alpha.unsqueeze(1) * sign_ste(centred)).reshape(weight.shape)


def binarize_act(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``mean|x| * sign(x)`` with the scale taken over ``dim`` (the contraction dimension of the next matmul)."""
    scale = x.abs().mean(dim=dim, keepdim=True)
    return scale * sign_ste(x)


def _grad(x: torch.Tensor, ste: bool = True) -> bool:
    """Whether a straight-through form is needed: ``ste`` and autograd records ``x``."""
    return ste and torch.is_grad_enabled() and x.requires_grad


def _round_ste(x: torch.Tensor, ste: bool = True) -> torch.Tensor:
    if not _grad(x, ste):
        return torch.round(x)
    return x + (torch.round(x) - x).detach()


def stop_gradient(x: torch.Tensor, ste: bool = True) -> torch.Tensor:
    """``x.detach()`` under autograd, ``x`` itself otherwise (a frozen model's graph then has no detach op)."""
    return x.detach() if _grad(x, ste) else x


def int8_codes(x: torch.Tensor, ste: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-tensor int8 codes ``q = clamp(round(x / s), -127, 127)`` (integer-valued floats) and the
    dynamic scale ``s = max|x| / 127`` (a 0-d tensor); straight-through round."""
    # a full reduction over explicit axes: coremltools 9's transpose pass crashes on a reduce_max without axes
    scale = (stop_gradient(x, ste).abs().flatten().amax(dim=0) / 127.0).clamp_min(1e-8)
    return torch.clamp(_round_ste(x / scale, ste), -127.0, 127.0), scale


def fake_quant_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric per-tensor int8 fake quantization, dynamic scale ``max|x| / 127``, straight-through round."""
    q, scale = int8_codes(x)
    return q * scale


def attention_threshold(probs: torch.Tensor, ratio: float = SOFTMAX_THRESHOLD) -> torch.Tensor:
    """``tau_i = ratio * max_j P_ij`` per row (keepdim), the softmax-aware threshold."""
    return ratio * probs.amax(dim=-1, keepdim=True)


def _straight_through(hard: torch.Tensor, probs: torch.Tensor, ste: bool = True) -> torch.Tensor:
    """Forward ``hard``, backward the gradient of ``probs`` (i.e. of the softmax)."""
    if not _grad(probs, ste):
        return hard
    return hard.detach() - probs.detach() + probs


def softmax_aware_binarize(probs: torch.Tensor, ratio: float = SOFTMAX_THRESHOLD) -> torch.Tensor:
    """``A = 1[P >= ratio * rowmax(P)]`` with the straight-through-via-softmax gradient."""
    tau = attention_threshold(stop_gradient(probs), ratio)
    hard = (probs >= tau).to(probs.dtype)
    return _straight_through(hard, probs)


def softmax_aware_mask(scores: torch.Tensor, ratio: float = SOFTMAX_THRESHOLD, ste: bool = True) -> torch.Tensor:
    """``1[P >= ratio * rowmax(P)]`` for ``P = softmax(scores)`` over the last dimension, from the scores.

    ``P_ij / rowmax(P) = exp(s_ij - rowmax(s))``, so the rule is ``s_ij - rowmax(s) >= ln(ratio)``: one
    subtraction and one comparison, both exactly rounded in every runtime (no ``exp``, whose last bit differs
    between torch, ONNX Runtime and OpenVINO and flips entries that sit on the threshold), and no softmax to
    compute in a deployed model. Values in float, exactly 0 or 1; no gradient (see :class:`BinarySoftmax`).
    """
    s = stop_gradient(scores, ste)
    return ((s - s.amax(dim=-1, keepdim=True)) >= math.log(ratio)).to(scores.dtype)


def naive_binarize_probs(probs: torch.Tensor, ste: bool = True) -> torch.Tensor:
    """The ablation without softmax awareness: ``A = 1[P >= mean_j P_ij]`` (straight-through gradient)."""
    tau = stop_gradient(probs, ste).mean(dim=-1, keepdim=True)
    hard = (probs >= tau).to(probs.dtype)
    return _straight_through(hard, probs, ste)
