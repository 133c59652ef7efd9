"""One row per compressed deployable against the float model it replaces, on the same runtime, side by side.

    python -m benchmarks.deployables [--size digits|224] [--runs 30] [--threads 2] [--bivit-out DIR ...]
                                     [--json FILE] [--no-write]

Columns: deployable, runtime, fp32 ms, compressed ms (medians, ``--threads`` intra-op threads, batch 1),
speed ratio (fp32 / compressed), file bytes of both artifacts (on disk, as exported), top-1 accuracy of both on
the digits test split (``--size digits``; at 224 the models are random-init and have no accuracy).

Rows:
* ``bivit-w1a1`` / ``bivit-w1a8`` (BiViT, He et al., ICCV 2023): the zoo ViT binarized (without fine-tuning,
  or the compress outputs given with ``--bivit-out``), exported by ``edgekit.exporters.export`` to ONNX with the
  binary weights packed 1 bit each, run by ONNX Runtime. The binarized layers still run as float matmuls on
  weights unpacked at load: the XNOR-popcount deployable (issue 14.3) is not built yet, and the row says so.
* I-ViT rows come from H-ivit's public function ``benchmarks.ivit_latency.deployable_row`` when it exists;
  otherwise the row says it is missing (never reimplemented here).

The machine is shared (up to 9 agents on 2 cores): the ``uptime`` load is recorded beside the table, and the
numbers are measured under that load.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

HEADERS = ["deployable", "runtime", "fp32 ms", "compressed ms", "speed ratio", "fp32 bytes", "compressed bytes",
           "fp32 top-1", "compressed top-1", "note"]


def _ort_ms_and_top1(path: Path, x: np.ndarray, runs: int, threads: int, data) -> tuple[float, float | None]:
    from edgekit.exporters.runtimes import ort_session
    from edgekit.metrics import time_callable

    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name
    ms = time_callable(lambda: sess.run(None, {name: x}), runs=runs, warmup=3)["median"]
    top1 = None
    if data is not None and data.test.y is not None:
        xs = data.test.x.numpy()
        pred = np.concatenate([sess.run(None, {name: xs[i:i + 1]})[0].argmax(1) for i in range(len(xs))])
        top1 = float(np.mean(pred == data.test.y.numpy()))
    return ms, top1


def _export(model, info, data_spec, out: Path) -> Path:
    from edgekit.exporters.base import export

    art = export(model, "onnx", "fp32", out=out, force=True, info=info, data=data_spec, validation_samples=64)
    return art.model_file


def bivit_rows(args) -> list[dict[str, Any]]:
    from edgekit.data import load_data
    from edgekit.loading import load_model
    from edgekit.models.vit import vit
    from edgekit.quant.bivit.convert import BinarizeOptions, convert
    from edgekit.quant.bivit.modules import freeze
    from edgekit.records import ModelInfo

    if args.size == "digits":
        loaded = load_model("vit")
        fp32, info = loaded.model.eval(), loaded.info
        data = load_data("digits", info.input_shape)
        data_spec = "digits"
    else:
        torch.manual_seed(0)
        fp32 = vit("224", 1000).eval()
        info = ModelInfo(name="vit-224", input_shape=(3, 224, 224), num_classes=1000)
        data, data_spec = None, "random:3x224x224"
    x = torch.randn(1, *info.input_shape).numpy()
    models = {f"bivit-w1a{b}": None for b in (1, 8)}
    for d in args.bivit_out:
        out = load_model(d)
        bits = json.loads((Path(d) / "manifest.json").read_text()).get("recipe", {}).get("name", "bivit")
        models[str(bits)] = out.model
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        f32 = _export(fp32, info, data_spec, Path(tmp) / "fp32")
        f32_ms, f32_top1 = _ort_ms_and_top1(f32, x, args.runs, args.threads, data)
        for name, model in models.items():
            note = "compress output" if model is not None else "binarized without fine-tuning (accuracy is not the recipe's)"
            if model is None:
                bits = int(name[-1])
                model, _ = convert(fp32, BinarizeOptions(act_bits=bits))
                freeze(model)
                model.eval()
            path = _export(model, info, data_spec, Path(tmp) / name)
            ms, top1 = _ort_ms_and_top1(path, x, args.runs, args.threads, data)
            rows.append({"deployable": name, "runtime": "onnxruntime", "fp32_ms": f32_ms, "compressed_ms": ms,
                         "speed_ratio": f32_ms / ms, "fp32_bytes": f32.stat().st_size, "compressed_bytes": path.stat().st_size,
                         "fp32_top1": f32_top1, "compressed_top1": top1,
                         "note": note + "; binary layers run as float matmuls (no XNOR kernel deployable yet)"})
    return rows


def ivit_rows(args) -> list[dict[str, Any]]:
    try:
        from benchmarks.ivit_latency import deployable_row  # H-ivit's public function
    except ImportError:
        return [{"deployable": "ivit-int8", "runtime": "onnxruntime", "note": "benchmarks.ivit_latency.deployable_row "
                 "is not available (H-ivit's public row function); no number"}]
    return [deployable_row(size=args.size, runs=args.runs, threads=args.threads)]


ROWS: dict[str, Callable[[Any], list[dict[str, Any]]]] = {"bivit": bivit_rows, "ivit": ivit_rows}


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import command_line, machine_note, markdown_table, write_section

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("digits", "224"), default="digits")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bivit-out", nargs="*", default=[])
    ap.add_argument("--only", nargs="*", choices=sorted(ROWS), default=sorted(ROWS))
    ap.add_argument("--json", default=None)
    ap.add_argument("--no-write", action="store_true", help="do not write docs/benchmarks.md")
    args = ap.parse_args(argv)
    rows = [r for key in args.only for r in ROWS[key](args)]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    keys = ["deployable", "runtime", "fp32_ms", "compressed_ms", "speed_ratio", "fp32_bytes", "compressed_bytes",
            "fp32_top1", "compressed_top1", "note"]
    table = markdown_table(HEADERS, [[r.get(k, "") if r.get(k) is not None else "n/a" for k in keys] for r in rows])
    print(table)
    print(f"uptime: {load} (measured under this load: the machine is shared)")
    if not args.no_write:
        write_section("deployables", f"## Deployables vs fp32\n\n`{command_line()}` on {machine_note()}; "
                      f"uptime at the end: `{load}` (a shared machine: numbers measured under that load).\n\n{table}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "uptime": load, "size": args.size}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
