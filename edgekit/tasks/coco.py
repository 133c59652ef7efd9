"""COCO detection metrics through pycocotools (the reference implementation; never re-implemented here).

``coco_map(predictions, targets)`` builds an in-memory COCO ground truth from the target dicts and scores the
predicted boxes with ``pycocotools.cocoeval.COCOeval`` (Lin et al., "Microsoft COCO: Common Objects in
Context", ECCV 2014): mAP@[.5:.95] (``stats[0]``) and mAP@.5 (``stats[1]``), 101-point interpolation, up to 100
detections per image.
"""

from __future__ import annotations

import contextlib
import io
from typing import Sequence

import torch

from edgekit.errors import MissingDependencyError


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().double().reshape(-1, 4)
    return torch.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1).tolist()


def coco_map(predictions: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
             num_classes: int | None = None) -> dict[str, float | None]:
    """``{"map": mAP@[.5:.95], "map50": mAP@.5}`` of ``predictions`` (per image: ``boxes`` x1,y1,x2,y2,
    ``scores``, ``labels``) against ``targets`` (``boxes``, ``labels``); None when there is no ground truth box."""
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MissingDependencyError("detection metrics need pycocotools: pip install 'pycocotools>=2.0'") from None
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} images")
    labels = set()
    images, gts, dets = [], [], []
    for i, t in enumerate(targets):
        images.append({"id": i + 1})
        for box, label in zip(_xywh(t["boxes"]), t["labels"].tolist()):
            labels.add(int(label))
            gts.append({"id": len(gts) + 1, "image_id": i + 1, "category_id": int(label) + 1, "bbox": box,
                        "area": box[2] * box[3], "iscrowd": 0})
        p = predictions[i]
        for box, score, label in zip(_xywh(p["boxes"]), p["scores"].tolist(), p["labels"].tolist()):
            dets.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": box, "score": float(score)})
    if not gts:
        return {"map": None, "map50": None}
    if not dets:
        return {"map": 0.0, "map50": 0.0}
    n = num_classes or (max(labels) + 1)
    gt = COCO()
    gt.dataset = {"images": images, "annotations": gts, "categories": [{"id": c + 1} for c in range(n)]}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {"map": max(0.0, float(ev.stats[0])), "map50": max(0.0, float(ev.stats[1]))}
