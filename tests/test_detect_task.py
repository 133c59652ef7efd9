"""Detection task (issue 19): built-in digits-det data, COCO folders, COCO mAP known answers, the detector's
forward / decode / loss, NMS."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")

from edgekit.errors import UserInputError
from edgekit.tasks import get_task, task_of
from edgekit.tasks.coco import coco_map
from edgekit.tasks.detection import box_iou, decode, flatten_levels, nms, packed_strides
from edgekit.tasks.detection_data import MEAN, STD, coco_folder, digits_detection

SMALL = {"train": 16, "calib": 8, "test": 16}


@pytest.fixture(scope="module")
def det():
    return digits_detection((3, 64, 64), seed=0, counts=SMALL)


def test_registry_has_both_tasks_and_bundles_name_theirs(det):
    assert get_task("classification").name == "classification"
    assert task_of(det).name == "detection" and det.task == "detection" and det.num_classes == 10
    assert not det.labeled  # no top-1 labels: accuracy is None, mAP is the figure
    with pytest.raises(UserInputError, match="accepted: .*classification.*detection"):
        get_task("segmentation")


def test_digits_det_is_deterministic_and_splits_are_disjoint_prefixes(det):
    again = digits_detection((3, 64, 64), seed=0, counts={"train": 4, "calib": 2, "test": 20})
    assert torch.equal(again.test.x[:16], det.test.x)  # a smaller count is a prefix of the same canvases
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(again.test.targets, det.test.targets))
    other = digits_detection((3, 64, 64), seed=1, counts=SMALL)
    assert not torch.equal(other.test.x, det.test.x)
    assert not torch.equal(det.train.x[:8], det.test.x[:8])


def test_digits_det_boxes_are_tight_around_the_ink(det):
    for x, t in zip(det.test.x, det.test.targets):
        assert 1 <= len(t["boxes"]) <= 4 and t["labels"].dtype == torch.int64
        assert ((t["labels"] >= 0) & (t["labels"] < 10)).all()
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 64).all() and (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        img = x * STD + MEAN
        for x1, y1, x2, y2 in b.long().tolist():
            inside = img[:, y1:y2, x1:x2].amax()
            assert inside > 0.55  # the digit's ink (>= 0.6 x 0.3 alpha over a background <= 0.45 + clutter)
            assert 8 <= max(x2 - x1, y2 - y1) <= 0.45 * 64 + 1


def test_map_known_answers():
    t = [{"boxes": torch.tensor([[0.0, 0, 10, 10]]), "labels": torch.tensor([0])}]
    perfect = [{"boxes": t[0]["boxes"], "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    assert coco_map(perfect, t) == pytest.approx({"map": 1.0, "map50": 1.0}, abs=1e-9)
    # IoU 0.62: a hit at thresholds .50, .55, .60 of the ten -> mAP@[.5:.95] = 3/10, mAP@.5 = 1
    shifted = [{"boxes": torch.tensor([[0.0, 0, 10, 6.2]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}]
    got = coco_map(shifted, t)
    assert got["map"] == pytest.approx(0.3, abs=1e-9) and got["map50"] == pytest.approx(1.0)
    wrong_class = [{"boxes": t[0]["boxes"], "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}]
    assert coco_map(wrong_class, t, num_classes=2)["map"] == pytest.approx(0.0, abs=1e-9)
    none = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    assert coco_map(none, t) == {"map": 0.0, "map50": 0.0}


def test_nms_and_iou():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]])
    assert box_iou(boxes[:1], boxes[1:2]).item() == pytest.approx(81 / 100)
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.3]), 0.6).tolist() == [1, 2]
    assert nms(boxes, torch.tensor([0.5, 0.9, 0.3]), 0.9).tolist() == [1, 0, 2]


def test_detector_forward_decode_and_loss_shapes(det):
    from edgekit import models as zoo

    model = zoo.create("detector", pretrained=False)
    x, targets = next(det.test.batches(4))
    packed = model(x)
    assert packed.shape == (4, 15, 8 * 8 + 4 * 4) and packed_strides(80, (64, 64)) == [8, 16]
    model.packed = False
    levels = model(x)
    assert [tuple(t.shape) for t in levels] == [(4, 15, 8, 8), (4, 15, 4, 4)]
    raw_a, pts_a, s_a = flatten_levels(packed, (64, 64))
    raw_b, pts_b, s_b = flatten_levels(levels, (64, 64))
    assert torch.equal(raw_a, raw_b) and torch.equal(pts_a, pts_b) and torch.equal(s_a, s_b)
    assert pts_a[0].tolist() == [4.0, 4.0] and pts_a[64].tolist() == [8.0, 8.0]
    dets = decode(packed, (64, 64))
    assert len(dets) == 4 and all(d["boxes"].shape[1] == 4 and len(d["scores"]) <= 100 for d in dets)
    loss = get_task("detection").loss(levels, targets, x)
    loss.backward()
    assert torch.isfinite(loss) and model.backbone.stem[0].rbr_dense[0].conv.weight.grad is not None


def test_shipped_detector_checkpoint_finds_digits(det):
    from edgekit import models as zoo

    path = zoo.info("detector").checkpoint
    assert path.is_file() and path.stat().st_size < 2 * 1024 * 1024
    model = zoo.create("detector", pretrained=True)
    metrics = get_task("detection").evaluate(model, det.test)
    assert metrics["map50"] > 0.5 and metrics["map"] > 0.3, metrics  # measured on the full test split in docs


def _write_coco(root, anns=None, images=None):
    from PIL import Image

    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(12):
        Image.fromarray((np.random.default_rng(i).random((40, 50, 3)) * 255).astype(np.uint8)).save(root / "images" / f"{i}.png")
    doc = {
        "images": images or [{"id": i, "file_name": f"{i}.png", "width": 50, "height": 40} for i in range(12)],
        "annotations": anns if anns is not None else [
            {"id": i, "image_id": i, "category_id": 7, "bbox": [5, 4, 20, 10]} for i in range(12)],
        "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
    }
    (root / "annotations.json").write_text(json.dumps(doc))


def test_coco_folder_loads_and_scales_boxes(tmp_path):
    from edgekit.data import load_data

    _write_coco(tmp_path)
    bundle = load_data(str(tmp_path), (3, 80, 100))
    assert bundle.task == "detection" and bundle.num_classes == 2 and bundle.name.startswith("coco:")
    x, targets = next(bundle.test.batches(8))
    assert x.shape[1:] == (3, 80, 100)
    assert targets[0]["boxes"].tolist() == [[10.0, 8.0, 50.0, 28.0]]  # (5,4,20x10) scaled x2
    assert targets[0]["labels"].tolist() == [1]  # category ids renumbered in id order: 3 -> 0, 7 -> 1


@pytest.mark.parametrize("anns,match", [
    ([{"id": 0, "image_id": 0, "category_id": 9, "bbox": [0, 0, 5, 5]}], r"annotations\[0\]\.category_id: 9; accepted: 3, 7"),
    ([{"id": 0, "image_id": 0, "category_id": 7, "bbox": [0, 0, -5, 5]}], r"annotations\[0\]\.bbox: width and height"),
    ([{"id": 0, "image_id": 0, "category_id": 7, "bbox": [0, 0, 5]}], r"annotations\[0\]\.bbox: .*four finite numbers"),
    ([{"id": 0, "image_id": 99, "category_id": 7, "bbox": [0, 0, 5, 5]}], r"annotations\[0\]\.image_id: 99"),
    ([{"id": 0, "category_id": 7, "bbox": [0, 0, 5, 5]}], r"annotations\[0\]: missing field 'image_id'"),
])
def test_coco_folder_bad_annotations_name_the_field(tmp_path, anns, match):
    _write_coco(tmp_path, anns=anns)
    with pytest.raises(UserInputError, match=match) as exc:
        coco_folder(tmp_path, (3, 64, 64))
    assert "annotations.json" in str(exc.value)


def test_coco_folder_missing_image_is_named(tmp_path):
    _write_coco(tmp_path, images=[{"id": 0, "file_name": "nope.png"}], anns=[])
    with pytest.raises(UserInputError, match=r"images\[0\]\.file_name: 'nope.png' not found"):
        coco_folder(tmp_path, (3, 64, 64))


def test_export_task_check_fails_when_decoded_boxes_move(det):
    from edgekit import models as zoo
    from edgekit.exporters.validation import task_checks

    model = zoo.create("detector", pretrained=True)
    with torch.no_grad():
        ref = model(det.test.x[:8]).numpy()
    same = task_checks("detection", ref.copy(), ref, (64, 64))
    assert same[0]["passed"] and "box_match_rate=1" in same[0]["detail"]
    moved = ref.copy()
    moved[:, :4] += 0.7  # every distance x2: boxes twice as large, IoU with the reference ~0.25
    bad = task_checks("detection", moved, ref, (64, 64))
    assert not bad[0]["passed"], bad
    assert task_checks("classification", ref, ref, (64, 64)) == []
