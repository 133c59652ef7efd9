"""N:M sparsity benchmark: 2:4 and 1:8 on the vit and a CNN zoo model (digits, shipped checkpoints):
accuracy with SR-STE vs progressive gradient flow (MDGF exponential, SDGF for 1:8), and weight size in a
compressed N:M storage format (fp16 values + ceil(log2 M)-bit indices) vs dense fp16.

    python -m benchmarks.sparsity_nm [--models vit,convnet] [--epochs 2]
"""

from __future__ import annotations

import argparse

import torch

import edgekit.models as zoo
from benchmarks._report import command_line, machine_note, markdown_table, write_section
from edgekit.data import load_data
from edgekit.stages import StageContext, get_stage
from edgekit.training import evaluate

SETTINGS = [(2, 4, "oneshot"), (2, 4, "srste"), (2, 4, "mdgf"), (1, 8, "oneshot"), (1, 8, "srste"), (1, 8, "mdgf"),
            (1, 8, "sdgf")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="vit,convnet")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    data = load_data()
    fn, cfg_cls = get_stage("sparsify")
    rows = []
    for name in args.models.split(","):
        dense = zoo.create(name)
        acc0 = evaluate(dense, data.test)
        for n, m, method in SETTINGS:
            cfg = cfg_cls(n=n, m=m, method=method, decay="exp", decay_rate="auto", final_epochs=1 if args.epochs > 1 else 0,
                          finetune={"epochs": 0 if method == "oneshot" else args.epochs, "lr": 1e-3})
            ctx = StageContext(data, dense, (data.calib.x[:1],))
            _, rep = fn(dense, cfg, ctx)
            st = rep["storage_fp16_bytes"]
            rows.append([name, f"{n}:{m}", method, acc0 * 100, rep["accuracy"]["after"] * 100, len(rep["layers"]),
                         len(rep["skipped"]), st["dense"] / 1024, st["compressed"] / 1024, st["ratio"]])
            print(rows[-1], flush=True)
    md = [f"## N:M sparsity\n\n`{command_line()}` on {machine_note()}.\n",
          f"Digits 3x32x32, {args.epochs} training epochs per method (oneshot: masks only, no training); MDGF "
          "exponential decay with c = 5 / (decay steps) (`decay_rate: auto`) and the last epoch plain W*M; SDGF 'sparsify' frames 7:8 -> 4:8 -> 2:8 -> "
          "1:8. Size: sparsified layers only, fp16 values + index metadata vs dense fp16.\n",
          markdown_table(["model", "N:M", "method", "dense acc", "sparse acc", "layers", "skipped", "dense KiB",
                          "compressed KiB", "size x"], rows)]
    write_section("sparsity_nm", "\n".join(md))


if __name__ == "__main__":
    main()
