"""``--bisect``: find the first layer whose intermediate tensor drifts, for ONNX-graph targets (onnx, openvino).

Reference: the fp32 hub ONNX graph run on ONNX Runtime with every graph optimization disabled, which is
itself checked against PyTorch first (if its final output already misses the fp32 tolerance, the drift is in
the PyTorch -> ONNX conversion and that is what the report says). Candidate: the artifact's graph (its
precision; the same node names, fp16's ``/inner`` wrapper scope stripped) on the artifact's runtime (ONNX Runtime
with full optimizations, or the OpenVINO CPU plugin), with every intermediate tensor exposed as an output.
Tensors are matched by producing node name and shape and walked in graph order; the first whose metric breaks
the precision's tolerance (validation.TOLERANCES, cosine / rel_err only) is named with its node, op and the
PyTorch module scope the exporter recorded in the node name.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.exporters.validation import TOLERANCES, _ok, compare

SUPPORTED = ("onnx", "openvino")


def _scope(node_name: str) -> str:
    parts = [p for p in node_name.split("/") if p and p != "inner"]
    return parts[-2] if len(parts) >= 2 else node_name


def _norm(node_name: str) -> str:
    return node_name.replace("/inner/", "/", 1) if node_name.startswith("/inner/") else node_name


def expose_all(src: Path, dst: Path) -> list[tuple[str, str, str]]:
    """Copy ``src`` to ``dst`` with every float node output added as a graph output.

    Returns ``(tensor, node name, op)`` in graph order.
    """
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    types = {v.name: v for v in list(model.graph.value_info) + list(model.graph.output)}
    existing = {o.name for o in model.graph.output}
    order = []
    for n in model.graph.node:
        for out in n.output:
            vi = types.get(out)
            if vi is None or vi.type.tensor_type.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
                continue
            if out not in existing:
                model.graph.output.append(vi)
                existing.add(out)
            order.append((out, n.name or out, n.op_type))
    onnx.save(model, str(dst))
    return order


def _run_ort(path: Path, x: np.ndarray, optimize: bool) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"input": x})))


def _run_openvino(path: Path, x: np.ndarray, precision: str) -> dict[str, np.ndarray]:
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
    res = compiled.create_infer_request().infer({0: x})
    out = {}
    for port, val in res.items():
        for name in port.get_names():
            out[name] = np.asarray(val)
    return out


def bisect_artifact(exporter, directory: Path, manifest: dict[str, Any], model, x) -> dict[str, Any]:
    """Compare intermediate tensors of the artifact's graph with the fp32 reference graph; see module doc."""
    from edgekit.exporters.base import ExportContext
    from edgekit.exporters.onnx import write_onnx

    target, precision = manifest["target"], manifest["precision"]
    if target not in SUPPORTED:
        return {"supported": False, "summary": f"bisect supports {', '.join(SUPPORTED)} targets, not {target}"}
    x = np.ascontiguousarray(x.numpy() if hasattr(x, "numpy") else x, dtype=np.float32)
    tol = {k: v for k, v in TOLERANCES[precision].items() if k in ("cosine", "rel_err")}
    opts = dict(manifest.get("options", {}))
    with tempfile.TemporaryDirectory(prefix="edgekit-bisect-") as tmp:
        tmp = Path(tmp)
        ctx = ExportContext(model, manifest.get("model", "model"), __import__("torch").from_numpy(x), "fp32", opts, tmp)
        ref_path = write_onnx(ctx, tmp / "ref.onnx", "fp32")
        if target == "onnx":
            cand_path = directory / manifest["model_file"]
        else:
            cand_path = write_onnx(ctx, tmp / "cand.onnx", "fp32" if precision == "fp16" else precision)
        ref_order = expose_all(ref_path, tmp / "ref_all.onnx")
        cand_order = expose_all(cand_path, tmp / "cand_all.onnx")
        ref_vals = _run_ort(tmp / "ref_all.onnx", x, optimize=False)
        if target == "onnx":
            cand_vals = _run_ort(tmp / "cand_all.onnx", x, optimize=True)
        else:
            if precision == "fp16":  # the IR is the fp32 graph with fp16-compressed weights
                import openvino as ov

                ov.save_model(ov.convert_model(str(tmp / "cand_all.onnx")), str(tmp / "cand.xml"), compress_to_fp16=True)
                cand_vals = _run_openvino(tmp / "cand.xml", x, precision)
            else:
                cand_vals = _run_openvino(tmp / "cand_all.onnx", x, precision)
    with __import__("torch").no_grad():
        torch_out = model(__import__("torch").from_numpy(x))
    torch_out = (torch_out[0] if isinstance(torch_out, (tuple, list)) else torch_out).float().numpy()
    ref_final = compare(ref_vals[ref_order[-1][0]] if ref_order else ref_vals["output"], torch_out)
    conversion_ok = ref_final["rel_err"] <= TOLERANCES["fp32"]["rel_err"][1]
    ref_by_node = {_norm(node): (t, op) for t, node, op in ref_order}
    layers, first = [], None
    for tensor, node, op in cand_order:
        key = _norm(node)
        if key not in ref_by_node or tensor not in cand_vals:
            continue
        ref_t = ref_vals.get(ref_by_node[key][0])
        got = cand_vals[tensor]
        if ref_t is None or ref_t.shape != got.shape:
            continue
        m = compare(got, ref_t)
        ok = all(_ok(m[k], op_, b) for k, (op_, b) in tol.items())
        row = {"node": key, "op": op, "layer": _scope(key), "cosine": m["cosine"], "rel_err": m["rel_err"], "ok": ok}
        layers.append(row)
        if not ok and first is None:
            first = row
    if not conversion_ok:
        summary = (f"the fp32 ONNX graph already differs from PyTorch (rel_err={ref_final['rel_err']:.2e}): "
                   "the drift is in the PyTorch -> ONNX conversion")
    elif first:
        summary = (f"first drifting layer: {first['layer']} (node {first['node']}, op {first['op']}): "
                   f"cosine={first['cosine']:.6f} rel_err={first['rel_err']:.2e}")
    else:
        summary = f"no layer drifts beyond the {precision} tolerance ({len(layers)} tensors compared)"
    return {"supported": True, "summary": summary, "first_drift": first, "conversion_rel_err": ref_final["rel_err"],
            "compared": len(layers), "layers": layers[:400]}
