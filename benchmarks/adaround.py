"""AdaRound vs round-to-nearest, 8-bit and 4-bit weights, on the zoo (digits): top-1 and per-layer error.

Both roundings run edgekit's PTQ with the same options (uint8 activations, calibration on the same samples,
bias correction on); only ``quantize.rounding`` differs. Figures: top-1 on the digits test split (359 images:
one image is 0.28 pt), and the per-layer reconstruction error of AdaRound relative to nearest on the
calibration inputs (geometric mean over layers, and how many layers AdaRound improves). Each (model, bits)
row is written to ``--jsonl`` as it finishes, so a run cut short keeps its rows.

    .venv/bin/python -m benchmarks.adaround --models convnet,repvgg,mobilenetv2,resnet50 --iters 300
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import command_line, machine_note, markdown_table, write_section  # noqa: E402


@torch.no_grad()
def top1(model, x: torch.Tensor, y: torch.Tensor) -> float:
    from edgekit.outputs import logits

    model.eval()
    pred = torch.cat([logits(model(x[i : i + 256])).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def measure(name: str, bits: int, iters: int, samples: int, data) -> dict:
    from edgekit import models
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.ptq import quantize_ptq

    model = models.create(name)
    calib, test = data.calib, data.test
    samples = min(samples, len(calib.x))
    row: dict = {"model": name, "bits": bits, "iters": iters, "samples": samples, "fp32": top1(model, test.x, test.y)}
    for rounding in ("nearest", "adaround"):
        opts = PTQConfig(weight_bits=bits, rounding=rounding, adaround_iters=iters,
                         calibration={"method": "mse", "samples": samples})
        t0 = time.perf_counter()
        q, rep = quantize_ptq(model, calib.x[:samples], calib.x[:1], opts)
        row[f"{rounding}_s"] = round(time.perf_counter() - t0, 1)
        row[rounding] = top1(q, test.x, test.y)
        if rounding == "adaround":
            layers = rep["adaround"]["layers"].values()
            ratios = [r["mse_adaround"] / r["mse_nearest"] for r in layers if r["mse_nearest"] > 0]
            row["layers"] = len(rep["adaround"]["layers"])
            row["layers_improved"] = sum(r["mse_adaround"] < r["mse_nearest"] for r in layers)
            row["err_ratio_gmean"] = math.exp(sum(math.log(max(r, 1e-12)) for r in ratios) / max(1, len(ratios)))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="convnet,repvgg,mobilenetv2,resnet50")
    ap.add_argument("--bits", default="4,8")
    ap.add_argument("--iters", type=int, default=300, help="AdaRound steps per layer")
    ap.add_argument("--samples", type=int, default=256, help="calibration samples (AdaRound uses the same)")
    ap.add_argument("--jsonl", default="/tmp/edgekit-adaround.jsonl")
    ap.add_argument("--from-jsonl", action="store_true", help="only write the section from --jsonl's rows")
    ap.add_argument("--note", default="", help="a line added under the table (e.g. the commands that made --from-jsonl's rows)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)  # a loaded 2-core machine: one thread per process
    up_start = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    path = Path(args.jsonl)
    if not args.from_jsonl:
        from edgekit.data import load_data

        data = load_data()
        path.write_text("")
        for bits in [int(b) for b in args.bits.split(",")]:
            for name in [m.strip() for m in args.models.split(",") if m.strip()]:
                row = measure(name, bits, args.iters, args.samples, data)
                row["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
                print(json.dumps(row), flush=True)
                with path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    table = [[r["model"], r["bits"], f"{r['fp32']:.2%}", f"{r['nearest']:.2%}", f"{r['adaround']:.2%}",
              f"{(r['adaround'] - r['nearest']) * 100:+.2f}", f"{r['layers_improved']}/{r['layers']}",
              f"{r['err_ratio_gmean']:.2f}", r["nearest_s"], r["adaround_s"], r["uptime"].split("load average:")[-1].strip()]
             for r in rows]
    it = {r["iters"] for r in rows}
    md = "\n".join([
        "## AdaRound vs nearest rounding (8-bit and 4-bit weights)",
        "",
        f"`{command_line().split(' --note')[0]}`",
        "",
        f"Machine: {machine_note()}; `uptime` {'when the table was written' if args.from_jsonl else 'at the start'}: "
        f"`{up_start}`; each row has the load when it finished (seconds measured under load: other "
        f"agents running). edgekit PTQ, per-channel symmetric weights on the 8-bit ([-127, 127]) or 4-bit "
        f"([-7, 7]) grid, uint8 activations, MSE calibration on {rows[0]['samples'] if rows else '?'} digits "
        f"samples, bias correction on; AdaRound {', '.join(map(str, sorted(it)))} steps per layer (the paper "
        "uses 10k-20k), lambda 0.01, beta 20 -> 2, inputs from the model with the preceding layers rounded and "
        "activations quantized, loss after the following ReLU where there is one. Top-1 on the digits test "
        "split (359 images: one image = 0.28 pt). Error ratio: per-layer reconstruction error of AdaRound / "
        "nearest on the calibration inputs, geometric mean over layers.",
        "",
        markdown_table(["model", "weight bits", "fp32", "nearest", "adaround", "adaround - nearest (pt)",
                        "layers improved", "error ratio", "nearest s", "adaround s", "load (1/5/15)"], table),
    ] + (["", args.note] if args.note else []))
    print(md)
    if not args.no_write:
        write_section("adaround", md)


if __name__ == "__main__":
    main()
