"""Datasets: the built-in handwritten digits, .npz files, image folders and shape-only random data.

Every loader returns a :class:`DataBundle` with deterministic (seeded) train / calibration / test splits of
float32 NCHW tensors shaped for the model. Wrong shapes or dtypes are rejected before any work starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.errors import UserInputError

SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train, calibration, test
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class Split:
    x: torch.Tensor  # float32, N x C x H x W
    y: torch.Tensor | None  # int64, N (None: no labels)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield self.x[idx], (self.y[idx] if self.y is not None else None)


@dataclass
class DataBundle:
    name: str
    train: Split
    calib: Split
    test: Split
    num_classes: int | None
    input_shape: tuple[int, ...]

    @property
    def labeled(self) -> bool:
        return self.test.y is not None


def parse_shape(text: str, what: str = "shape") -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.lower().split("x"))
    except ValueError:
        raise UserInputError(f"{what} {text!r}: expected CxHxW, e.g. 3x224x224") from None
    if len(shape) != 3 or min(shape) <= 0:
        raise UserInputError(f"{what} {text!r}: expected three positive sizes CxHxW, e.g. 3x224x224")
    return shape


def _split(x: torch.Tensor, y: torch.Tensor | None, seed: int) -> tuple[Split, Split, Split]:
    n = x.shape[0]
    if n < 10:
        raise UserInputError(f"data has {n} samples; at least 10 are needed for train/calibration/test splits")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(n * SPLIT_FRACTIONS[0]))
    n_cal = max(1, int(round(n * SPLIT_FRACTIONS[1])))
    parts = (order[:n_train], order[n_train : n_train + n_cal], order[n_train + n_cal :])
    return tuple(Split(x[p].contiguous(), None if y is None else y[p].contiguous()) for p in parts)  # type: ignore[return-value]


def _fit_shape(x: torch.Tensor, shape: Sequence[int], source: str) -> torch.Tensor:
    """Resize N x C x H x W images to the model's C x H x W (channels: replicate 1 -> C or average C -> 1)."""
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1:
            x = x.expand(-1, c, -1, -1)
        elif c == 1:
            x = x.mean(dim=1, keepdim=True)
        else:
            raise UserInputError(f"{source}: images have {x.shape[1]} channels, the model takes {c}")
    if tuple(x.shape[2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x.contiguous()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-6)


def digits(input_shape: Sequence[int] = (3, 32, 32), seed: int = 0) -> DataBundle:
    """scikit-learn's 1797 handwritten digits (8x8, offline), upsampled to ``input_shape``."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = _normalize(_fit_shape(x, input_shape, "digits"))
    y = torch.from_numpy(raw.target.astype(np.int64))
    return DataBundle("digits", *_split(x, y, seed), num_classes=10, input_shape=tuple(input_shape))


def random_data(input_shape: Sequence[int], n: int = 64, seed: int = 0) -> DataBundle:
    """Shape-only data (standard normal), for latency work without labels."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *input_shape, generator=g)
    return DataBundle(f"random:{'x'.join(map(str, input_shape))}", *_split(x, None, seed), None, tuple(input_shape))


def from_npz(path: Path, input_shape: Sequence[int] | None, seed: int = 0) -> DataBundle:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f.files:
                raise UserInputError(f"{path}: no array 'x'; an .npz dataset holds x (N,C,H,W or N,H,W) and y (N)")
            x_np, y_np = f["x"], (f["y"] if "y" in f.files else None)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{path}: not a readable .npz file ({exc})") from None
    if x_np.dtype.kind not in "fiu":
        raise UserInputError(f"{path}: field 'x' has dtype {x_np.dtype}; accepted: float or integer arrays")
    if x_np.ndim == 3:
        x_np = x_np[:, None]
    if x_np.ndim != 4:
        raise UserInputError(f"{path}: field 'x' has shape {x_np.shape}; accepted: (N,C,H,W) or (N,H,W)")
    x = torch.from_numpy(np.ascontiguousarray(x_np)).float()
    if x_np.dtype.kind in "iu":
        x = x / 255.0
    y = None
    if y_np is not None:
        if y_np.dtype.kind not in "iu" or y_np.ndim != 1 or len(y_np) != len(x_np):
            raise UserInputError(
                f"{path}: field 'y' has dtype {y_np.dtype} and shape {y_np.shape}; accepted: integer labels of shape ({len(x_np)},)"
            )
        y = torch.from_numpy(y_np.astype(np.int64))
    shape = tuple(input_shape) if input_shape else tuple(x.shape[1:])
    x = _fit_shape(x, shape, str(path))
    num_classes = int(y.max()) + 1 if y is not None else None
    return DataBundle(f"npz:{path.name}", *_split(x, y, seed), num_classes, shape)


def from_folder(path: Path, input_shape: Sequence[int] | None, seed: int = 0) -> DataBundle:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise UserInputError(f"{path}: an image-folder dataset needs one sub-folder per class")
    shape = tuple(input_shape) if input_shape else (3, 32, 32)
    c, h, w = shape
    mode = "L" if c == 1 else "RGB"
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as im:
                    im = im.convert(mode).resize((w, h), Image.BILINEAR)
                    arr = np.asarray(im, dtype=np.float32) / 255.0
            except (UnidentifiedImageError, OSError) as exc:
                raise UserInputError(f"{f}: not a readable image ({exc})") from None
            xs.append(arr[None] if c == 1 else arr.transpose(2, 0, 1))
            ys.append(label)
    if not xs:
        raise UserInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    x = _normalize(torch.from_numpy(np.stack(xs)))
    if c not in (1, 3):
        x = _fit_shape(x, shape, str(path))
    y = torch.tensor(ys, dtype=torch.int64)
    return DataBundle(f"folder:{path.name}", *_split(x, y, seed), len(classes), shape)


def load_data(spec: str | None = None, input_shape: Sequence[int] | None = (3, 32, 32), seed: int = 0) -> DataBundle:
    """``None``/``digits`` (built-in), ``random:CxHxW``, a ``.npz`` file, or a directory of class folders."""
    if spec in (None, "", "digits"):
        return digits(input_shape or (3, 32, 32), seed)
    if spec.startswith("random:"):
        return random_data(parse_shape(spec.split(":", 1)[1], "--data random:"), seed=seed)
    path = Path(spec)
    if path.is_dir():
        return from_folder(path, input_shape, seed)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserInputError(f"--data {spec}: file does not exist")
        return from_npz(path, input_shape, seed)
    raise UserInputError(
        f"--data {spec!r}: accepted: 'digits' (built-in), 'random:CxHxW', a .npz file (x, y) or a folder of class folders"
    )


def check_fits(data: DataBundle, input_shape: Sequence[int] | None, model_name: str = "model") -> None:
    if input_shape is not None and tuple(data.input_shape) != tuple(input_shape):
        raise UserInputError(
            f"data {data.name} has samples of shape {tuple(data.input_shape)}, {model_name} takes {tuple(input_shape)}"
        )
