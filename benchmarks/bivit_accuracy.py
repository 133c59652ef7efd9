"""BiViT accuracy and size on the digits test split: fp32, int8, W1A8 and W1A1 (with and without softmax-aware
binarization and cross-layer binarization) for the vit and hybrid zoo models.

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.bivit_accuracy --epochs 3

Every binarized variant starts from the shipped fp32 checkpoint and gets the same fine-tune budget
(``--epochs``, distillation from the fp32 model). Writes the ``bivit-accuracy`` section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

try:
    from benchmarks._report import command_line, machine_note, markdown_table, write_section
except ImportError:  # run as a script
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks._report import command_line, machine_note, markdown_table, write_section

# (label, activation bits, softmax-aware, cross-layer, attention mean)
VARIANTS = [
    ("w1a8", 8, None, True, True),
    ("w1a1", 1, True, True, True),
    ("w1a1", 1, False, True, True),
    ("w1a1", 1, True, False, True),
    ("w1a1", 1, False, False, True),
    ("w1a1", 1, True, True, False),
]


def _pt2_bytes(model, example, directory: Path) -> tuple[int, int]:
    """(file size, bytes of its tensor data): the rest of a .pt2 is the JSON graph, which grows with op count."""
    import zipfile

    from edgekit.loading import save_model

    directory.mkdir(parents=True, exist_ok=True)
    path = save_model(model, directory, example)
    with zipfile.ZipFile(path) as z:
        data = sum(i.file_size for i in z.infolist() if "/data/" in i.filename and not i.filename.endswith(".json"))
    return path.stat().st_size, data


def _ort_check(model, x: torch.Tensor, directory: Path) -> dict:
    """Both ONNX forms (folded +-1 weights via edgekit.exporters.onnx; bit-packed via to_onnx_packed) vs torch."""
    import numpy as np
    import onnxruntime as ort

    from edgekit.exporters.onnx import to_onnx
    from edgekit.quant.bivit.export import to_onnx_packed

    with torch.no_grad():
        ref = model(x).numpy()
    out = {}
    for kind, fn in (("folded", lambda p: to_onnx(model, x[:1], p, dynamic_batch=True)),
                     ("packed", lambda p: to_onnx_packed(model, x[:1], p))):
        path = fn(directory / f"model-{kind}.onnx")
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
        out[kind] = {"max_abs_diff": float(np.abs(got - ref).max()),
                     "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean()), "onnx_bytes": path.stat().st_size}
    return out


def _fp32_model(name: str, fp32_epochs: int | None, work: Path) -> tuple[torch.nn.Module, str]:
    """The shipped checkpoint, or (when there is none yet) the zoo recipe trained here into a temp file."""
    import edgekit.models as zoo

    if zoo.info(name).checkpoint.is_file():
        return zoo.create(name, pretrained=True).eval(), "fp32 (shipped checkpoint)"
    from edgekit.models._train import train_zoo

    path = work / f"{name}-fp32.pt"
    res = train_zoo(name, epochs=fp32_epochs, out=path)
    model = zoo.create(name, pretrained=False)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval(), f"fp32 (no shipped checkpoint: zoo recipe trained here, {res['epochs']} epochs)"


def run_model(name: str, epochs: int, lr: float, batch_size: int, seed: int, int8: bool, work: Path,
              fp32_epochs: int | None = None) -> dict:
    import edgekit.models as zoo
    from edgekit.data import load_data
    from edgekit.metrics import storage_bytes
    from edgekit.quant.bivit.stages import PACKED_FILE, BinarizeConfig, apply
    from edgekit.stages import StageContext
    from edgekit.training import evaluate

    info = zoo.info(name)
    fp, fp_label = _fp32_model(name, fp32_epochs, work)
    data = load_data("digits", info.input_shape("digits"))
    example = data.test.x[:1].clone()
    out: dict = {"model": name, "rows": [], "size": {}}
    out["rows"].append({"precision": fp_label, "softmax_aware": "-", "cross_layer": "-", "acc": evaluate(fp, data.test), "seconds": 0.0})
    out["size"]["fp32_bytes"] = storage_bytes(fp)
    out["size"]["fp32_pt2_bytes"] = _pt2_bytes(fp, example, work / f"{name}-fp32")
    if int8:
        from edgekit.pipeline import compress

        t0 = time.perf_counter()
        label8 = "int8 (PTQ, recipe int8)"
        try:
            acc8 = compress(copy.deepcopy(fp), "int8", data, latency=False, seed=seed).report.accuracy.after
        except Exception as exc:  # noqa: BLE001 - report the failure, then try without bias correction
            first = f"{type(exc).__name__}: {str(exc)[:60]}"
            label8 = f"int8 (PTQ, bias correction off; recipe int8 failed: {first})"
            try:
                acc8 = compress(copy.deepcopy(fp), "int8", data, overrides=["quantize.bias_correction=false"],
                                latency=False, seed=seed).report.accuracy.after
            except Exception as exc2:  # noqa: BLE001
                acc8 = f"failed: {type(exc2).__name__}: {str(exc2)[:80]}"
        out["rows"].append({"precision": label8, "softmax_aware": "-", "cross_layer": "-", "acc": acc8,
                            "seconds": round(time.perf_counter() - t0, 1)})
    for label, bits, softmax_aware, cross, att_mean in VARIANTS:
        cfg = BinarizeConfig(activation_bits=bits, softmax_aware=bool(softmax_aware), cross_layer={"enabled": cross},
                             attention_mean=att_mean, epochs=epochs, lr=lr, batch_size=batch_size)
        run_dir = work / f"{name}-{label}-{softmax_aware}-{cross}-{att_mean}"
        run_dir.mkdir(parents=True, exist_ok=True)
        ctx = StageContext(data=data, reference=fp, example_inputs=(example,), out_dir=run_dir, seed=seed)
        t0 = time.perf_counter()
        model, rep = apply(copy.deepcopy(fp), cfg, ctx)
        secs = time.perf_counter() - t0
        row = {"precision": label, "softmax_aware": "-" if softmax_aware is None else ("yes" if softmax_aware else "no"),
               "cross_layer": "yes" if cross else "no", "attention_mean": "-" if bits != 1 else ("yes" if att_mean else "no"),
               "acc": evaluate(model, data.test), "seconds": round(secs, 1),
               "phase_acc": [p.get("test_accuracy") for p in rep["phases"]]}
        out["rows"].append(row)
        print(json.dumps({"model": name, **row}), flush=True)
        if label == "w1a1" and softmax_aware and cross and att_mean:  # the recipe's configuration: sizes, ORT
            st = rep["storage"]
            out["size"].update({
                "binarized_layers_fp32_bytes": st["binarized_layers_fp32_bytes"],
                "binarized_layers_packed_bytes": st["binarized_layers_packed_bytes"],
                "binarized_layers_ratio": st["binarized_layers_ratio"],
                "w1a1_bytes": storage_bytes(model),
                "w1a1_pt2_bytes": _pt2_bytes(model, example, run_dir / "export"),
                "packed_npz_bytes": (run_dir / PACKED_FILE).stat().st_size,
                "binarized_weight_fraction": rep["conversion"]["binarized_weight_fraction"],
            })
            out["ort"] = _ort_check(model, data.test.x, run_dir)
    return out


def render(results: list[dict], args: argparse.Namespace, seconds: float) -> str:
    acc_rows, size_rows = [], []
    for r in results:
        for row in r["rows"]:
            acc = row["acc"]
            acc_s = f"{100 * acc:.1f}%" if isinstance(acc, float) else str(acc)
            acc_rows.append([r["model"], row["precision"], row["softmax_aware"], row["cross_layer"],
                             row.get("attention_mean", "-"), acc_s, row["seconds"]])
        s = r["size"]
        if "w1a1_bytes" in s:
            size_rows.append([
                r["model"],
                f"{s['binarized_layers_fp32_bytes']:,} -> {s['binarized_layers_packed_bytes']:,} B ({s['binarized_layers_ratio']:.1f}x)",
                f"{s['fp32_bytes']:,} -> {s['w1a1_bytes']:,} B ({s['fp32_bytes'] / s['w1a1_bytes']:.1f}x)",
                f"{s['fp32_pt2_bytes'][1]:,} -> {s['w1a1_pt2_bytes'][1]:,} B ({s['fp32_pt2_bytes'][1] / s['w1a1_pt2_bytes'][1]:.1f}x)",
                f"{s['fp32_pt2_bytes'][0]:,} -> {s['w1a1_pt2_bytes'][0]:,} B",
                f"{s['packed_npz_bytes']:,} B",
                f"{100 * s['binarized_weight_fraction']:.0f}%",
            ])
    ort_rows = [[r["model"], kind, f"{o['max_abs_diff']:.2e}", f"{100 * o['top1_agreement']:.1f}%", f"{o['onnx_bytes']:,}"]
                for r in results if "ort" in r for kind, o in r["ort"].items()]
    return "\n\n".join([
        "## BiViT: accuracy and size (digits, 3x32x32)",
        f"Command: `{command_line()}`  \nMachine: {machine_note()} (shared with other jobs; seconds are wall time). "
        f"Total {seconds / 60:.1f} min.",
        f"Every binarized row: {args.epochs} fine-tune epochs from the fp32 checkpoint (lr {args.lr}, batch {args.batch_size}, "
        "distillation weight 0.5 from the fp32 model); cross-layer = MLP binarized first, attention in a second "
        "phase (epochs split evenly); without it, everything is binarized for all epochs. Softmax-aware = "
        "A = 1[P >= 0.25 rowmax P]; without it A = 1[P >= rowmean P] (same straight-through gradient). A@V mean = "
        "A @ V divided by the number of ones in each row of A (edgekit's default; off = the raw 0/1 sum). "
        "Patch embedding, head and (hybrid) convolutions stay fp32. int8 = the `int8` recipe (PTQ, no fine-tune).",
        markdown_table(["model", "precision", "softmax-aware", "cross-layer", "A@V mean", "top-1", "seconds"], acc_rows),
        "Size of the W1A1 model (recipe `bivit-w1a1`): binarized layers = their fp32 weights+bias vs 1 bit a weight "
        "+ fp16 scales, bias and activation thresholds; model = `edgekit.metrics.storage_bytes`; `.pt2` = the "
        "`torch.export` artifact the pipeline writes (it holds the packed uint8 bits; the rest of the file is its "
        "JSON graph, which grows with the unpack/sign ops); `packed_weights.npz` = the stage's packed file "
        "(compressed, whole model).",
        markdown_table(["model", "binarized layers", "whole model", "model.pt2 tensor data", "model.pt2 file",
                        "packed_weights.npz", "binarized share of params"], size_rows),
        "ONNX Runtime (CPU EP) vs PyTorch on the W1A1 model, whole test split. *folded* = "
        "`edgekit.exporters.onnx.to_onnx` (constant folding turns the weights into +-1 float tensors); *packed* = "
        "`edgekit.quant.bivit.export.to_onnx_packed` (uint8 bits + fp16 scales in the file, unpacked by ORT at "
        "session load; at this size the unfolded graph itself weighs more than the weights):",
        markdown_table(["model", "ONNX form", "max |logit diff|", "top-1 agreement", "file bytes"], ort_rows),
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vit", "hybrid"])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--fp32-epochs", type=int, default=None,
                   help="epochs for the fp32 model when no checkpoint is shipped (default: the zoo's)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw results here")
    p.add_argument("--no-write", action="store_true", help="do not update docs/benchmarks.md")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on the shared 2-core machine a second thread mostly waits for a core)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bivit-bench-") as tmp:
        results = []
        for m in args.models:
            results.append(run_model(m, args.epochs, args.lr, args.batch_size, args.seed, not args.no_int8, Path(tmp),
                                     args.fp32_epochs))
            if args.json:  # keep partial results
                args.json.write_text(json.dumps(results, indent=1, default=str))
    text = render(results, args, time.perf_counter() - t0)
    print(text)
    if not args.no_write:
        write_section("bivit-accuracy", text)


if __name__ == "__main__":
    main()
