"""Third-party models through int8 and prune-50: edgekit vs ONNX Runtime quantize_static, NNCF and Torch-Pruning.

The models are ``transformers`` classes built from their configs (ResNet-50, MobileNetV2 1.0, ViT-S/16; 224x224,
1000 classes, random init with PyTorch's default layer init, nothing downloaded), handed to edgekit as a user
would: ``edgekit.compress(model, recipe, data=...)`` with the recipe a user picks for the runtime (``int8`` for
ONNX Runtime, ``int8-openvino`` for OpenVINO, ``prune-50``; graph capture by torch.export, the models do not trace
with torch.fx). Peers, from the same fp32 model:

- int8: ONNX Runtime ``quantize_static`` after ``quant_pre_process`` (QDQ, U8S8, per channel) and NNCF
  ``quantize`` on the OpenVINO model, with the same calibration samples as edgekit;
- prune-50: Torch-Pruning ``MetaPruner`` (L1 magnitude, ratio 0.5, round_to 8, classifier ignored; whole heads
  of the ViT's q/k/v, as its Hugging Face ViT example does). Torch-Pruning is not an edgekit dependency: the
  rows are skipped when it is not installed.

All variants of one model are timed in one loop (one call of each per round, a new random order each round), on
ONNX Runtime and OpenVINO, batch 1, 2 threads: load drifts hit every variant alike; medians. Every ONNX Runtime
session (edgekit's files and the peers' alike) is made with thread-pool spinning off
(``session.intra_op.allow_spinning = 0``): with several sessions in one process, an idle session's workers
otherwise keep spinning after its call and take the 2 cores from the session being timed. Targets (issue 12):
edgekit's latency within 5% of the best peer on the same runtime, and a pruned latency reduction of at least
0.8x the MAC reduction. Random weights: latency, MACs and sizes only (accuracy is the zoo's, see zoo_recipes).

    python -m benchmarks.thirdparty_vs_peers [--models resnet50,mobilenetv2,vit_s] [--runs 50] [--no-write]

Compressing is CPU-heavy and timing needs a quiet machine, so the two can run apart: ``--phase build --workdir
DIR`` compresses and exports every variant into DIR (run it at idle priority), ``--phase time --workdir DIR``
times DIR's files (one model per run under a lock is fine): each model's figures are merged into ``--json``
(by model name) with the ``uptime`` of its own timing, and the section is written from the whole file.
``--only edgekit-int8,edgekit-int8-ov`` rebuilds just those variants in DIR (after a change to edgekit's int8);
``--only edgekit-p50-r16`` adds prune-50 with ``prune.round_to=16`` (AVX-512's fp32 width), timed beside the
recipe default as information (not one of the targets); ``--only edgekit-p70-dw`` adds ``prune.scope=depthwise``
at ratio 0.7 (only the groups holding a depthwise conv, MobileNetV2's expanded channels; see
``benchmarks.prune_allocation``), also information.
The time phase also profiles fp32 and the pruned files with ONNX Runtime's profiler and OpenVINO's per-node
counters (``--profile-runs``): the kernels' own time, next to the wall-clock verdict.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from benchmarks._report import command_line, machine_note, markdown_table, write_section
from benchmarks.quant_vs_peers import file_size, nncf_quantize, ort_quantize_static

RUNTIMES = ("onnxruntime", "openvino")
EDGEKIT_INT8 = {"edgekit-int8": "int8", "edgekit-int8-ov": "int8-openvino"}  # variant -> edgekit recipe
INT8_FOR = {"onnxruntime": "edgekit-int8", "openvino": "edgekit-int8-ov"}  # the recipe made for each runtime
# prune-50 with a recipe override, built only when asked (``--only``): informative rows, not a verdict
PRUNE_OVERRIDES = {"edgekit-p50-r16": ["prune.round_to=16"],
                   "edgekit-p70-dw": ["prune.scope=depthwise", "prune.ratio=0.7"]}
VARIANTS = ("fp32", *EDGEKIT_INT8, "ort-int8", "edgekit-p50", "tp-p50", *PRUNE_OVERRIDES)
PRUNED = ("edgekit-p50", "tp-p50", *PRUNE_OVERRIDES)
MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resnet50": ("ResNetConfig", "ResNetForImageClassification", {}),  # the config's defaults are ResNet-50
    "mobilenetv2": ("MobileNetV2Config", "MobileNetV2ForImageClassification", {}),  # width 1.0, 224
    "vit_s": ("ViTConfig", "ViTForImageClassification",
              dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                   image_size=224, patch_size=16)),
}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return "(uptime not available)"


def build(name: str, seed: int = 0) -> nn.Module:
    """The transformers class from its config, random init (PyTorch's default init for conv / linear: with the
    library's std 0.02 a random deep CNN's activations vanish and int8 ranges become meaningless)."""
    import transformers

    config_cls, model_cls, kw = MODELS[name]
    cfg = getattr(transformers, config_cls)(num_labels=1000, **kw)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.reset_parameters()
    return model


def data_bundle(calib: torch.Tensor, test: torch.Tensor):
    """The calibration samples as a user's data (unlabeled: the prune fine-tune is skipped, latency only)."""
    from edgekit.data import DataBundle, Split

    return DataBundle("random:3x224x224", Split(calib, None), Split(calib, None), Split(test, None), None,
                      tuple(calib.shape[1:]))


