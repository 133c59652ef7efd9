"""Where the ONNX Runtime / OpenVINO / TVM graph of a BiViT model departs from PyTorch, measured: the data
behind the ``w1a1`` / ``w1a8`` validation tolerances in exporters/validation.py (BiViT, He et al., ICCV 2023).

The exported graph does what the PyTorch model does, op for op: the +-1 and int8 products are exact integers
(scales applied after them), the attention mask is a subtraction and a comparison (no ``exp``), and eval mode
traces no straight-through arithmetic. What remains are float ops whose last bit depends on the library
(LayerNorm, GELU's erf, the remaining softmax, the patch-embedding convolution's summation order). A binary or
int8 layer turns such a one-ulp difference into a whole step when the value sits on a sign threshold or a
rounding midpoint (and a per-tensor int8 scale ``max|x| / 127`` moves every code of a tensor when the max moves
by one ulp). That is inherent to thresholds evaluated by two libraries, so these precisions are judged by the
logits' cosine and the top-1 agreement on the validation data, not by fp32's relative error.

    python -m benchmarks.bivit_export_tolerance [--models OUT_DIR ...] [--seeds 3] [--json FILE]

Each row: a model (the digits zoo ViT binarized without fine-tuning, one per seed of its binarization's random
parts, plus any compress output given with ``--models``), a target, the metrics the export validation
computes. Timings are not the point; the machine load (``uptime``) is printed anyway.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

import torch


def _zoo_binarized(bits: int, seed: int):
    from edgekit.loading import load_model
    from edgekit.quant.bivit.convert import BinarizeOptions, convert
    from edgekit.quant.bivit.modules import freeze

    torch.manual_seed(seed)
    loaded = load_model("vit")
    new, _ = convert(loaded.model, BinarizeOptions(act_bits=bits))
    with torch.no_grad():  # perturb the thresholds a little per seed so that the seeds differ
        for m in new.modules():
            if getattr(m, "act_shift", None) is not None:
                m.act_shift.add_(torch.randn_like(m.act_shift) * 0.05)
    freeze(new)
    return new.eval(), loaded.info


def measure(model, info, target: str, samples: int) -> dict:
    from edgekit.exporters.base import export

    with tempfile.TemporaryDirectory() as d:
        art = export(model, target, "fp32", out=Path(d) / "a", force=True, info=info, data="digits",
                     validation_samples=samples)
        rep = art.report
        out = rep.outputs.get("output", {})
        return {"target": target, "rel_err": out.get("rel_err"), "cosine": out.get("cosine"),
                "max_abs": out.get("max_abs"), "top1_agreement": rep.top1_agreement, "n": rep.top1_samples,
                "packed": art.manifest.get("packed_sign_weights")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=[], help="compress output directories (bivit recipes)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--targets", nargs="*", default=["onnx", "openvino"])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    from edgekit.loading import load_model

    rows = []
    cases = [(f"vit-w1a{b}-seed{s}", b, s) for b in (1, 8) for s in range(args.seeds)]
    for name, bits, seed in cases:
        model, info = _zoo_binarized(bits, seed)
        for t in args.targets:
            rows.append({"model": name, "bits": bits, **measure(model, info, t, args.samples)})
            print(json.dumps(rows[-1]), flush=True)
    for d in args.models:
        loaded = load_model(d)
        for t in args.targets:
            rows.append({"model": d, **measure(loaded.model, loaded.info, t, args.samples)})
            print(json.dumps(rows[-1]), flush=True)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime: {load}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "uptime": load}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
