"""int8 transformers, one run side by side: edgekit vs NNCF on OpenVINO, edgekit vs ORT quantize_static on ORT.

Models at 224 (seeded random weights, latency only): the zoo ``vit`` (DeiT-Tiny shape) and ``hybrid``, and two
third-party classes built in code from ``transformers`` configs (no download): ViT-S/16 (``ViTConfig``: 384 wide,
12 layers, 6 heads) and Swin-T (``SwinConfig()`` defaults). edgekit quantizes each twice, with
``quantize.target: openvino`` and ``quantize.target: onnxruntime`` (edgekit.quant.placement). Every quantizer
gets the same calibration samples (digits calibration images upsampled to 224). Accuracy: top-1 on the digits
test split for the zoo ``vit`` / ``hybrid`` checkpoints (edgekit with the int8 recipe's options: MSE
calibration, 256 samples, bias correction, ``ends: auto``). The ``ends int8`` columns re-run edgekit with the
patch embedding and head int8 too (``quantize.ends: int8``): the accuracy and latency of that default. The
per-op precision tables are read from each runtime's own execution graph (edgekit.quant.placement_report).

    flock /tmp/edgekit-bench.lock .venv/bin/python -m benchmarks.int8_transformers

Split into passes (each under ~5 minutes on a quiet machine) with ``--state``: every pass stores its models' rows
in the JSON state file and the section is rendered from all of them, each pass's command and load listed::

    python -m benchmarks.int8_transformers --state /tmp/int8tf.json --accuracy-models vit,hybrid --latency-models ''
    python -m benchmarks.int8_transformers --state /tmp/int8tf.json --accuracy-models '' --latency-models vit
    python -m benchmarks.int8_transformers --state /tmp/int8tf.json --accuracy-models '' --latency-models hybrid
    python -m benchmarks.int8_transformers --state /tmp/int8tf.json --accuracy-models '' --latency-models vit-s
    python -m benchmarks.int8_transformers --state /tmp/int8tf.json --accuracy-models '' --latency-models swin-t
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._report import command_line, machine_note, markdown_table, write_section  # noqa: E402
from benchmarks.quant_vs_peers import nncf_quantize, ort_quantize_static, ort_top1, ov_top1  # noqa: E402
from edgekit.quant.config import SmoothQuantConfig  # noqa: E402

SQ_DEFAULT = SmoothQuantConfig()  # the edgekit columns run the defaults; the SQ_OTHER columns flip SmoothQuant
SQ_OTHER = "no SmoothQuant" if SQ_DEFAULT.enabled else "SmoothQuant on"


class Logits(nn.Module):
    """A ``transformers`` image classifier called the way its users call it, returning the logits tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def third_party(name: str) -> nn.Module:
    from transformers import SwinConfig, SwinForImageClassification, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if name == "vit-s":
        cfg = ViTConfig(image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        intermediate_size=1536, num_labels=1000)
        return Logits(ViTForImageClassification(cfg)).eval()
    return Logits(SwinForImageClassification(SwinConfig(num_labels=1000))).eval()  # Swin-T: 96 wide, depths 2-2-6-2


def build_model(name: str, size: str) -> nn.Module:
    from edgekit import models

    if name in ("vit-s", "swin-t"):
        return third_party(name)
    torch.manual_seed(0)
    return models.create(name, pretrained=(size == "digits"), size=size).eval()


