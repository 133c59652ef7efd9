"""Data: the built-in digits, .npz files, image folders, user ``Dataset`` / ``DataLoader`` / ``module:factory``
sources and shape-only random data, with seeded train / calibration / test splits.

Every loader returns a :class:`DataBundle`. Small data (digits, random, .npz) is held in memory as
:class:`Split` tensors; image folders and user datasets are streamed (:class:`~edgekit.datasources.StreamSplit`):
memory is bounded by the batch, not the dataset, except for the calibration split, which is held in memory and
capped at ``calibration_max`` samples. Preprocessing and splits come from :class:`DataOptions` (a recipe's
``data:`` section). NaN / Inf inputs and out-of-range labels are rejected, naming the file or index.
"""

from __future__ import annotations

import importlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edgekit.data_options import SPLIT_FRACTIONS, DataOptions, SplitFractions  # noqa: F401 - re-exported
from edgekit.datasources import (
    DatasetSource, ImageFolderSource, Preprocess, SampleSource, StreamSplit, check_values, estimate_norm,
    fit_channels, fit_size, split_indices,
)
from edgekit.errors import UserInputError

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
    train: Any  # Split | StreamSplit
    calib: Split
    test: Any  # Split | StreamSplit
    num_classes: int | None
    input_shape: tuple[int, ...]
    task: str = "classification"  # classification | detection (targets are dicts)
    preprocessing: dict[str, Any] = field(default_factory=dict)  # what was applied, for the report

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


def _split(x: torch.Tensor, y: torch.Tensor | None, seed: int, opts: DataOptions | None = None) -> tuple[Split, Split, Split]:
    n = x.shape[0]
    if n < 10:
        raise UserInputError(f"data has {n} samples; at least 10 are needed for train/calibration/test splits")
    opts = opts or DataOptions()
    parts = split_indices(n, opts.split.as_tuple(), seed, opts.calibration_max)
    return tuple(Split(x[p].contiguous(), None if y is None else y[p].contiguous()) for p in parts)  # type: ignore[return-value]


def _fit_shape(x: torch.Tensor, shape: Sequence[int], source: str) -> torch.Tensor:
    """Resize N x C x H x W images to the model's C x H x W (channels: replicate 1 -> C or average C -> 1)."""
    return fit_size(fit_channels(x, shape[0], source), shape[1:]).contiguous()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-6)


def _check_labels(y: np.ndarray, where: str, num_classes: int | None) -> None:
    bad = np.nonzero((y < 0) | ((y >= num_classes) if num_classes else False))[0]
    if len(bad):
        accepted = f"0..{num_classes - 1}" if num_classes else "0 or more"
        raise UserInputError(f"{where}: label {int(y[bad[0]])} at index {int(bad[0])} is out of range; accepted: {accepted}")


