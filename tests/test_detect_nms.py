"""NMS inside the exported detector graph (issue 19): decoding + ONNX NonMaxSuppression appended to the zoo
detector's ONNX agree with ``decode`` (outside the graph) on ONNX Runtime and OpenVINO; a graph that is not a
packed detector is refused with a message naming the file and the accepted shape."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("pycocotools")

from edgekit import models as zoo
from edgekit.errors import UserInputError


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.tasks.detection_data import digits_detection
    from edgekit.tasks.detection_nms import append_nms

    tmp = tmp_path_factory.mktemp("nms")
    data = digits_detection((3, 64, 64), seed=0, counts={"train": 16, "calib": 16, "test": 24})
    raw = to_onnx(zoo.load("detector").model.eval(), data.test.x[:1], tmp / "raw.onnx")
    return raw, append_nms(raw, tmp / "nms.onnx", (64, 64)), data.test.x.numpy()


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_nms_in_graph_agrees_with_decode(exported, runtime):
    pytest.importorskip(runtime)
    from edgekit.tasks.detection_nms import nms_agreement

    raw, nms, x = exported
    agree = nms_agreement(raw, nms, x, runtime)
    assert agree["boxes_compared"] >= 40, agree  # the check is not vacuous: confident boxes on 24 canvases
    assert agree["box_match_rate"] >= 0.99 and agree["box_iou_mean"] >= 0.99, agree
    assert agree["score_abs_diff_mean"] <= 1e-4, agree


def test_nms_refuses_a_graph_that_is_not_a_packed_detector(tmp_path):
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.tasks.detection_nms import append_nms

    path = to_onnx(torch.nn.Conv2d(3, 4, 1).eval(), torch.randn(1, 3, 8, 8), tmp_path / "conv.onnx")
    with pytest.raises(UserInputError, match=r"conv\.onnx.*accepted: \(N, 5 \+ classes, locations\)"):
        append_nms(path, tmp_path / "out.onnx", (8, 8))
