"""1-bit storage of binarized weights: 8 weights per byte plus one scale per output channel.

Layout (BiViT, He et al., ICCV 2023, stores binary weights with per-channel scales; the bit layout is
edgekit's): a ``(out, in)`` matrix of signs becomes ``(out, ceil(in / 8))`` uint8; bit ``k`` (least
significant first) of byte ``j`` of row ``r`` is ``1`` for ``+1`` and ``0`` for ``-1`` at column ``8 j + k``.
Rows are padded with ``0`` bits up to a whole byte, so every row starts on a byte boundary (what the
XNOR-popcount kernels in :mod:`edgekit.quant.bivit.xnor` read). Packing then unpacking is exact.

``save_packed(model, path)`` writes the state of a frozen binarized model (packed bytes, scales, the
full-precision layers) plus the binarization config to an ``.npz`` file; ``load_packed(path)`` reads it back;
``restore(model, path)`` rebuilds the binarized model from the original float architecture exactly.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekit.errors import UserInputError

__all__ = [
    "pack_signs",
    "unpack_signs",
    "unpack_signs_torch",
    "packed_nbytes",
    "PackedModel",
    "save_packed",
    "load_packed",
    "restore",
]

FORMAT = "edgekit-bivit-packed"
FORMAT_VERSION = 1
_META_KEY = "__meta__"


def packed_nbytes(out_features: int, in_features: int) -> int:
    """Bytes of a packed ``(out, in)`` sign matrix: one byte per 8 weights of a row (rows padded)."""
    return out_features * ((in_features + 7) // 8)


def pack_signs(signs: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pack a 2-D array of +-1 (``>= 0`` counts as +1) into ``(rows, ceil(cols / 8))`` uint8, LSB first."""
    arr = signs.detach().cpu().numpy() if isinstance(signs, torch.Tensor) else np.asarray(signs)
    if arr.ndim != 2:
        raise UserInputError(f"pack_signs: expected a 2-D (out, in) sign matrix, got shape {arr.shape}")
    return np.packbits(arr >= 0, axis=1, bitorder="little")


def unpack_signs(packed: np.ndarray, in_features: int, dtype: Any = np.float32) -> np.ndarray:
    """Inverse of :func:`pack_signs`: ``(rows, in_features)`` array of +-1."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.ndim != 2 or packed.shape[1] != (in_features + 7) // 8:
        raise UserInputError(
            f"unpack_signs: packed shape {packed.shape} does not hold {in_features} columns "
            f"(expected (rows, {(in_features + 7) // 8}))"
        )
    bits = np.unpackbits(packed, axis=1, count=in_features, bitorder="little")
    return (bits.astype(dtype) * 2 - 1).astype(dtype)


def unpack_signs_torch(packed: torch.Tensor, in_features: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Torch version of :func:`unpack_signs` built from ops that torch.export and ONNX trace and fold.

    Bits are peeled off by halving, LSB first: ``bit = b - 2 * floor(b / 2)``, ``b = floor(b / 2)``, in float32
    (halving a byte is exact), with ``floor`` written as a cast to int32 and back (truncation = floor for these
    non-negative values): only Div/Mul/Sub/Cast/Stack with scalar constants, which ONNX exporters fold into
    one +-1 tensor (or ONNX Runtime folds at load). No tensor literal: ``torch.tensor`` would trace to
    ``lift_fresh_copy`` + ``detach_``, which CoreML's converter refuses.
    """
    rows, nbytes = packed.shape
    b = packed.to(torch.float32)
    bits = []
    for _ in range(8):
        half = (b / 2.0).to(torch.int32).to(torch.float32)
        bits.append(b - 2.0 * half)
        b = half
    bits = torch.stack(bits, dim=-1).reshape(rows, nbytes * 8)
    if in_features != nbytes * 8:  # a no-op slice would trace to an alias op
        bits = bits[:, :in_features]
    return (bits * 2.0 - 1.0).to(dtype)


# ----------------------------------------------------------------------------------------------- files


@dataclass
class PackedModel:
    """What :func:`load_packed` returns: the tensors of a frozen binarized model and how it was built."""

    state: dict[str, torch.Tensor]
    config: dict[str, Any]  # the BinarizeOptions the model was converted with
    layers: dict[str, dict[str, Any]]  # binarized layer name -> {"in_features", "out_features", "group"}
    meta: dict[str, Any]

    @property
    def packed_bytes(self) -> int:
        return sum(int(self.state[f"{n}.packed_weight"].numel()) for n in self.layers)


def save_packed(model: nn.Module, path: str | Path, config: dict[str, Any] | None = None, force: bool = True) -> Path:
    """Write a frozen binarized ``model`` to ``path`` (.npz): packed bits, scales and every other tensor."""
    from edgekit.quant.bivit.modules import BinaryLinear

    path = Path(path)
    if path.exists() and not force:
        raise UserInputError(f"{path} exists; pass force=True to overwrite it")
    layers: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        if isinstance(m, BinaryLinear):
            if not m.frozen:
                raise UserInputError(f"save_packed: layer {name!r} is not frozen; call freeze(model) first")
            layers[name] = {"in_features": m.in_features, "out_features": m.out_features, "group": m.group}
    if not layers:
        raise UserInputError("save_packed: the model has no binarized (BinaryLinear) layers")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config if config is not None else getattr(model, "bivit_config", {}),
        "layers": layers,
    }
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    if _META_KEY in arrays:
        raise UserInputError(f"save_packed: the model has a tensor named {_META_KEY!r}")
    arrays[_META_KEY] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_packed(path: str | Path) -> PackedModel:
    """Read a file written by :func:`save_packed` (no pickle)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable packed-weights .npz file ({exc})") from None
    if _META_KEY not in arrays:
        raise UserInputError(f"{path}: no {_META_KEY!r} entry; not written by edgekit.quant.bivit.pack.save_packed")
    meta = json.loads(arrays.pop(_META_KEY).tobytes().decode())
    if meta.get("format") != FORMAT or meta.get("version") != FORMAT_VERSION:
        raise UserInputError(
            f"{path}: format {meta.get('format')!r} version {meta.get('version')!r}; accepted: {FORMAT!r} "
            f"version {FORMAT_VERSION}"
        )
    state = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    return PackedModel(state, meta.get("config", {}), meta["layers"], meta)


def restore(model: nn.Module, packed: PackedModel | str | Path) -> nn.Module:
    """Rebuild the binarized model from its float architecture ``model`` and a packed file, exactly.

    ``model`` is the original (float) network or any network of the same architecture: it is converted with
    the stored config, frozen, and loaded with the stored tensors (strict: every name and shape must match).
    """
    from edgekit.quant.bivit.convert import BinarizeOptions, convert
    from edgekit.quant.bivit.modules import freeze

    if not isinstance(packed, PackedModel):
        packed = load_packed(packed)
    options = BinarizeOptions(**packed.config) if packed.config else BinarizeOptions()
    new, _ = convert(model, options)
    freeze(new)
    try:
        new.load_state_dict(packed.state, strict=True)
    except RuntimeError as exc:
        raise UserInputError(f"packed weights do not match this architecture: {exc}") from None
    return new.eval()