def tp_prune(model: nn.Module, x: torch.Tensor, ratio: float) -> nn.Module:
    """Torch-Pruning's MetaPruner, as its documentation and Hugging Face ViT example use it."""
    import torch_pruning as tp

    model = copy.deepcopy(model).eval()
    heads = {lin: m.num_attention_heads for m in model.modules() if hasattr(m, "q_proj")
             for lin in (m.q_proj, m.k_proj, m.v_proj)}
    kw: dict[str, Any] = {}
    if heads:
        kw = dict(num_heads=heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio)
    pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1), pruning_ratio=ratio,
                                  ignored_layers=[model.classifier], round_to=8,
                                  output_transform=lambda out: out.logits.sum(), **kw)
    pruner.step()
    for m in model.modules():  # the attention reshapes to (-1 heads, head_dim): only the count attribute follows
        if hasattr(m, "q_proj"):
            m.num_attention_heads = pruner.num_heads[m.q_proj]
    return model


def interleaved(runners: dict[str, Callable[[], object]], runs: int, warmup: int) -> dict[str, list[float]]:
    """Time every runner once per round, in a new random order each round (seeded); ms per call.

    Random, not rotated: a rotation keeps the cyclic order, so each variant always ran right after the same
    other one (edgekit int8 after the 100 MB fp32 model, whose caches and still-spinning threads it then met;
    the two pruned ResNet-50 files of equal shape measured 25.7 vs 16.9 ms by position alone)."""
    keys = list(runners)
    for _ in range(warmup):
        for k in keys:
            runners[k]()
    samples: dict[str, list[float]] = {k: [] for k in keys}
    rng = np.random.default_rng(0)
    for _ in range(runs):
        for k in map(str, rng.permutation(keys)):
            t0 = time.perf_counter()
            runners[k]()
            samples[k].append((time.perf_counter() - t0) * 1e3)
    return samples


