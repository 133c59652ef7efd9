"""Structured pruning benchmark: 30% / 50% of every zoo model at 224x224 (MACs, params, ONNX Runtime and
OpenVINO latency before/after), digits accuracy before/after a short fine-tune, and Torch-Pruning side by side
when it is installed (it is not an edgekit dependency).

    python -m benchmarks.prune_structured [--models a,b] [--acc-models a,b] [--epochs 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

import edgekit.models as zoo
from benchmarks._report import command_line, machine_note, markdown_table, write_section
from edgekit.data import load_data
from edgekit.metrics import count_macs, count_params
from edgekit.prune.structured import prune
from edgekit.training import evaluate, train

IGNORE = ["head*", "fc", "classifier*"]


def _lat(model, x, runtime):
    from edgekit.exporters import measure_latency

    try:
        return measure_latency(model, x, runtime=runtime, threads=2, runs=20, warmup=5)["median"]
    except Exception as exc:  # noqa: BLE001 - report, do not hide
        print(f"  latency {runtime} failed: {type(exc).__name__}: {str(exc)[:120]}")
        return float("nan")


def _tp_prune(model, x, ratio):
    try:
        import torch_pruning as tp
    except ImportError:
        return None
    model = copy.deepcopy(model).eval()
    ignored = [m for n, m in model.named_modules() if n in ("head", "fc", "classifier")]
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                  ignored_layers=ignored, round_to=8)
    pruner.step()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(zoo.names()))
    ap.add_argument("--acc-models", default="convnet,mobilenetv2,resnet50,vit")
    ap.add_argument("--tp-models", default="convnet,mobilenetv2,resnet50")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    rows, acc_rows, tp_rows = [], [], []
    x224 = torch.randn(1, 3, 224, 224)
    for name in args.models.split(","):
        dense = zoo.create(name, pretrained=False, size="224")
        base = {"macs": count_macs(dense, x224), "params": count_params(dense),
                "ort": _lat(dense, x224, "onnxruntime"), "ov": _lat(dense, x224, "openvino")}
        for ratio in (0.3, 0.5):
            t0 = time.perf_counter()
            pruned, rep = prune(dense, (x224,), ratio=ratio, round_to=8, ignore=IGNORE)
            secs = time.perf_counter() - t0
            ort, ov = _lat(pruned, x224, "onnxruntime"), _lat(pruned, x224, "openvino")
            mac_r = rep["macs"]["after"] / base["macs"]
            rows.append([name, f"{ratio:.0%}", base["macs"] / 1e6, mac_r, rep["params"]["after"] / base["params"],
                         base["ort"], ort / base["ort"], base["ov"], ov / base["ov"],
                         (1 - ort / base["ort"]) / max(1e-9, 1 - mac_r), rep["model_type"], secs])
            print(rows[-1], flush=True)
            if name in args.tp_models.split(","):
                tpm = _tp_prune(dense, x224, ratio)
                if tpm is not None:
                    tp_rows.append([name, f"{ratio:.0%}", "edgekit", mac_r, rep["params"]["after"] / base["params"],
                                    ort / base["ort"], ov / base["ov"]])
                    tm = count_macs(tpm, x224) / base["macs"]
                    tp_rows.append([name, f"{ratio:.0%}", "torch-pruning 1.6", tm, count_params(tpm) / base["params"],
                                    _lat(tpm, x224, "onnxruntime") / base["ort"], _lat(tpm, x224, "openvino") / base["ov"]])
                    print(tp_rows[-2:], flush=True)
    data = load_data()
    x32 = data.calib.x[:1]
    for name in args.acc_models.split(","):
        dense = zoo.create(name)
        acc0 = evaluate(dense, data.test)
        for ratio in (0.3, 0.5):
            variants = [("edgekit", prune(dense, (x32,), ratio=ratio, round_to=8, ignore=IGNORE)[0])]
            if name in args.tp_models.split(","):
                tpm = _tp_prune(dense, x32, ratio)
                if tpm is not None:
                    variants.append(("torch-pruning 1.6", tpm))
            for tool, pruned in variants:
                a1 = evaluate(pruned, data.test)
                train(pruned, data, epochs=args.epochs, lr=1e-3, seed=0, description=f"{name} {ratio} {tool}")
                a2 = evaluate(pruned, data.test)
                acc_rows.append([name, f"{ratio:.0%}", tool, acc0 * 100, a1 * 100, a2 * 100, (a2 - acc0) * 100])
                print(acc_rows[-1], flush=True)
    md = [f"## Structured pruning\n\n`{command_line()}` on {machine_note()}.\n",
          "224x224, batch 1, 2 threads, L1 importance per group, round_to 8, classifier ignored, random init "
          "(latency and MACs do not depend on the weights). `lat/MAC` = latency reduction / MAC reduction "
          "(target >= 0.8). Median of 20 runs.\n",
          markdown_table(["model", "ratio", "dense MMACs", "MACs x", "params x", "ORT ms", "ORT x", "OV ms", "OV x",
                          "lat/MAC (ORT)", "pruned module", "prune s"], rows),
          f"\n### Digits accuracy (%) after pruning and {args.epochs} fine-tune epochs (3x32x32, shipped checkpoints)\n",
          markdown_table(["model", "ratio", "tool", "dense", "pruned", "fine-tuned", "delta"], acc_rows)]
    if tp_rows:
        md += ["\n### edgekit vs Torch-Pruning 1.6 (MetaPruner, L1 magnitude, same ratio / round_to / ignored head), 224x224\n",
               markdown_table(["model", "ratio", "tool", "MACs x", "params x", "ORT x", "OV x"], tp_rows)]
    else:
        md.append("\nTorch-Pruning is not installed here; no side-by-side run.\n")
    write_section("prune_structured", "\n".join(md))


if __name__ == "__main__":
    main()