def quantize_all(model: nn.Module, calib: torch.Tensor, example: torch.Tensor, tmp: Path, tag: str, method: str,
                 bias_corr: bool, ends_int8: bool = False) -> tuple[dict[str, Path], dict[str, object]]:
    """fp32 ONNX, edgekit int8 for OpenVINO and for ORT (QDQ ONNX), ORT quantize_static ONNX, NNCF IR; with
    ``ends_int8`` also edgekit with ``quantize.ends: int8`` (patch embedding and head int8 too: its latency cost)."""
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.ptq import quantize_ptq

    paths = {"fp32": tmp / f"{tag}-fp32.onnx", "ek-ov": tmp / f"{tag}-ek-ov.onnx", "ek-ort": tmp / f"{tag}-ek-ort.onnx",
             "ort-q": tmp / f"{tag}-ortq.onnx", "nncf": tmp / f"{tag}-nncf.xml"}
    to_onnx(model, example, paths["fp32"])
    info: dict[str, object] = {}
    runs = [("ek-ov", "openvino", "auto"), ("ek-ort", "onnxruntime", "auto")]
    if ends_int8:
        runs += [("ek-ov-i8", "openvino", "int8"), ("ek-ort-i8", "onnxruntime", "int8")]
        paths.update({"ek-ov-i8": tmp / f"{tag}-ek-ov-i8.onnx", "ek-ort-i8": tmp / f"{tag}-ek-ort-i8.onnx"})
    for key, target, ends in runs:
        cfg = PTQConfig(calibration={"method": method, "samples": len(calib)}, bias_correction=bias_corr, target=target,
                        ends=ends)
        t0 = time.perf_counter()
        q, rep = quantize_ptq(model, calib, example, cfg)
        info[f"{key} s"] = time.perf_counter() - t0
        info[f"{key} model"] = q
        info[f"{key} float_ops"] = sorted({f.rsplit(" (", 1)[-1].rstrip(")") for f in rep["float_ops"]})
        to_onnx(q, example, paths[key])
    c = calib.numpy().astype(np.float32)
    t0 = time.perf_counter()
    ort_quantize_static(paths["fp32"], paths["ort-q"], c)
    info["ort-q s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    nncf_quantize(paths["fp32"], paths["nncf"], c)
    info["nncf s"] = time.perf_counter() - t0
    return paths, info


VARIANTS = (("fp32", "onnxruntime"), ("ek-ort", "onnxruntime"), ("ek-ov", "onnxruntime"), ("ort-q", "onnxruntime"),
            ("ek-ort-i8", "onnxruntime"), ("fp32", "openvino"), ("ek-ov", "openvino"), ("ek-ort", "openvino"),
            ("nncf", "openvino"), ("ek-ov-i8", "openvino"))


def latencies(paths: dict[str, Path], x: np.ndarray, runs: int, rounds: int
              ) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], list[float]]]:
    """Interleaved rounds over every variant (a fresh random order each round, so no variant always follows the
    same one); each variant's figure is the median of its per-round medians. Also returns the per-round medians."""
    from edgekit.exporters.latency import measure_file_latency

    per: dict[tuple[str, str], list[float]] = {}
    rng = np.random.default_rng(0)
    for _ in range(rounds):
        for i in rng.permutation(len(VARIANTS)):
            key, rt = VARIANTS[i]
            per.setdefault((key, rt), []).append(measure_file_latency(paths[key], x, rt, threads=2, runs=runs, warmup=5)["median"])
    return {k: float(np.median(v)) for k, v in per.items()}, per


