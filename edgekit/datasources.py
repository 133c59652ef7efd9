"""Streaming data sources: image files and user ``Dataset``s read batch by batch (memory bounded by the batch).

A :class:`SampleSource` gives one sample at a time (``load(i) -> (image CxHxW float32, target)``) and says where
it came from (``where(i)``: a file path or ``dataset[i]``), so every error names the file and index. A
:class:`StreamSplit` is a list of indices into a source; it has the same surface as the in-memory
:class:`edgekit.data.Split` (``len``, ``batches``, ``x[a:b]``, ``y``) so that stages and metrics need not know
which they got. Targets are class indices for classification; a source whose targets are dicts (boxes, masks)
is a detection source: its batches carry a list of target dicts and it has no top-1 labels.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.errors import UserInputError


# ----------------------------------------------------------------------------------------------- checks


def check_values(x: torch.Tensor, where: str) -> None:
    """Reject NaN / Inf inputs, naming the sample and the first bad element."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        pos = tuple(int(v) for v in bad.nonzero()[0])
        raise UserInputError(f"{where}: input has a NaN or Inf value (at element {pos}); accepted: finite numbers")


def check_label(y: Any, where: str, num_classes: int | None) -> int:
    """A classification target: an integer in [0, num_classes)."""
    if isinstance(y, torch.Tensor):
        if y.numel() != 1 or y.dtype.is_floating_point:
            raise UserInputError(f"{where}: label {y!r} is not one integer class index")
        y = int(y.item())
    if isinstance(y, (np.integer,)):
        y = int(y)
    if not isinstance(y, int) or isinstance(y, bool):
        raise UserInputError(f"{where}: label {y!r} ({type(y).__name__}) is not an integer class index")
    if y < 0 or (num_classes is not None and y >= num_classes):
        accepted = f"0..{num_classes - 1}" if num_classes else "0 or more"
        raise UserInputError(f"{where}: label {y} is out of range; accepted: {accepted}")
    return y


# ----------------------------------------------------------------------------------------------- preprocessing


class Preprocess:
    """Image file -> float32 CxHxW: convert to L/RGB, resize, center-crop, scale to 0..1, normalize.

    ``resize``: an int (shorter side to that size, aspect kept) or (h, w); ``crop``: int or (h, w), centered;
    ``mean`` / ``std``: per-channel (or one value), on the 0..1 scale (ImageNet: 0.485,0.456,0.406 /
    0.229,0.224,0.225). Without ``resize`` and ``crop``, images are resized to the model's H x W.
    """

    def __init__(self, channels: int, size: tuple[int, int], resize=None, crop=None, mean=None, std=None) -> None:
        self.channels, self.size = channels, size
        self.resize, self.crop = resize, crop
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) if std is not None else None

    @staticmethod
    def _hw(v) -> tuple[int, int]:
        return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))

    def output_size(self) -> tuple[int, int] | None:
        """H x W the pipeline produces, or None when it depends on each image (shorter-side resize, no crop)."""
        if self.crop is not None:
            return self._hw(self.crop)
        if self.resize is None:
            return self.size
        return None if isinstance(self.resize, int) else self._hw(self.resize)

    def image(self, im, where: str) -> torch.Tensor:
        return self.to_tensor(self.pixels(im, where))

    def pixels(self, im, where: str) -> np.ndarray:
        """The PIL part: mode, resize, crop -> uint8 array H x W (x 3). Decoding threads run only this, so the
        float copies are made (and freed) by the caller's thread: per-thread allocator arenas would otherwise keep
        about a hundred MB of freed float images at 224x224."""
        from PIL import Image

        im = im.convert("L" if self.channels == 1 else "RGB")
        if self.resize is None and self.crop is None:
            im = im.resize((self.size[1], self.size[0]), Image.BILINEAR)
        if self.resize is not None:
            if isinstance(self.resize, int):
                w, h = im.size
                s = self.resize / min(w, h)
                im = im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
            else:
                h, w = self._hw(self.resize)
                im = im.resize((w, h), Image.BILINEAR)
        if self.crop is not None:
            ch, cw = self._hw(self.crop)
            w, h = im.size
            if ch > h or cw > w:
                raise UserInputError(f"{where}: image is {h}x{w} after resize, smaller than data.crop {ch}x{cw}")
            top, left = (h - ch) // 2, (w - cw) // 2
            im = im.crop((left, top, left + cw, top + ch))
        return np.asarray(im, dtype=np.uint8)

    def to_tensor(self, arr: np.ndarray) -> torch.Tensor:
        """uint8 H x W (x 3) -> float32 C x H x W on the 0..1 scale, normalized."""
        x = torch.from_numpy(np.ascontiguousarray(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)))
        x = x.to(torch.float32).div_(255.0)
        if self.channels not in (1, 3):  # e.g. a 4-channel model: replicate the gray image
            x = x.mean(0, keepdim=True).expand(self.channels, -1, -1).contiguous()
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - self.mean
        if self.std is not None:
            x = x / self.std
        return x