def build_model(name: str, args, tmp: Path) -> dict[str, Any]:
    """Compress ``name`` every way and export each variant to ``tmp``; returns (and saves) what is not timing."""
    import edgekit
    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.metrics import count_macs
    from edgekit.outputs import select_output, unwrap

    g = torch.Generator().manual_seed(0)
    calib = torch.randn(args.samples, 3, 224, 224, generator=g)
    x = torch.randn(1, 3, 224, 224, generator=g)
    data = data_bundle(calib, x.repeat(2, 1, 1, 1))
    model = build(name)
    dense, _ = select_output(model, (x,))
    files: dict[str, Path] = {k: tmp / f"{name}-{k}.onnx" for k in VARIANTS}
    files["nncf-int8"] = tmp / f"{name}-nncf-int8.xml"
    old = json.loads((tmp / f"{name}-built.json").read_text()) if args.only and (tmp / f"{name}-built.json").exists() else None
    todo = set(args.only.split(",")) if old else set(files) - set(PRUNE_OVERRIDES)
    seconds: dict[str, float] = {k: v for k, v in (old or {}).get("seconds", {}).items() if k not in todo}
    notes: list[str] = [n for n in (old or {}).get("notes", []) if "edgekit-p50" not in todo]

    def timed(key: str, fn: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        out = fn()
        seconds[key] = time.perf_counter() - t0
        print(f"  {name}: {key} {seconds[key]:.1f} s", flush=True)
        return out

    macs = {k: v for k, v in (old or {}).get("macs", {}).items() if k not in todo}
    if "fp32" in todo:
        to_onnx(dense, x, files["fp32"])
        macs["fp32"] = count_macs(dense, x)
    for key, recipe in EDGEKIT_INT8.items():  # the recipe a user picks for each runtime
        if key in todo:
            q = timed(key, lambda: edgekit.compress(model, recipe, data=data, latency=False,
                                                    overrides=[f"quantize.calibration.samples={args.samples}"]))
            to_onnx(q.model, x, files[key])
    c = calib.numpy()
    if "ort-int8" in todo:
        timed("ort-int8", lambda: ort_quantize_static(files["fp32"], files["ort-int8"], c))
    if "nncf-int8" in todo:
        timed("nncf-int8", lambda: nncf_quantize(files["fp32"], files["nncf-int8"], c))
    if "edgekit-p50" in todo:
        p = timed("edgekit-p50", lambda: edgekit.compress(model, "prune-50", data=data, latency=False))
        to_onnx(p.model, x, files["edgekit-p50"])
        user_model, _ = unwrap(p.model)
        macs["edgekit-p50"] = count_macs(p.model, x)
        prune_rep = next(s.report for s in p.report.stages if s.name == "prune")
        captured = p.report.model_info.capture or (prune_rep.get("capture") or {}).get("method")
        notes.append(f"{name}: prune-50 graph captured by {captured}; pruned model is "
                     f"{'the user class ' if isinstance(user_model, type(model)) else ''}{type(user_model).__name__}"
                     f"{'' if isinstance(user_model, type(model)) else ' (not ' + type(model).__name__ + ')'}; "
                     f"edgekit prune {prune_rep.get('model_type', '?')}")
    for key, overrides in PRUNE_OVERRIDES.items():
        if key in todo:
            p = timed(key, lambda: edgekit.compress(model, "prune-50", data=data, latency=False, overrides=overrides))
            to_onnx(p.model, x, files[key])
            macs[key] = count_macs(p.model, x)
    if "tp-p50" in todo:
        try:
            tpm = timed("tp-p50", lambda: tp_prune(model, x, 0.5))
            tp_dense, _ = select_output(tpm, (x,))
            macs["tp-p50"] = count_macs(tp_dense, x)
            to_onnx(tp_dense, x, files["tp-p50"])
        except ImportError:
            notes.append(f"{name}: Torch-Pruning not installed; no tp-p50 row")
    files = {k: f for k, f in files.items() if f.exists()}
    sizes = {k: file_size(f) for k, f in files.items()}
    built = {"name": name, "files": {k: f.name for k, f in files.items()}, "macs": macs, "seconds": seconds,
             "sizes": sizes, "notes": notes}
    (tmp / f"{name}-built.json").write_text(json.dumps(built))
    return built


def time_model(built: dict[str, Any], args, tmp: Path) -> dict[str, Any]:
    """Time the variants ``build_model`` wrote to ``tmp``, round robin per runtime; adds ``lat`` and ``uptime``."""
    g = torch.Generator().manual_seed(0)
    torch.randn(args.samples, 3, 224, 224, generator=g)  # the calibration samples build_model drew first
    x = torch.randn(1, 3, 224, 224, generator=g).numpy()
    files = {k: tmp / f for k, f in built["files"].items()}
    variants = {"onnxruntime": ["fp32", "edgekit-int8", "ort-int8", *PRUNED],
                "openvino": ["fp32", INT8_FOR["openvino"], "nncf-int8", *PRUNED]}
    lat: dict[tuple[str, str], list[float]] = {}
    before = uptime()
    for rt in RUNTIMES:
        runners = {k: variant_runner(files[k], x, rt) for k in variants[rt] if k in files}
        for k, s in interleaved(runners, args.runs, args.warmup).items():
            lat[k, rt] = s
        del runners
    profiled = [k for k in ("fp32", *PRUNED) if k in files and args.profile_runs]
    kernels = {k: ort_kernel_ms(files[k], x, args.profile_runs) for k in profiled}
    ov_kernels = {k: ov_kernel_ms(files[k], x, args.profile_runs) for k in profiled}
    kern_of = {"onnxruntime": ort_kernel_ms, "openvino": ov_kernel_ms}
    int8_kernels = {rt: {k: kern_of[rt](files[k], x, args.profile_runs) for k in variants[rt][1:3] if k in files}
                    for rt in RUNTIMES} if args.profile_runs else {}  # edgekit's int8 file and the peer's, per runtime
    return {**built, "lat": lat, "kernel_ms": kernels, "ov_kernel_ms": ov_kernels, "int8_kernel_ms": int8_kernels,
            "uptime": [before, uptime()]}


def variant_runner(path: Path, x: np.ndarray, runtime: str) -> Callable[[], object]:
    """One call of ``path`` on ``runtime`` (2 threads; ONNX Runtime with spinning off, see the module doc)."""
    from edgekit.exporters.latency import file_runner

    return file_runner(path, x, runtime, threads=2, ort_spinning=False)


def node_ms(path: Path, x: np.ndarray, runtime: str, runs: int) -> dict[str, tuple[str, float]]:
    """``{node: (op type, median ms)}`` of the runtime's own per-node profile of ``path`` (2 threads, sequential,
    as timed): ONNX Runtime's profiler (spinning off) or OpenVINO's ``PERF_COUNT`` counters. Unlike a call's wall
    time it leaves out what happens between kernels and a preempted call, so it shows whether the kernels
    themselves follow the MACs."""
    from edgekit.exporters.runtimes import openvino_node_times, ort_kernel_times

    times = (ort_kernel_times(path, x, runs, threads=2, spinning=False) if runtime == "onnxruntime"
             else openvino_node_times(path, np.ascontiguousarray(x, dtype=np.float32), runs, threads=2))
    return {node: (op, float(np.median(t))) for node, (op, t) in times.items() if t}


def ort_kernel_ms(path: Path, x: np.ndarray, runs: int) -> float:
    """ONNX Runtime's kernel time of ``path``: the sum over nodes of each node's median (:func:`node_ms`)."""
    return sum(ms for _, ms in node_ms(path, x, "onnxruntime", runs).values())


def ov_kernel_ms(path: Path, x: np.ndarray, runs: int) -> float:
    """OpenVINO's counterpart of :func:`ort_kernel_ms` (executed nodes, ``PERF_COUNT`` counters)."""
    return sum(ms for _, ms in node_ms(path, x, "openvino", runs).values())


def report(results: list[dict[str, Any]], args) -> str:
    from edgekit.metrics import bootstrap_ratio_ci

    med = lambda s: float(np.median(s))  # noqa: E731
    q_rows, p_rows, verdicts = [], [], []
    for r in results:
        name, lat = r["name"], r["lat"]
        for rt, peer in (("onnxruntime", "ort-int8"), ("openvino", "nncf-int8")):
            ek = INT8_FOR[rt] if (INT8_FOR[rt], rt) in lat else "edgekit-int8"  # older files: int8 on both
            e, pe, f = lat[ek, rt], lat[peer, rt], lat["fp32", rt]
            ratio = med(e) / med(pe)
            lo, hi = bootstrap_ratio_ci(pe, e)
            ok = ratio <= 1.05
            ik = r.get("int8_kernel_ms", {}).get(rt, {})
            kern = f"{ik[ek]:.2f} / {ik[peer]:.2f} ms: x{ik[ek] / ik[peer]:.3f}" if ek in ik and peer in ik else "-"
            q_rows.append([name, rt, EDGEKIT_INT8[ek], med(f), med(e), med(pe), peer, f"{ratio:.3f} ({lo:.2f}-{hi:.2f})",
                           "yes" if ok else "**no**", f"{med(f) / med(e):.2f}x",
                           f"{r['sizes']['fp32'] / 1e6:.1f} / {r['sizes'][ek] / 1e6:.1f} / {r['sizes'][peer] / 1e6:.1f}", kern])
            verdicts.append((f"int8 {name} {rt}", ok))
        for tool in PRUNED:
            if (tool, "onnxruntime") not in lat:
                continue
            mac_r = r["macs"][tool] / r["macs"]["fp32"]
            for rt in RUNTIMES:
                lat_r = med(lat[tool, rt]) / med(lat["fp32", rt])
                lo, hi = bootstrap_ratio_ci(lat["fp32", rt], lat[tool, rt])
                eff = (1 - lat_r) / max(1e-9, 1 - mac_r)
                ok = eff >= 0.8
                peer = ""
                if tool != "tp-p50" and ("tp-p50", rt) in lat:
                    peer = f"{med(lat[tool, rt]) / med(lat['tp-p50', rt]):.3f}"
                kern = (r.get("kernel_ms") if rt == "onnxruntime" else r.get("ov_kernel_ms")) or {}
                kx = "-"
                if tool in kern and "fp32" in kern:
                    k_r = kern[tool] / kern["fp32"]
                    kx = f"{kern['fp32']:.1f} -> {kern[tool]:.1f} ms: x{k_r:.3f}, lat/MAC {(1 - k_r) / max(1e-9, 1 - mac_r):.2f}"
                label = f"edgekit ({', '.join(PRUNE_OVERRIDES[tool])})" if tool in PRUNE_OVERRIDES else tool.replace("-p50", "")
                verdict = "yes" if ok else "**no**"
                if tool in PRUNE_OVERRIDES:  # not the recipe default: information, not one of the targets
                    verdict = f"({'yes' if ok else 'no'}: not a target)"
                p_rows.append([name, label, rt, r["macs"]["fp32"] / 1e6, f"{mac_r:.3f}",
                               med(lat["fp32", rt]), med(lat[tool, rt]), f"{lat_r:.3f} ({lo:.2f}-{hi:.2f})",
                               f"{eff:.2f}", verdict, peer or "-", kx])
                if tool == "edgekit-p50":
                    verdicts.append((f"prune-50 {name} {rt}", ok))
    secs = "; ".join(f"{r['name']}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for r in results)
    loads = "; ".join(f"{r['name']}: before `{r['uptime'][0]}`, after `{r['uptime'][1]}`" for r in results)
    met = sum(ok for _, ok in verdicts)
    missing = [m for m in MODELS if m not in {r["name"] for r in results}]
    md = [
        "## Third-party models (transformers): int8 and prune-50 vs ORT quantize_static, NNCF, Torch-Pruning",
        "",
        f"`{getattr(args, 'command', None) or command_line()}`  ",
        f"Machine: {machine_note()}; onnxruntime, openvino, nncf and torch-pruning as installed in the venv "
        f"(torch-pruning only for this benchmark). {args.load_note} `uptime` around each model's timing: {loads}. "
        f"The ratios come from variants timed in one round-robin loop ({args.runs} rounds after {args.warmup} "
        "warm-up, batch 1, 2 threads; every ONNX Runtime session, edgekit's and the peers', with thread-pool "
        "spinning off: `session.intra_op.allow_spinning=0`), medians, with a 95% bootstrap interval of the median "
        "ratio.",
        "",
        "Models: `transformers` ResNet-50 (`ResNetConfig()`), MobileNetV2 1.0 (`MobileNetV2Config()`), ViT-S/16 "
        "(`ViTConfig(hidden_size=384, 12 layers, 6 heads, mlp 1536)`), 224x224, 1000 classes, random init (latency "
        "only). edgekit: `edgekit.compress(model, recipe, data=...)` on the user's module (graph "
        "captured by torch.export) with the recipe a user picks for the runtime (`int8` for ONNX Runtime, "
        "`int8-openvino` for OpenVINO; `prune-50`), exported with `edgekit.exporters.torch2onnx.to_onnx`; the same "
        f"{args.samples} "
        "random calibration samples for every quantizer; ORT: `quant_pre_process` then `quantize_static` (QDQ, U8S8, "
        "per channel); NNCF: `nncf.quantize` on the OpenVINO model of the same fp32 ONNX; Torch-Pruning: "
        "`MetaPruner` (L1, ratio 0.5, round_to 8, classifier ignored, whole ViT heads). The fp32 ONNX is the model "
        "as exported (each runtime fuses BatchNorm itself).",
        "",
        "### int8: edgekit vs the best peer on the same runtime (target: ratio <= 1.05)",
        "",
        markdown_table(["model", "runtime", "edgekit recipe", "fp32 ms", "edgekit ms", "peer ms", "peer", "edgekit / peer (95% CI)",
                        "within 5%", "fp32 / edgekit", "MB fp32 / edgekit / peer", "kernels edgekit / peer"], q_rows),
        "",
        "`kernels edgekit / peer`: the runtime's own per-node times of the two int8 files (as the prune table's "
        "`kernels` column), the work their kernels do without what a call spends between them.",
        "",
        "### prune-50: latency reduction vs MAC reduction (target: lat/MAC >= 0.8)",
        "",
        "`lat/MAC` = (1 - latency ratio) / (1 - MAC ratio); `vs TP` = edgekit pruned ms / Torch-Pruning pruned ms; "
        "`kernels` = the runtime's own per-node times (ONNX Runtime's profiler; OpenVINO's `PERF_COUNT` counters), "
        "the sum over nodes of each node's median, dense -> pruned (the work the kernels do, without what a call "
        "spends between kernels or preempted; not the verdict).",
        "",
        markdown_table(["model", "tool", "runtime", "dense MMACs", "MACs x", "dense ms", "pruned ms",
                        "latency x (95% CI)", "lat/MAC", ">= 0.8", "vs TP", "kernels"], p_rows),
        "",
        f"Targets met: {met} of {len(verdicts)}"
        + (f"; missed: {', '.join(k for k, ok in verdicts if not ok)}." if met < len(verdicts) else "."),
        "",
        *([f"**Not measured** (no timing run for them in this file): {', '.join(missing)}.", ""] if missing else []),
        f"Seconds to compress (wall, each from its file's build; builds ran at different times and loads, as the "
        f"first note says): {secs}.",
        "",
        "Notes:",
        *[f"- {n}" for r in results for n in r["notes"]],
        *[f"- {n}" for n in getattr(args, "note", None) or []],
    ]
    return "\n".join(md)


_LOAD_NOTE = ("**Timed under a shared lock** (one timing at a time on the machine; other agents' jobs ran at "
              "SCHED_IDLE, `chrt -i 0`), so the load figures below are mostly idle-class work.")


def _save(path: Path, results: list[dict[str, Any]], args) -> None:
    """Merge ``results`` into ``path`` by model name (other models' figures are kept)."""
    old = json.loads(path.read_text()) if path.exists() else {"results": []}
    new = {r["name"] for r in results}
    kept = [{"uptime": old.get("uptime"), **r} for r in old["results"] if r["name"] not in new]
    rows = kept + [{**r, "lat": [[k, rt, v] for (k, rt), v in r["lat"].items()]} for r in results]
    order = list(MODELS)
    rows.sort(key=lambda r: order.index(r["name"]) if r["name"] in order else len(order))
    path.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k not in ("models",)}
                                | {"command": command_line(), "models": ",".join(r["name"] for r in rows)},
                                "results": rows}))