def ratio_cell(per: dict[tuple[str, str], list[float]], ours: tuple[str, str], peer: tuple[str, str]) -> str:
    """``median(ours) / median(peer)`` with the 95% bootstrap interval over the rounds' medians."""
    from edgekit.metrics import bootstrap_ratio_ci

    lo, hi = bootstrap_ratio_ci(per[peer], per[ours])
    return f"{np.median(per[ours]) / np.median(per[peer]):.2f}x ({lo:.2f}-{hi:.2f})"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-models", default="vit,hybrid,vit-s,swin-t")
    ap.add_argument("--accuracy-models", default="vit,hybrid")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples at 224 (same for every quantizer)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--state", type=Path, help="JSON file that keeps the rows of earlier passes (see the docstring)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")
    from edgekit.data import load_data
    from edgekit.quant.config import PTQConfig
    from edgekit.quant.placement_report import openvino_precisions, ort_kernel_profile, ort_precisions
    from edgekit.quant.ptq import quantize_ptq
    from edgekit.training import evaluate

    load_before = uptime()
    data = load_data()
    st = load_state(args.state)
    acc, lat_by, ov_by, ort_by, notes_by = st["acc"], st["lat"], st["ov"], st["ort"], st["notes"]
    with tempfile.TemporaryDirectory(prefix="edgekit-int8tf-") as tmpd:
        tmp = Path(tmpd)
        for name in filter(None, args.accuracy_models.split(",")):
            print(f"[accuracy] {name}", flush=True)
            model = build_model(name, "digits")
            paths, info = quantize_all(model, data.calib.x[:256], data.test.x[:1], tmp, f"{name}-digits", "mse", True)
            x, y = data.test.x, data.test.y
            fp32 = 100 * evaluate(model, data.test)
            ek_ov, ek_ort = 100 * ov_top1(paths["ek-ov"], x, y), 100 * ort_top1(paths["ek-ort"], x, y)
            no_sq, i8 = {}, {}
            for key, target in (("ek-ov", "openvino"), ("ek-ort", "onnxruntime")):  # the other SmoothQuant setting
                cfg = PTQConfig(calibration={"method": "mse", "samples": 256}, target=target,
                                smoothquant={"enabled": not SQ_DEFAULT.enabled})
                no_sq[key] = 100 * evaluate(quantize_ptq(model, data.calib.x, data.test.x[:1], cfg)[0], data.test)
                cfg = PTQConfig(calibration={"method": "mse", "samples": 256}, target=target, ends="int8")
                i8[key] = 100 * evaluate(quantize_ptq(model, data.calib.x, data.test.x[:1], cfg)[0], data.test)
            acc[name] = ([name, fp32, 100 * evaluate(info["ek-ov model"], data.test), ek_ov, f"{ek_ov - fp32:+.2f}",
                             no_sq["ek-ov"], i8["ek-ov"], ek_ort, f"{ek_ort - fp32:+.2f}", no_sq["ek-ort"], i8["ek-ort"],
                             100 * ort_top1(paths["ort-q"], x, y), 100 * ov_top1(paths["nncf"], x, y)])
            save_state(args.state, st)
        for name in filter(None, args.latency_models.split(",")):
            print(f"[latency] {name}", flush=True)
            model = build_model(name, "224")
            ex = F.interpolate(data.test.x[:1], size=(224, 224), mode="bilinear", align_corners=False)
            cal = F.interpolate(data.calib.x[: args.calib], size=(224, 224), mode="bilinear", align_corners=False)
            notes = notes_by[name] = []
            for d in (lat_by, ov_by, ort_by):  # a model's rows come from its latest pass only
                for k in [k for k in d if k == name or k.startswith(f"{name} ")]:
                    del d[k]
            try:
                paths, info = quantize_all(model, cal, ex, tmp, f"{name}-224", "minmax", False, ends_int8=True)
                lat, per = latencies(paths, ex.numpy(), args.runs, args.rounds)
            except Exception as exc:  # noqa: BLE001 - report and go on
                notes.append(f"{name}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                save_state(args.state, st)
                continue
            lat_by[name] = ([name, lat["fp32", "onnxruntime"], lat["ek-ort", "onnxruntime"], lat["ek-ov", "onnxruntime"],
                             lat["ort-q", "onnxruntime"], ratio_cell(per, ("ek-ort", "onnxruntime"), ("ort-q", "onnxruntime")),
                             lat["ek-ort-i8", "onnxruntime"], lat["fp32", "openvino"], lat["ek-ov", "openvino"],
                             lat["ek-ort", "openvino"], lat["nncf", "openvino"],
                             ratio_cell(per, ("ek-ov", "openvino"), ("nncf", "openvino")), lat["ek-ov-i8", "openvino"]])
            ov_by[f"{name} edgekit"] = openvino_precisions(paths["ek-ov"])
            ov_by[f"{name} NNCF"] = openvino_precisions(paths["nncf"])
            ort_by[f"{name} edgekit"] = ort_precisions(paths["ek-ort"])
            ort_by[f"{name} quantize_static"] = ort_precisions(paths["ort-q"])
            st["prof"][name] = {k: ort_kernel_profile(paths[key], ex.numpy(), runs=args.runs)
                                for k, key in (("edgekit", "ek-ort"), ("quantize_static", "ort-q"))}
            if info["ek-ov float_ops"]:
                notes.append(f"{name}: ops edgekit leaves in float (openvino placement): {', '.join(info['ek-ov float_ops'])}")
            notes.append(f"{name}: latency from {args.rounds} rounds of {args.runs} runs")
            notes.append(f"{name}: quantize seconds: edgekit (openvino) {info['ek-ov s']:.0f}, (onnxruntime) {info['ek-ort s']:.0f}, "
                         f"ORT quantize_static {info['ort-q s']:.0f}, NNCF {info['nncf s']:.0f}")
            save_state(args.state, st)
    st["passes"].append([command_line(), load_before, uptime()])
    save_state(args.state, st)
    render(st, args)


def load_state(path: Path | None) -> dict:
    st = json.loads(path.read_text()) if path is not None and path.exists() else {}
    for k in ("acc", "lat", "ov", "ort", "notes", "prof"):
        st.setdefault(k, {})
    st.setdefault("passes", [])
    return st


def save_state(path: Path | None, st: dict) -> None:
    if path is not None:
        from edgekit.artifacts import write_json_atomic

        write_json_atomic(path, st)


def profile_table(prof: dict[str, dict[str, dict[str, float]]]) -> str:
    """One row per op type (those with >= 2% of some graph's kernel time), one column per (model, quantizer)."""
    cols = {f"{m} {k}": p for m, by in prof.items() for k, p in by.items()}
    ops: list[str] = []
    for p in cols.values():
        total = sum(p.values()) or 1.0
        ops += [op for op, ms in p.items() if ms >= 0.02 * total and op not in ops]
    rows = [[op, *(round(p[op], 2) if op in p else "-" for p in cols.values())] for op in ops]
    rows.append(["total", *(round(sum(p.values()), 2) for p in cols.values())])
    return markdown_table(["op type (ms / run)", *cols], rows)


def render(st: dict, args: argparse.Namespace) -> None:
    """The section from every model in the state (this pass and the earlier ones of the same --state file)."""
    from edgekit.quant.placement_report import side_by_side

    acc_rows, lat_rows = list(st["acc"].values()), list(st["lat"].values())
    ov_reports, ort_reports = st["ov"], st["ort"]
    notes = [n for ns in st["notes"].values() for n in ns]
    passes = "; ".join(f"`{cmd}`: `uptime` before `{a}`, after `{b}`" for cmd, a, b in st["passes"])
    md = ["## int8 transformers: edgekit vs NNCF (OpenVINO) and ORT quantize_static\n",
          f"Passes: {passes}.  \nMachine: {machine_note()}. Other agents' jobs, if any, ran at SCHED_IDLE; the load is "
          "the `uptime` of each pass above (a load well above 0 inflates absolute times). "
          "The ratios come from interleaved rounds (every variant once per round, in a fresh random order), so a slow "
          "stretch hits all variants of a model alike; beside each ratio, its 95% bootstrap interval over the rounds. "
          "Latency: ms, batch 1, 2 threads, median of the per-round medians (rounds and runs per model in the notes). "
          "OpenVINO compiled with `INFERENCE_PRECISION_HINT: f32` (float ops in f32, not bf16) for every variant. "
          "Calibration: the same {args.calib} digits images upsampled to 224 for every quantizer at 224 "
          "(edgekit minmax, no bias correction there; ORT quantize_static after `quant_pre_process`, U8S8 per-channel QDQ; "
          "NNCF `nncf.quantize` defaults on the OpenVINO model read from the same fp32 ONNX). "
          "edgekit `ek-ov` = `quantize.target: openvino`, `ek-ort` = `quantize.target: onnxruntime`.\n",
          "### Latency at 224x224 (random weights)\n",
          markdown_table(["model", "ORT fp32", "ORT ek-ort", "ORT ek-ov", "ORT quantize_static", "ek-ort / quantize_static",
                          "ORT ek-ort ends int8", "OV fp32", "OV ek-ov", "OV ek-ort", "OV NNCF", "ek-ov / NNCF",
                          "OV ek-ov ends int8"], lat_rows),
          "\n`ends int8`: the same edgekit quantizer with `quantize.ends: int8` (patch embedding and classifier head int8 "
          "too; the default `auto` keeps them float on transformers, edgekit.quant.placement_ends): the latency that "
          "default costs.\n",
          "\n### Accuracy (digits test split, 359 images, top-1 %; int8 run on the runtime named)\n",
          markdown_table(["model", "fp32", "ek-ov (torch)", "ek-ov (OpenVINO)", "drop", f"ek-ov {SQ_OTHER} (torch)",
                          "ek-ov ends int8 (torch)", "ek-ort (ORT)", "drop", f"ek-ort {SQ_OTHER} (torch)",
                          "ek-ort ends int8 (torch)", "ORT quantize_static (ORT)", "NNCF (OpenVINO)"], acc_rows),
          f"\nOne image is 0.28 pt of this split. edgekit runs with its defaults (SmoothQuant "
          f"{f'on, alpha {SQ_DEFAULT.alpha}' if SQ_DEFAULT.enabled else 'off'}; `ends: auto`: patch embedding (not a conv stem) and "
          f"head float on these transformers); the '{SQ_OTHER}' columns are the same "
          f"quantizer with `smoothquant.enabled: {str(not SQ_DEFAULT.enabled).lower()}`, the 'ends int8' columns with "
          "`ends: int8` (every layer int8, the default before).\n"]
    if ov_reports:
        h, rows = side_by_side(ov_reports)
        md += ["\n### Ops run in int8 by OpenVINO's CPU plugin (read from `compiled.get_runtime_model()`)\n",
               "`int8 / all` original ops of each kind whose executed node runs in i8/u8 (`MatMul (activations)`: "
               "the attention products Q·Kᵀ and A·V; `MVN`: LayerNorm).\n", markdown_table(h, rows)]
    if ort_reports:
        h, rows = side_by_side(ort_reports)
        md += ["\n### Kernels ONNX Runtime runs (its optimized graph after QDQ fusions)\n",
               "Integer kernels count as int8; `MatMulIntegerToFloat` is an int8 product with a float output.\n",
               markdown_table(h, rows)]
    if st["prof"]:
        md += ["\n### Where ONNX Runtime spends its time (its own profiler: kernel ms per run, by op type)\n",
               "`SessionOptions.enable_profiling` on the optimized graphs of `ek-ort` and quantize_static, "
               f"{args.runs} runs after 3 warm-up runs, 2 threads, in the latency pass (same load); the op types "
               "that take at least 2% of either graph's kernel time, and the total.\n", profile_table(st["prof"])]
    if notes:
        md.append("\nNotes:\n" + "\n".join(f"- {n}" for n in notes))
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("int8_transformers", text)


if __name__ == "__main__":
    main()
