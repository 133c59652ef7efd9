"""Decoding and NMS inside an exported detector graph (ONNX ``NonMaxSuppression``), as an option next to the
default (raw outputs, decoding + NMS outside the graph: :func:`edgekit.tasks.detection.decode`).

:func:`append_nms` takes the ONNX file of a packed detector (one ``(N, 5 + C, A)`` output, see
:mod:`edgekit.models.detector`) and writes a copy whose graph ends with the same decoding as ``decode``
(``exp(min(raw, MAX_LOG))`` ltrb distances in strides around the cell centres, boxes clipped to the image, scores
``sqrt(sigmoid(class) * sigmoid(centerness))``) followed by ONNX ``NonMaxSuppression`` (per class, as ``decode``
offsets boxes per class). Outputs: ``boxes`` ``(K, 4)`` x1, y1, x2, y2 px; ``scores`` ``(K,)``; ``selected``
``(K, 3)`` int64 ``[image, class, location]``. ONNX Runtime and OpenVINO (which reads the ONNX file or converts it
to IR) both run ``NonMaxSuppression``; :func:`nms_agreement` checks the graph's detections against ``decode`` of
the model's raw outputs.

Differences from ``decode``, by construction of the ONNX operator: ``max_detections`` bounds the boxes kept *per
class* (``decode``: the best ``pre_nms`` candidates before NMS, ``max_detections`` in all); boxes above
``CONFIDENT`` agree (tested), low-score tails can differ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgekit.errors import UserInputError
from edgekit.tasks.detection import MAX_LOG, flatten_levels


def append_nms(src: str | Path, dst: str | Path, hw: Sequence[int], score_threshold: float = 0.05,
               iou_threshold: float = 0.6, max_detections: int = 100) -> Path:
    """Write ``dst``: the ONNX model ``src`` with decoding + ``NonMaxSuppression`` appended (module docstring)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.artifacts import write_bytes_atomic

    model = onnx.load(str(src))
    g = model.graph
    if len(g.output) != 1:
        raise UserInputError(f"{src}: NMS in the graph needs the packed detector output (one tensor (N, 5 + C, A)); "
                             f"the graph has {len(g.output)} outputs")
    dims = [d.dim_value for d in g.output[0].type.tensor_type.shape.dim]
    if len(dims) != 3 or dims[1] < 6 or dims[2] <= 0:
        raise UserInputError(f"{src}: output {g.output[0].name} has shape {dims}; accepted: (N, 5 + classes, locations)")
    raw_name, locations = g.output[0].name, dims[2]
    _, points, strides = flatten_levels(torch.zeros(1, dims[1], locations), hw)
    h, w = float(hw[0]), float(hw[1])
    consts = {
        "nms_points": points.t().repeat(2, 1)[None].numpy().astype(np.float32),  # (1, 4, A): x, y, x, y
        "nms_sign": np.array([-1, -1, 1, 1], np.float32).reshape(1, 4, 1),
        "nms_strides": strides.reshape(1, 1, -1).numpy().astype(np.float32),
        "nms_max_log": np.array(MAX_LOG, np.float32),
        "nms_zero": np.array(0.0, np.float32),
        "nms_size": np.array([w, h, w, h], np.float32).reshape(1, 4, 1),
        "nms_axis1": np.array([1], np.int64),
        "nms_max_out": np.array([max_detections], np.int64),
        "nms_iou": np.array([iou_threshold], np.float32),
        "nms_score": np.array([score_threshold], np.float32),
        "nms_ba": np.array([0, 2], np.int64),
    }
    for name, (start, end) in {"nms_reg": (0, 4), "nms_ctr": (4, 5), "nms_cls_logits": (5, dims[1])}.items():
        consts[f"{name}_s"], consts[f"{name}_e"] = np.array([start], np.int64), np.array([end], np.int64)
    for name, value in consts.items():
        g.initializer.append(numpy_helper.from_array(value, name))
    n = helper.make_node
    for name in ("nms_reg", "nms_ctr", "nms_cls_logits"):
        g.node.append(n("Slice", [raw_name, f"{name}_s", f"{name}_e", "nms_axis1"], [name]))
    g.node.extend([
        n("Min", ["nms_reg", "nms_max_log"], ["nms_reg_c"]),
        n("Exp", ["nms_reg_c"], ["nms_dist_s"]),
        n("Mul", ["nms_dist_s", "nms_strides"], ["nms_dist"]),
        n("Mul", ["nms_dist", "nms_sign"], ["nms_offsets"]),
        n("Add", ["nms_points", "nms_offsets"], ["nms_corners"]),
        n("Max", ["nms_corners", "nms_zero"], ["nms_corners0"]),
        n("Min", ["nms_corners0", "nms_size"], ["nms_corners1"]),
        n("Transpose", ["nms_corners1"], ["nms_boxes"], perm=[0, 2, 1]),  # (N, A, 4)
        n("Sigmoid", ["nms_cls_logits"], ["nms_p_cls"]),
        n("Sigmoid", ["nms_ctr"], ["nms_p_ctr"]),
        n("Mul", ["nms_p_cls", "nms_p_ctr"], ["nms_p"]),
        n("Sqrt", ["nms_p"], ["nms_scores"]),  # (N, C, A)
        n("NonMaxSuppression", ["nms_boxes", "nms_scores", "nms_max_out", "nms_iou", "nms_score"], ["selected"]),
        n("GatherND", ["nms_scores", "selected"], ["scores"]),
        n("Gather", ["selected", "nms_ba"], ["nms_sel_ba"], axis=1),
        n("GatherND", ["nms_boxes", "nms_sel_ba"], ["boxes"]),
    ])
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["K", 4]),
                     helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["K"]),
                     helper.make_tensor_value_info("selected", TensorProto.INT64, ["K", 3])])
    if all(o.domain in ("", "ai.onnx") and o.version < 11 for o in model.opset_import):
        raise UserInputError(f"{src}: NonMaxSuppression needs opset >= 11")
    onnx.checker.check_model(model)
    dst = Path(dst)
    write_bytes_atomic(dst, model.SerializeToString())
    return dst