def digits(input_shape: Sequence[int] = (3, 32, 32), seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """scikit-learn's 1797 handwritten digits (8x8, offline), upsampled to ``input_shape``."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = _normalize(_fit_shape(x, input_shape, "digits"))
    y = torch.from_numpy(raw.target.astype(np.int64))
    return DataBundle("digits", *_split(x, y, seed, options), num_classes=10, input_shape=tuple(input_shape))


def random_data(input_shape: Sequence[int], n: int = 64, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """Shape-only data (standard normal), for latency work without labels."""
    from edgekit.limits import check_allocation

    check_allocation(4 * n * math.prod(input_shape), f"--data random:{'x'.join(map(str, input_shape))} ({n} samples)")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *input_shape, generator=g)
    return DataBundle(f"random:{'x'.join(map(str, input_shape))}", *_split(x, None, seed, options), None, tuple(input_shape))


def _read_npz(path: Path, num_classes: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    from edgekit.limits import check_npz

    check_npz(path)  # headers only: refused if the arrays would not fit in memory, or if they hold pickles
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
    if x_np.dtype.kind == "f":
        bad = ~np.isfinite(x_np.reshape(len(x_np), -1)).all(axis=1)
        if bad.any():
            raise UserInputError(f"{path}: field 'x' has NaN or Inf values in sample {int(np.argmax(bad))}; accepted: finite numbers")
    x = torch.from_numpy(np.ascontiguousarray(x_np)).float()
    if x_np.dtype.kind in "iu":
        x = x / 255.0
    y = None
    if y_np is not None:
        if y_np.dtype.kind not in "iu" or y_np.ndim != 1 or len(y_np) != len(x_np):
            raise UserInputError(
                f"{path}: field 'y' has dtype {y_np.dtype} and shape {y_np.shape}; accepted: integer labels of shape ({len(x_np)},)"
            )
        _check_labels(y_np, f"{path}: field 'y'", num_classes)
        y = torch.from_numpy(y_np.astype(np.int64))
    return x, y


def from_npz(path: Path, input_shape: Sequence[int] | None, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    opts = options or DataOptions()
    _no_image_options(opts, f"{path} (.npz)")
    x, y = _read_npz(path, opts.num_classes)
    shape = tuple(input_shape) if input_shape else tuple(x.shape[1:])
    x = _fit_shape(x, shape, str(path))
    if opts.mean is not None or opts.std is not None:
        x = Preprocess(shape[0], shape[1:], mean=opts.mean, std=opts.std).normalize(x)
    num_classes = opts.num_classes or (int(y.max()) + 1 if y is not None else None)
    return DataBundle(f"npz:{path.name}", *_split(x, y, seed, opts), num_classes, shape)


def _no_image_options(opts: DataOptions, what: str) -> None:
    if opts.resize is not None or opts.crop is not None:
        raise UserInputError(f"data {what}: data.resize / data.crop apply to image files; arrays are used at their size")


# ----------------------------------------------------------------------------------------------- streaming sources


def _prep(input_shape: Sequence[int] | None, opts: DataOptions, where: str) -> Preprocess:
    c, h, w = tuple(input_shape) if input_shape else (3, 32, 32)
    for name in ("mean", "std"):
        v = getattr(opts, name)
        if v is not None and len(v) not in (1, c):
            raise UserInputError(f"data {where}: data.{name} has {len(v)} values; accepted: 1 or {c} (one per channel)")
    return Preprocess(c, (h, w), opts.resize, opts.crop, opts.mean, opts.std)


def folder_source(path: Path, input_shape: Sequence[int] | None, opts: DataOptions) -> ImageFolderSource:
    if not path.is_dir():
        raise UserInputError(f"data {path}: not a folder")
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise UserInputError(f"{path}: an image-folder dataset needs one sub-folder per class")
    if opts.num_classes is not None and len(classes) > opts.num_classes:
        raise UserInputError(f"{path}: {len(classes)} class folders but data.num_classes is {opts.num_classes}")
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(label)
    if not files:
        raise UserInputError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in the class folders")
    _check_headers(files)
    return ImageFolderSource(files, labels, classes, _prep(input_shape, opts, str(path)))


def _check_headers(files: Sequence[Path]) -> None:
    """Every file must be an image PIL recognizes (header only, nothing decoded), before any work starts."""
    from PIL import Image, UnidentifiedImageError

    from edgekit.limits import check_image

    for f in files:
        try:
            with Image.open(f) as im:
                check_image(f, im.size, len(im.getbands()))  # a decompression bomb is refused from its header
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
            raise UserInputError(f"{f}: not a readable image ({exc})") from None


def _sample_shape(source: SampleSource) -> tuple[int, ...]:
    return tuple(source.sample(0)[0].shape)


def _streamed(name: str, parts: dict[str, tuple[SampleSource, list[int]]], input_shape, opts: DataOptions, seed: int) -> DataBundle:
    """Build a bundle from (source, indices) per split; estimate normalization when none was given."""
    train_src, train_idx = parts["train"]
    estimated = opts.mean is None and opts.std is None and isinstance(train_src, ImageFolderSource)
    shape = _sample_shape(train_src)
    splits = {k: StreamSplit(src, idx, shape, batch_size=opts.batch_size) for k, (src, idx) in parts.items()}
    prep_info: dict[str, Any] = {"resize": opts.resize, "crop": opts.crop, "mean": opts.mean, "std": opts.std}
    if estimated:  # the folder's own statistics (what the in-memory loader did over the whole dataset)
        mean, std = estimate_norm(splits["train"] if len(splits["train"]) else splits["test"], seed=seed)
        for src, _ in parts.values():
            if isinstance(src, ImageFolderSource):
                src.prep.mean, src.prep.std = torch.tensor(mean).view(1, 1, 1), torch.tensor(std).view(1, 1, 1)
        prep_info.update(mean=[round(mean, 6)], std=[round(std, 6)], estimated=True)
    calib = splits["calibration"]
    if len(calib) > opts.calibration_max:
        calib = StreamSplit(calib.source, calib.indices[: opts.calibration_max], shape, batch_size=opts.batch_size)
    for key in ("calibration", "test"):
        if parts[key][0].task != train_src.task:
            raise UserInputError(f"data {name}: the {key} source is {parts[key][0].task} data, train is {train_src.task}")
    num_classes = opts.num_classes or max((s.num_classes or 0) for s, _ in parts.values()) or None
    if num_classes is None and train_src.task == "classification" and splits["test"].y is not None:
        num_classes = int(max(int(s.y.max()) for s in splits.values() if s.y is not None and len(s))) + 1
    return DataBundle(name, splits["train"], calib.materialize(), splits["test"], num_classes, shape,
                      task=train_src.task, preprocessing=prep_info)


def _source(spec: Any, input_shape, opts: DataOptions, name: str) -> SampleSource:
    """A folder path, a module:factory or an object (Dataset / DataLoader) as one sample source."""
    if isinstance(spec, (str, Path)) and Path(spec).is_dir():
        return folder_source(Path(spec), input_shape, opts)
    obj = _call_factory(spec) if isinstance(spec, str) else spec
    loader_ds = getattr(obj, "dataset", None)
    if loader_ds is not None and hasattr(obj, "batch_size"):  # a DataLoader: its (map-style) dataset
        obj = loader_ds
    return DatasetSource(obj, _prep(input_shape, opts, name), name, opts.num_classes)


def _call_factory(spec: str) -> Any:
    mod_name, _, attr = spec.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise UserInputError(f"--data {spec!r}: cannot import module {mod_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserInputError(f"--data {spec!r}: {mod_name} has no callable {attr!r}")
    return factory()


def from_sources(spec: Any, input_shape: Sequence[int] | None, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """Streamed data: a folder of class folders, a ``Dataset`` / ``DataLoader``, a ``module:factory`` returning
    one, or a dict ``{"train": ..., "test": ..., "calibration": ...}`` of them (also ``data.train/test/...``)."""
    opts = options or DataOptions()
    if isinstance(spec, str) and ":" in spec and not Path(spec).exists():
        spec = _call_factory(spec)
        if isinstance(spec, DataBundle):
            return spec
    name = f"folder:{Path(spec).name}" if isinstance(spec, (str, Path)) else f"dataset:{type(spec).__name__}"
    if isinstance(spec, dict) or opts.train or opts.test:
        given = dict(spec) if isinstance(spec, dict) else {}
        given.update({k: getattr(opts, k) for k in ("train", "calibration", "test") if getattr(opts, k)})
        missing = [k for k in ("train", "test") if k not in given]
        if missing:
            raise UserInputError(f"data: separate splits need train and test sources; missing: {', '.join(missing)}")
        srcs = {k: _source(v, input_shape, opts, f"data.{k}") for k, v in given.items() if k in ("train", "calibration", "test")}
        parts = {k: (s, list(range(len(s)))) for k, s in srcs.items()}
        if "calibration" not in parts:  # drawn from train, seeded
            order = torch.randperm(len(srcs["train"]), generator=torch.Generator().manual_seed(seed)).tolist()
            parts["calibration"] = (srcs["train"], order[: opts.calibration_max])
        return _streamed(name if not isinstance(spec, dict) else "splits", parts, input_shape, opts, seed)
    src = _source(spec, input_shape, opts, name)
    train, cal, test = split_indices(len(src), opts.split.as_tuple(), seed, opts.calibration_max)
    return _streamed(name, {"train": (src, train), "calibration": (src, cal), "test": (src, test)}, input_shape, opts, seed)


def from_folder(path: Path, input_shape: Sequence[int] | None, seed: int = 0, options: DataOptions | None = None) -> DataBundle:
    """A folder with one sub-folder of images per class, streamed (see :func:`from_sources`)."""
    return from_sources(Path(path), input_shape, seed, options)


def load_data(spec: Any = None, input_shape: Sequence[int] | None = (3, 32, 32), seed: int = 0,
              options: DataOptions | dict | None = None) -> DataBundle:
    """``None``/``digits`` (built-in), ``random:CxHxW``, a ``.npz`` file, a directory of class folders, a
    ``module:factory``, a ``Dataset`` / ``DataLoader``, or a dict of split sources; ``options`` preprocess and
    split (a recipe's ``data:`` section)."""
    opts = options if isinstance(options, DataOptions) else DataOptions.model_validate(options or {})
    if opts.train or opts.test:
        return from_sources(spec if isinstance(spec, dict) else {}, input_shape, seed, opts)
    if spec is None or (isinstance(spec, str) and spec in ("", "digits")):
        _no_image_options(opts, "digits")
        return digits(input_shape or (3, 32, 32), seed, opts)
    if not isinstance(spec, (str, Path)):
        return spec if isinstance(spec, DataBundle) else from_sources(spec, input_shape, seed, opts)
    from edgekit.tasks.detection_data import detection_data  # detection: digits-det, COCO folders (issue 19)

    found = detection_data(spec, input_shape, seed, opts)
    if found is not None:
        return found
    spec = str(spec)
    if spec.startswith("random:"):
        return random_data(parse_shape(spec.split(":", 1)[1], "--data random:"), seed=seed, options=opts)
    path = Path(spec)
    if path.is_dir():
        return from_folder(path, input_shape, seed, opts)
    if path.suffix == ".npz":
        if not path.is_file():
            raise UserInputError(f"--data {spec}: file does not exist")
        return from_npz(path, input_shape, seed, opts)
    if ":" in spec and not path.suffix:
        return from_sources(spec, input_shape, seed, opts)
    raise UserInputError(
        f"--data {spec!r}: accepted: 'digits' (built-in), 'digits-det' (built-in detection), 'random:CxHxW', a .npz "
        "file (x, y), a folder of class folders, a COCO folder (annotations.json + images), or module:factory "
        "returning a Dataset / DataLoader"
    )


def check_fits(data: DataBundle, input_shape: Sequence[int] | None, model_name: str = "model") -> None:
    if input_shape is not None and tuple(data.input_shape) != tuple(input_shape):
        raise UserInputError(
            f"data {data.name} has samples of shape {tuple(data.input_shape)}, {model_name} takes {tuple(input_shape)}"
        )


__all__ = ["DataBundle", "DataOptions", "Split", "SplitFractions", "StreamSplit", "check_fits", "check_values",
           "load_data", "parse_shape"]
