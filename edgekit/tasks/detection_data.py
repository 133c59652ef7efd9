"""Detection data: the built-in ``digits-det`` set (offline) and COCO-format annotation folders.

``digits-det`` pastes scikit-learn's handwritten digits (8x8, shipped with scikit-learn) at random scales and
positions onto small colour canvases with clutter (line segments, rectangle outlines, specks, noise): 1 to 4
digits per image, each with its tight box and class (0-9). It is seeded and its splits are fixed: the 1797
digits are divided once (60 / 20 / 20 %) into train / validation / test digit pools, so no test digit is ever
pasted into a training canvas. The validation canvases are the bundle's calibration split.

A COCO folder is a directory with ``annotations.json`` (or ``instances*.json``) in the COCO detection format
(``images``: id, file_name, width, height; ``annotations``: image_id, category_id, bbox ``[x, y, w, h]``;
``categories``: id, name) and the image files it names (relative to the folder or to ``images/``). Images are
resized to the model's H x W, boxes scaled with them; categories are renumbered 0..K-1 in id order.

Targets are dicts ``{"boxes": float32 K x 4 (x1, y1, x2, y2, input pixels), "labels": int64 K}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from edgekit.datasources import SampleSource
from edgekit.errors import UserInputError

BUILTIN = "digits-det"
DEFAULT_SHAPE = (3, 64, 64)
COUNTS = {"train": 2400, "calib": 256, "test": 400}
MEAN, STD = 0.5, 0.25  # inputs are (pixel - MEAN) / STD with pixels in 0..1
MAX_ANNOTATION_BYTES = 256 << 20


def _split_cls():
    from edgekit.data import Split

    @dataclass
    class DetectionSplit(Split):
        """An in-memory detection split: images ``x`` (N x C x H x W), ``y`` None (no top-1 labels) and one
        target dict per image; ``batches`` yields ``(x, [targets])`` like a streamed detection split."""

        targets: list[dict[str, torch.Tensor]] = field(default_factory=list)

        def batches(self, batch_size: int, shuffle: bool = False, seed: int = 0):
            n = len(self)
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)) if shuffle else torch.arange(n)
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                yield self.x[idx], [self.targets[int(j)] for j in idx]

        def subset(self, n: int) -> "DetectionSplit":
            return DetectionSplit(self.x[:n], None, self.targets[:n])

    return DetectionSplit


DetectionSplit = _split_cls()


# ------------------------------------------------------------------------------------------------ built-in set


def _digit_pools(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    raw = load_digits()
    order = np.random.default_rng(seed).permutation(len(raw.target))
    a, b = int(0.6 * len(order)), int(0.8 * len(order))
    parts = {"train": order[:a], "calib": order[a:b], "test": order[b:]}
    return {k: (raw.images[v].astype(np.float32) / 16.0, raw.target[v].astype(np.int64)) for k, v in parts.items()}


def _iou(box: np.ndarray, others: list[np.ndarray]) -> float:
    best = 0.0
    for o in others:
        w = max(0.0, min(box[2], o[2]) - max(box[0], o[0]))
        h = max(0.0, min(box[3], o[3]) - max(box[1], o[1]))
        inter = w * h
        union = (box[2] - box[0]) * (box[3] - box[1]) + (o[2] - o[0]) * (o[3] - o[1]) - inter
        best = max(best, inter / union if union > 0 else 0.0)
    return best


def _clutter(canvas: np.ndarray, rng: np.random.Generator) -> None:
    c, h, w = canvas.shape
    for _ in range(int(rng.integers(2, 6))):  # line segments and rectangle outlines, dim colours
        color = rng.uniform(0.15, 0.5, size=(c, 1))
        x0, x1 = sorted(rng.integers(0, w, 2))
        y0, y1 = sorted(rng.integers(0, h, 2))
        if rng.random() < 0.5:
            n = max(x1 - x0, y1 - y0, 1) + 1
            xs = np.linspace(x0, x1, n).round().astype(int)
            ys = np.linspace(y0, y1, n).round().astype(int) if rng.random() < 0.5 else np.linspace(y1, y0, n).round().astype(int)
            canvas[:, ys, xs] = color
        else:
            canvas[:, y0, x0 : x1 + 1] = color
            canvas[:, y1, x0 : x1 + 1] = color
            canvas[:, y0 : y1 + 1, x0] = color
            canvas[:, y0 : y1 + 1, x1] = color
    for _ in range(int(rng.integers(3, 10))):  # specks of 1-3 pixels
        s = int(rng.integers(1, 4))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        canvas[:, y : y + s, x : x + s] = rng.uniform(0.2, 0.8, size=(c, 1, 1))


def _paste(canvas: np.ndarray, digit: np.ndarray, size: int, y: int, x: int, color: np.ndarray) -> np.ndarray | None:
    """Alpha-paste ``digit`` scaled to ``size``; the tight box of its ink (x1, y1, x2, y2) or None if none."""
    t = torch.from_numpy(digit)[None, None]
    alpha = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    ys, xs = np.nonzero(alpha > 0.3)
    if len(ys) == 0:
        return None
    region = canvas[:, y : y + size, x : x + size]
    region[...] = region * (1 - alpha) + color[:, None, None] * alpha
    return np.array([x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1], dtype=np.float32)


def _canvas(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, shape: Sequence[int]):
    c, h, w = shape
    base = rng.uniform(0.0, 0.3, size=(c, 1, 1))
    ramp = np.linspace(0, rng.uniform(-0.15, 0.15), w, dtype=np.float32)[None, None, :]
    canvas = (base + ramp + rng.normal(0, 0.04, size=(c, h, w))).astype(np.float32)
    _clutter(canvas, rng)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    lo, hi = max(8, int(0.18 * min(h, w))), max(9, int(0.45 * min(h, w)))
    for _ in range(int(rng.integers(1, 5))):
        for _attempt in range(10):
            size = int(rng.integers(lo, hi + 1))
            y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
            probe = np.array([x, y, x + size, y + size], dtype=np.float32)
            if _iou(probe, boxes) < 0.1:
                k = int(rng.integers(0, len(labels)))
                color = rng.uniform(0.6, 1.0, size=c).astype(np.float32)
                box = _paste(canvas, images[k], size, y, x, color)
                if box is not None:
                    boxes.append(box)
                    classes.append(int(labels[k]))
                break
    canvas = np.clip(canvas, 0, 1)
    target = {"boxes": torch.from_numpy(np.stack(boxes)) if boxes else torch.zeros(0, 4),
              "labels": torch.tensor(classes, dtype=torch.int64)}
    return canvas, target


@lru_cache(maxsize=4)
def _builtin(shape: tuple[int, int, int], seed: int, counts: tuple[tuple[str, int], ...]):
    pools = _digit_pools(seed)
    out = {}
    for i, (split, n) in enumerate(counts):
        rng = np.random.default_rng([seed, i, 19])
        images, labels = pools[split]
        xs, ts = [], []
        for _ in range(n):
            canvas, target = _canvas(rng, images, labels, shape)
            xs.append(canvas)
            ts.append(target)
        x = (torch.from_numpy(np.stack(xs)) - MEAN) / STD
        out[split] = (x, ts)
    return out


def digits_detection(input_shape: Sequence[int] | None = None, seed: int = 0, counts: dict[str, int] | None = None):
    """The built-in ``digits-det`` :class:`~edgekit.data.DataBundle` (task ``detection``, 10 classes)."""
    from edgekit.data import DataBundle

    shape = tuple(input_shape or DEFAULT_SHAPE)
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 32:
        raise UserInputError(f"--data {BUILTIN}: input shape {shape}; accepted: (1 or 3) x H x W with H, W >= 32")
    counts = {**COUNTS, **(counts or {})}
    made = _builtin(shape, seed, tuple((k, int(counts[k])) for k in ("train", "calib", "test")))
    splits = {k: DetectionSplit(x.clone(), None, list(t)) for k, (x, t) in made.items()}
    return DataBundle(BUILTIN, splits["train"], splits["calib"], splits["test"], num_classes=10, input_shape=shape,
                      task="detection", preprocessing={"normalize": f"(pixel - {MEAN}) / {STD}", "classes": "digits 0-9"})


# ------------------------------------------------------------------------------------------------ COCO folders


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise UserInputError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise UserInputError(f"{where}.{key}: {value!r} is a {type(value).__name__}; accepted: {names}")
    return value


def _annotation_file(folder: Path) -> Path | None:
    for name in ("annotations.json", *sorted(p.name for p in folder.glob("instances*.json"))):
        if (folder / name).is_file():
            return folder / name
    if (folder / "annotations").is_dir():
        found = sorted((folder / "annotations").glob("*.json"))
        return found[0] if found else None
    return None


def read_coco(path: Path) -> tuple[list[dict[str, Any]], dict[int, int], list[str]]:
    """Parse and check a COCO annotation file: ``(images with their boxes, category id -> label, names)``.

    Every image gets ``boxes`` (x1, y1, x2, y2 in its own pixels) and ``labels``; errors name the file, the
    entry and the field."""
    from edgekit.limits import safe_json_file

    doc = safe_json_file(path, "COCO annotations", max_bytes=MAX_ANNOTATION_BYTES)
    images = _field(doc, "images", list, str(path))
    anns = _field(doc, "annotations", list, str(path))
    cats = _field(doc, "categories", list, str(path))
    if not images or not cats:
        raise UserInputError(f"{path}: 'images' and 'categories' must not be empty")
    cat_ids = sorted(_field(c, "id", int, f"{path}: categories[{i}]") for i, c in enumerate(cats))
    if len(set(cat_ids)) != len(cat_ids):
        raise UserInputError(f"{path}: categories: duplicate id")
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    names_by_id = {c["id"]: str(c.get("name", c["id"])) for c in cats}
    by_id: dict[int, dict[str, Any]] = {}
    for i, im in enumerate(images):
        where = f"{path}: images[{i}]"
        iid = _field(im, "id", int, where)
        entry = {"id": iid, "file_name": _field(im, "file_name", str, where), "boxes": [], "labels": [],
                 "width": im.get("width"), "height": im.get("height")}
        if iid in by_id:
            raise UserInputError(f"{where}.id: duplicate image id {iid}")
        by_id[iid] = entry
    for i, ann in enumerate(anns):
        where = f"{path}: annotations[{i}]"
        iid = _field(ann, "image_id", int, where)
        cid = _field(ann, "category_id", int, where)
        bbox = _field(ann, "bbox", list, where)
        if iid not in by_id:
            raise UserInputError(f"{where}.image_id: {iid} is not the id of any entry of 'images'")
        if cid not in label_of:
            raise UserInputError(f"{where}.category_id: {cid}; accepted: {', '.join(map(str, cat_ids))}")
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
            raise UserInputError(f"{where}.bbox: {bbox!r}; accepted: four finite numbers [x, y, width, height]")
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            raise UserInputError(f"{where}.bbox: width and height must be positive; got {w} x {h}")
        if ann.get("iscrowd", 0):
            continue
        by_id[iid]["boxes"].append([x, y, x + w, y + h])
        by_id[iid]["labels"].append(label_of[cid])
    return list(by_id.values()), label_of, [names_by_id[c] for c in cat_ids]


class CocoSource(SampleSource):
    """A COCO folder as a detection sample source (streamed: one image decoded at a time)."""

    task = "detection"
    labeled = True

    def __init__(self, folder: Path, shape: Sequence[int]) -> None:
        self.folder, self.shape = Path(folder), tuple(shape)
        ann = _annotation_file(self.folder)
        if ann is None:
            raise UserInputError(f"{folder}: no COCO annotation file (annotations.json, instances*.json or annotations/*.json)")
        self.annotations = ann
        self.images, self.label_of, self.classes = read_coco(ann)
        self.num_classes = len(self.classes)
        for i, im in enumerate(self.images):
            if self._path(im) is None:
                raise UserInputError(f"{ann}: images[{i}].file_name: {im['file_name']!r} not found in {folder} or {folder / 'images'}")

    def _path(self, im: dict[str, Any]) -> Path | None:
        for base in (self.folder, self.folder / "images"):
            p = base / im["file_name"]
            if p.is_file() and p.resolve().is_relative_to(self.folder.resolve()):
                return p
        return None

    def __len__(self) -> int:
        return len(self.images)

    def where(self, i: int) -> str:
        return str(self._path(self.images[i]) or self.images[i]["file_name"])

    def labels(self) -> None:
        return None

    def load(self, i: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from PIL import Image, UnidentifiedImageError

        im, path = self.images[i], self._path(self.images[i])
        c, h, w = self.shape
        try:
            with Image.open(path) as pil:
                w0, h0 = pil.size
                pil = pil.convert("RGB" if c == 3 else "L").resize((w, h), Image.BILINEAR)
                x = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
        except (UnidentifiedImageError, OSError) as exc:
            raise UserInputError(f"{path}: not a readable image ({exc})") from None
        x = x.permute(2, 0, 1) if x.dim() == 3 else x[None]
        boxes = torch.tensor(im["boxes"], dtype=torch.float32).reshape(-1, 4)
        boxes *= torch.tensor([w / w0, h / h0, w / w0, h / h0])
        return (x - MEAN) / STD, {"boxes": boxes, "labels": torch.tensor(im["labels"], dtype=torch.int64)}


def coco_folder(folder: Path, input_shape: Sequence[int] | None, seed: int = 0, options: Any = None):
    """A COCO folder as a streamed detection :class:`~edgekit.data.DataBundle` (seeded splits)."""
    from edgekit.data import DataBundle
    from edgekit.data_options import DataOptions
    from edgekit.datasources import StreamSplit, split_indices

    opts = options if isinstance(options, DataOptions) else DataOptions.model_validate(options or {})
    shape = tuple(input_shape or DEFAULT_SHAPE)
    src = CocoSource(folder, shape)
    parts = split_indices(len(src), opts.split.as_tuple(), seed, opts.calibration_max)
    train, calib, test = (StreamSplit(src, p, shape, batch_size=opts.batch_size) for p in parts)  # type: ignore[arg-type]
    return DataBundle(f"coco:{folder}", train, calib.materialize(), test, num_classes=src.num_classes,
                      input_shape=shape, task="detection",
                      preprocessing={"resize": list(shape[1:]), "normalize": f"(pixel/255 - {MEAN}) / {STD}",
                                     "annotations": str(src.annotations)})


def detection_data(spec: Any, input_shape: Sequence[int] | None, seed: int = 0, options: Any = None):
    """The detection bundle ``spec`` names (``digits-det`` or a COCO folder), or None if it names none."""
    if isinstance(spec, str) and spec == BUILTIN:
        return digits_detection(input_shape, seed)
    if isinstance(spec, (str, Path)) and Path(spec).is_dir() and _annotation_file(Path(spec)) is not None:
        return coco_folder(Path(spec), input_shape, seed, options)
    return None


def batches_of(split: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, list[dict[str, torch.Tensor]]]]:
    """``(x, targets)`` batches of a detection split (in memory or streamed)."""
    for x, targets in split.batches(batch_size):
        if targets is None:
            raise UserInputError("detection evaluation needs targets (boxes and labels); the split has none")
        yield x, targets