def detections(boxes: np.ndarray, scores: np.ndarray, selected: np.ndarray, batch: int) -> list[dict[str, torch.Tensor]]:
    """The graph's outputs as ``decode``'s per-image dicts (boxes, scores, labels), best score first."""
    out = []
    for b in range(batch):
        m = selected[:, 0] == b
        order = np.argsort(-scores[m], kind="stable")
        out.append({"boxes": torch.from_numpy(boxes[m][order]), "scores": torch.from_numpy(scores[m][order]),
                    "labels": torch.from_numpy(selected[m, 1][order])})
    return out


def nms_agreement(raw_model: str | Path, nms_model: str | Path, x: np.ndarray, runtime: str = "onnxruntime",
                  threads: int = 1) -> dict[str, float | int | None]:
    """Decoded-box agreement (:func:`edgekit.tasks.detection._agreement`: the reference's boxes above ``CONFIDENT``
    found again, same class, IoU >= 0.5) of the NMS graph ``nms_model`` with ``decode`` of ``raw_model``'s output,
    image by image, on ``runtime`` (onnxruntime | openvino)."""
    from edgekit.exporters.runtimes import openvino_compiled, ort_session
    from edgekit.tasks.detection import _agreement, decode

    hw = x.shape[-2:]
    if runtime == "onnxruntime":
        raw_s, nms_s = ort_session(Path(raw_model), threads), ort_session(Path(nms_model), threads)
        raw_run = lambda a: raw_s.run(None, {raw_s.get_inputs()[0].name: a})[0]  # noqa: E731
        nms_run = lambda a: nms_s.run(None, {nms_s.get_inputs()[0].name: a})  # noqa: E731
    elif runtime == "openvino":
        raw_r = openvino_compiled(Path(raw_model), threads).create_infer_request()
        nms_r = openvino_compiled(Path(nms_model), threads).create_infer_request()
        raw_run = lambda a: np.asarray(raw_r.infer({0: a})[0])  # noqa: E731
        nms_run = lambda a: [np.asarray(v) for v in nms_r.infer({0: a}).values()]  # noqa: E731
    else:
        raise UserInputError(f"NMS in the graph: runtime {runtime!r}; accepted: onnxruntime, openvino")
    ref, got = [], []
    for i in range(len(x)):
        a = np.ascontiguousarray(x[i : i + 1], dtype=np.float32)
        ref += decode(torch.from_numpy(raw_run(a)), hw)
        boxes, scores, selected = nms_run(a)
        got += detections(boxes, scores, selected.astype(np.int64), 1)
    return _agreement(ref, got)