def _load(path: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    saved = json.loads(path.read_text())
    return [{"uptime": saved.get("uptime"), **r, "lat": {(k, rt): v for k, rt, v in r["lat"]}}  # older files: one uptime
            for r in saved["results"]], saved["args"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--runs", type=int, default=50, help="interleaved rounds (one timed call of every variant each)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--profile-runs", type=int, default=20,
                    help="time phase: ONNX Runtime profiler / OpenVINO PERF_COUNT runs of fp32 and the pruned "
                         "variants (0: none)")
    ap.add_argument("--samples", type=int, default=32, help="calibration samples (the same for every quantizer)")
    ap.add_argument("--phase", choices=("all", "build", "time"), default="all",
                    help="build: compress and export into --workdir; time: time --workdir's files; all: both")
    ap.add_argument("--workdir", help="where the variants are written / read (default: a temporary folder)")
    ap.add_argument("--only", help="build phase: rebuild only these variants (comma-separated, e.g. "
                                   "edgekit-int8,edgekit-int8-ov), keeping the others from --workdir")
    ap.add_argument("--load-note", default=_LOAD_NOTE, help="the sentence on the machine's load in the section")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--json", help="merge each model's figures into this file as it finishes (by model name)")
    ap.add_argument("--report-from", help="write the section from a --json file of earlier runs, run nothing")
    ap.add_argument("--note", action="append", default=[], help="a finding to list under the tables (repeatable)")
    args = ap.parse_args(argv)
    if args.report_from:
        results, saved = _load(Path(args.report_from))
        args = argparse.Namespace(**{**saved, "no_write": args.no_write, "note": args.note, "load_note": args.load_note})
        return _emit(results, args)
    if args.phase != "all" and not args.workdir:
        ap.error("--phase build / time needs --workdir")
    torch.set_num_threads(2)
    os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="edgekit-3p-") as tmpd:
        tmp = Path(args.workdir or tmpd)
        tmp.mkdir(parents=True, exist_ok=True)
        for name in args.models.split(","):
            print(f"[{name}]", flush=True)
            if args.phase == "time":
                built = json.loads((tmp / f"{name}-built.json").read_text())
            else:
                built = build_model(name, args, tmp)
            if args.phase == "build":
                continue
            results.append(time_model(built, args, tmp))
            if args.json:
                _save(Path(args.json), results, args)
    if args.phase == "build":
        return 0
    if args.json:  # the section covers every model in the file
        results, saved = _load(Path(args.json))
        args.models = saved["models"]
    return _emit(results, args)


def _emit(results: list[dict[str, Any]], args) -> int:
    text = report(results, args)
    print(text)
    if not args.no_write:
        write_section("thirdparty_vs_peers", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