# ----------------------------------------------------------------------------------------------- sources


class SampleSource:
    """One sample at a time. Subclasses implement ``__len__``, ``load`` and ``where``."""

    task = "classification"
    num_classes: int | None = None

    def __len__(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, i: int) -> tuple[torch.Tensor, Any]:  # pragma: no cover - abstract
        raise NotImplementedError

    def where(self, i: int) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def labels(self) -> list[int] | None:
        """Every label without decoding images, when the source knows them (folders, ``dataset.targets``)."""
        return None

    def fetch(self, i: int) -> Any:
        """The part of :meth:`sample` that decoding threads run (default: all of it)."""
        return self.sample(i)

    def finish(self, fetched: Any, i: int) -> tuple[torch.Tensor, Any]:
        """The rest of :meth:`sample`, in the caller's thread."""
        return fetched

    def sample(self, i: int) -> tuple[torch.Tensor, Any]:
        x, y = self.load(i)
        return self._checked(x, y, i)

    def _checked(self, x: torch.Tensor, y: Any, i: int) -> tuple[torch.Tensor, Any]:
        where = self.where(i)
        check_values(x, where)
        if y is not None and self.task == "classification":
            y = check_label(y, where, self.num_classes)
        return x, y


class ImageFolderSource(SampleSource):
    """Image files with class labels (one sub-folder per class), decoded and preprocessed on demand."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], classes: Sequence[str], prep: Preprocess) -> None:
        self.files, self._labels, self.classes, self.prep = list(files), list(labels), list(classes), prep
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def where(self, i: int) -> str:
        return str(self.files[i])

    def labels(self) -> list[int]:
        return self._labels

    def fetch(self, i: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.files[i]) as im:
                return self.prep.pixels(im, self.where(i))
        except (UnidentifiedImageError, OSError) as exc:
            raise UserInputError(f"{self.files[i]}: not a readable image ({exc})") from None

    def finish(self, fetched: np.ndarray, i: int) -> tuple[torch.Tensor, int]:
        return self._checked(self.prep.to_tensor(fetched), self._labels[i], i)

    def load(self, i: int) -> tuple[torch.Tensor, int]:
        return self.prep.to_tensor(self.fetch(i)), self._labels[i]


class DatasetSource(SampleSource):
    """A map-style ``torch.utils.data.Dataset`` (or anything with ``__len__`` and ``__getitem__``).

    Items are ``image`` or ``(image, target)``; an image is a tensor / array (C,H,W or H,W) or a PIL image
    (preprocessed like image files); a target is a class index or, for detection, a dict.
    """

    def __init__(self, dataset: Any, prep: Preprocess, name: str, num_classes: int | None = None) -> None:
        if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
            raise UserInputError(
                f"data {name}: {type(dataset).__name__} has no __len__/__getitem__ (an iterable dataset); give a "
                "map-style Dataset, or a dict {'train': ..., 'calibration': ..., 'test': ...} of them"
            )
        self.dataset, self.prep, self.name = dataset, prep, name
        if len(dataset) == 0:
            raise UserInputError(f"data {name}: the dataset is empty")
        first = dataset[0]
        target = first[1] if isinstance(first, (tuple, list)) and len(first) >= 2 else None
        self.labeled = target is not None
        self.task = "detection" if isinstance(target, dict) else "classification"
        classes = getattr(dataset, "classes", None)
        self.num_classes = num_classes or (len(classes) if classes is not None else None)

    def __len__(self) -> int:
        return len(self.dataset)

    def where(self, i: int) -> str:
        return f"{self.name}[{i}]"

    def labels(self) -> list[int] | None:
        targets = getattr(self.dataset, "targets", None)
        if targets is None or self.task != "classification" or len(targets) != len(self):
            return None
        return [check_label(t, self.where(i), self.num_classes) for i, t in enumerate(targets)]

    def load(self, i: int) -> tuple[torch.Tensor, Any]:
        item = self.dataset[i]
        x, y = (item[0], item[1]) if isinstance(item, (tuple, list)) and len(item) >= 2 else (item, None)
        if hasattr(x, "convert") and hasattr(x, "size"):  # a PIL image
            return self.prep.image(x, self.where(i)), y
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiu":
                raise UserInputError(f"{self.where(i)}: image array has dtype {x.dtype}; accepted: float or integer")
            x = torch.from_numpy(np.ascontiguousarray(x))
        if not isinstance(x, torch.Tensor):
            raise UserInputError(f"{self.where(i)}: sample is a {type(x).__name__}; accepted: a tensor, an array or a PIL image")
        x = x.float() if not x.dtype.is_floating_point else x.to(torch.float32)
        if x.dim() == 2:
            x = x.unsqueeze(0)
        if x.dim() != 3:
            raise UserInputError(f"{self.where(i)}: sample has shape {tuple(x.shape)}; accepted: (C,H,W) or (H,W)")
        return self.prep.normalize(x), y


# ----------------------------------------------------------------------------------------------- splits


class LazyImages:
    """``split.x`` of a streaming split: ``x[a:b]`` (or a list of indices) loads just those samples."""

    def __init__(self, split: "StreamSplit") -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.split), *self.split.sample_shape)

    dtype = torch.float32

    def __getitem__(self, key) -> torch.Tensor:
        n = len(self.split)
        if isinstance(key, int):
            return self.split.take([range(n)[key]])[0]
        if isinstance(key, slice):
            return self.split.take(list(range(n))[key])
        return self.split.take([int(k) for k in key])


class StreamSplit:
    """Indices into a :class:`SampleSource`, read ``batch_size`` samples at a time."""

    def __init__(self, source: SampleSource, indices: Sequence[int], sample_shape: tuple[int, ...], workers: int = 4,
                 batch_size: int = 16) -> None:
        self.source, self.indices, self.sample_shape, self.workers = source, list(indices), tuple(sample_shape), workers
        self.batch_size = batch_size  # evaluation over this split runs this many samples at a time
        self._labels: torch.Tensor | None = None
        self._labels_known = False

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def x(self) -> LazyImages:
        return LazyImages(self)

    @property
    def y(self) -> torch.Tensor | None:
        """Class labels (int64, one per sample); None for unlabeled or detection data."""
        if not self._labels_known:
            self._labels_known = True
            if self.source.task == "classification" and getattr(self.source, "labeled", True):
                known = self.source.labels()
                if known is None:  # one streaming pass over the targets
                    known_ = {i: self.source.sample(i)[1] for i in self.indices}
                    self._labels = torch.tensor([known_[i] for i in self.indices], dtype=torch.int64)
                else:
                    self._labels = torch.tensor([known[i] for i in self.indices], dtype=torch.int64)
        return self._labels

    def _load_many(self, idx: Sequence[int]) -> list[tuple[torch.Tensor, Any]]:
        if self.workers > 1 and len(idx) > 1:
            with ThreadPoolExecutor(min(self.workers, len(idx))) as pool:  # image decoding releases the GIL
                fetched = list(pool.map(self.source.fetch, idx))
            return [self.source.finish(f, i) for f, i in zip(fetched, idx)]
        return [self.source.sample(i) for i in idx]

    def _stack(self, items: list[tuple[torch.Tensor, Any]], idx: Sequence[int]) -> torch.Tensor:
        for (x, _), i in zip(items, idx):
            if tuple(x.shape) != self.sample_shape:
                raise UserInputError(
                    f"{self.source.where(i)}: sample has shape {tuple(x.shape)}, the others {self.sample_shape}; "
                    "set data.resize / data.crop so that every image comes out the same size"
                )
        return torch.stack([x for x, _ in items]) if items else torch.empty(0, *self.sample_shape)

    def take(self, positions: Sequence[int]) -> torch.Tensor:
        idx = [self.indices[p] for p in positions]
        return self._stack(self._load_many(idx), idx)

    def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0) -> Iterator[tuple[torch.Tensor, Any]]:
        n = len(self)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else list(range(n))
        for start in range(0, n, batch_size):
            idx = [self.indices[p] for p in order[start : start + batch_size]]
            items = self._load_many(idx)
            x = self._stack(items, idx)
            targets = [t for _, t in items]
            if self.source.task != "classification":
                yield x, targets
            elif any(t is None for t in targets):
                yield x, None
            else:
                yield x, torch.tensor(targets, dtype=torch.int64)
        release_memory()

    def materialize(self):
        """An in-memory :class:`edgekit.data.Split` of these samples (for small splits: calibration), filled one
        batch at a time (peak: the split plus one batch, not twice the split)."""
        from edgekit.data import Split

        x = torch.empty(len(self), *self.sample_shape)
        for start in range(0, len(self), self.batch_size):
            stop = min(start + self.batch_size, len(self))
            x[start:stop] = self.take(range(start, stop))
        release_memory()
        return Split(x, self.y)


def release_memory() -> None:
    """Hand freed heap pages back to the system after a pass over decoded images (glibc ``malloc_trim``; a
    no-op elsewhere): the peak resident memory of a long run then stays near what is actually held."""
    global _TRIM
    if _TRIM is None:
        try:
            import ctypes

            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


_TRIM: Any = None


def split_indices(n: int, fractions: Sequence[float], seed: int, calibration_max: int | None) -> tuple[list[int], list[int], list[int]]:
    """Seeded train / calibration / test indices; calibration beyond ``calibration_max`` goes to train."""
    if n < 3:
        raise UserInputError(f"data has {n} samples; at least 3 are needed for train/calibration/test splits")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_train = int(round(n * fractions[0]))
    n_cal = max(1, int(round(n * fractions[1]))) if fractions[1] > 0 else 0
    n_test = n - n_train - n_cal
    if n_test < 1 or (fractions[0] > 0 and n_train < 1):
        raise UserInputError(f"data has {n} samples: too few for the split fractions {tuple(fractions)}")
    train, cal, test = order[:n_train], order[n_train : n_train + n_cal], order[n_train + n_cal :]
    if calibration_max is not None and len(cal) > calibration_max:
        train, cal = train + cal[calibration_max:], cal[:calibration_max]
    return train, cal, test


def estimate_norm(split: StreamSplit, samples: int = 256, seed: int = 0) -> tuple[float, float]:
    """One mean and std over up to ``samples`` images (seeded), for data given without ``data.mean/std``."""
    n = min(samples, len(split))
    pos = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    total, sq, count = 0.0, 0.0, 0
    for start in range(0, n, 32):
        xb = split.take(pos[start : start + 32]).double()
        total, sq, count = total + float(xb.sum()), sq + float((xb * xb).sum()), count + xb.numel()
    release_memory()
    mean = total / max(1, count)
    std = math.sqrt(max(sq / max(1, count) - mean * mean, 1e-12))
    return mean, std


def fit_channels(x: torch.Tensor, c: int, where: str) -> torch.Tensor:
    """N x C' x H x W -> N x C x H x W (replicate 1 -> C, average C' -> 1)."""
    if x.shape[1] == c:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, c, -1, -1)
    if c == 1:
        return x.mean(dim=1, keepdim=True)
    raise UserInputError(f"{where}: images have {x.shape[1]} channels, the model takes {c}")


def fit_size(x: torch.Tensor, hw: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) != tuple(hw):
        x = F.interpolate(x, size=tuple(hw), mode="bilinear", align_corners=False)
    return x
