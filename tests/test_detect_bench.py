"""benchmarks/detection.py helpers: pooled sessions, interval verdicts, the --cache fingerprint (issue 19)."""

from __future__ import annotations

import json
import re

import numpy as np

from benchmarks import detection as bench


def test_pooled_sessions_split_the_rounds_and_every_call_is_timed():
    calls = {k: [0, 0, 0] for k in ("a", "b")}
    pools = {k: [lambda x, k=k, i=i: calls[k].__setitem__(i, calls[k][i] + 1) for i in range(3)] for k in calls}
    samples: dict = {}
    ms = bench.interleaved_latency(pools, np.zeros(1), runs=30, block=5, samples_out=samples)
    assert set(ms) == {"a", "b"} and all(len(v) == 30 for v in samples.values())
    # 6 visits, 2 per session; each visit is one untimed + 5 timed calls, after 3 warm-up calls per session
    assert calls == {"a": [3 + 12] * 3, "b": [3 + 12] * 3}


def test_judge_says_tie_when_the_interval_straddles_the_target():
    rng = np.random.default_rng(0)
    base = list(1.0 + 0.01 * rng.standard_normal(300))
    faster = [v * 0.9 for v in base]
    same = list(1.0 + 0.01 * rng.standard_normal(300))
    assert bench.judge(base, faster, lambda r: r <= 1.0)[0] == "met"
    assert bench.judge(faster, base, lambda r: r <= 1.0)[0] == "NOT met"
    label, ratio, (lo, hi) = bench.judge(base, same, lambda r: r <= 1.0)
    assert label.startswith("tie") and lo <= 1.0 <= hi and abs(ratio - 1.0) < 0.01


def test_cache_is_emptied_when_built_from_other_code(tmp_path):
    key = bench.fingerprint("detector", None)
    assert "quant/placement.py" in key and "recipe:prune-30-detect" in key and "prune/structured.py" in key
    bench.fresh_cache(tmp_path, key)
    (tmp_path / "fp32.json").write_text("{}")
    bench.fresh_cache(tmp_path, key)  # same recipes and code: kept
    assert (tmp_path / "fp32.json").exists()
    bench.fresh_cache(tmp_path, {**key, "quant/ptq.py": "changed"})
    assert not (tmp_path / "fp32.json").exists()
    assert json.loads((tmp_path / "fingerprint.json").read_text())["quant/ptq.py"] == "changed"


def _verdict_calls(rng, ours_scale: float):
    base = lambda s: list(s * (1.0 + 0.01 * rng.standard_normal(300)))  # noqa: E731
    calls = {("fp32", "openvino"): base(1.0), ("prune-30", "openvino"): base(0.7), ("NNCF", "openvino"): base(0.5),
             ("int8-openvino", "openvino"): base(0.5 * ours_scale)}
    summary = {(v, "openvino"): {"map": 0.5} for v in ("fp32", "int8-openvino", "prune-30")}
    return summary, {"64x64 warm": (calls, 0.7)}


def test_a_tie_on_the_same_openvino_program_is_reported_equal_and_only_then():
    rng = np.random.default_rng(1)
    summary, timings = _verdict_calls(rng, 1.0)
    plain = bench.verdict("openvino", summary, timings)
    assert re.search(r"int8 [0-9.]+ ms vs best peer \(NNCF\) [0-9.]+ ms, ratio [0-9.]+ \(95% CI [0-9.-]+\): tie", plain)
    assert "same compiled program" not in plain
    same = bench.verdict("openvino", summary, timings, {("64x64 warm", "NNCF"): 111})
    assert "met: equal, the same compiled program as NNCF's (111 executed nodes" in same and "measured: tie" in same
    # a program that is not the peer's keeps the measured label, however close the ratio
    other = bench.verdict("openvino", summary, timings, {("64x64 cold", "NNCF"): 111})
    assert "met: equal" not in other


def test_openvino_program_tells_a_copy_from_another_model(tmp_path):
    import shutil

    import torch

    from edgekit.exporters.torch2onnx import to_onnx
    from edgekit.quant.placement_report import openvino_program

    x = torch.randn(1, 3, 16, 16)
    a = to_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU()).eval(), x, tmp_path / "a.onnx")
    b = to_onnx(torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU()).eval(), x, tmp_path / "b.onnx")
    shutil.copyfile(a, tmp_path / "c.onnx")
    prog = openvino_program(a)
    assert prog and any(p[0] == "Convolution" for p in prog)
    assert openvino_program(tmp_path / "c.onnx") == prog and openvino_program(b) != prog


def test_cold_bound_reads_the_fixed_cost_of_a_cold_call():
    rng = np.random.default_rng(2)
    sample = lambda m: list(m * (1.0 + 0.001 * rng.standard_normal(300)))  # noqa: E731
    warm = {("fp32", "onnxruntime"): sample(0.15), ("prune-30", "onnxruntime"): sample(0.105)}
    cold = {("fp32", "onnxruntime"): sample(0.21), ("prune-30", "onnxruntime"): sample(0.165)}
    timings = {"64x64 warm": (warm, 0.7), "64x64 cold": (cold, 0.7)}
    text = bench.cold_bound("64x64 cold", "onnxruntime", timings, 0.7)
    assert "adds 0.060 ms to fp32 and 0.060 ms to prune-30" in text
    assert "cold lat/MAC of 0.71" in text and "warm 1.00" in text and "cold 0.71" in text
    assert bench.cold_bound("64x64 warm", "onnxruntime", timings, 0.7) == ""
