"""ONNX Runtime session options the latency benchmarks rely on (thread-pool spinning)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")


def _tiny_onnx(tmp_path):
    import torch
    from torch import nn

    from edgekit.exporters.torch2onnx import to_onnx

    return to_onnx(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval(), torch.randn(1, 3, 8, 8), tmp_path / "m.onnx")


@pytest.mark.parametrize("spinning", [True, False])
def test_ort_spinning_option_reaches_the_session_config(tmp_path, spinning):
    from edgekit.exporters.latency import file_runner
    from edgekit.exporters.runtimes import ORT_SPINNING_KEYS, ort_session

    path = _tiny_onnx(tmp_path)
    sess = ort_session(path, 2, spinning=spinning)
    opts = sess.get_session_options()  # what the created session holds, not the options object we built
    assert ORT_SPINNING_KEYS[0] == "session.intra_op.allow_spinning"
    for key in ORT_SPINNING_KEYS:
        assert opts.get_session_config_entry(key) == ("1" if spinning else "0")
    assert opts.intra_op_num_threads == 2
    out = file_runner(path, np.zeros((1, 3, 8, 8), np.float32), "onnxruntime", 2, ort_spinning=spinning)()
    assert out[0].shape == (1, 4, 6, 6)


def test_ort_session_default_keeps_onnxruntime_spinning(tmp_path):
    from edgekit.exporters.runtimes import ort_session

    opts = ort_session(_tiny_onnx(tmp_path), 1).get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_thirdparty_benchmark_turns_spinning_off_for_every_ort_session(tmp_path, monkeypatch):
    """Every ORT session the benchmark times or profiles (edgekit's and the peers' files alike) is made with
    spinning off: idle sessions' spinning workers would otherwise take the 2 cores from the one being timed."""
    import edgekit.exporters.runtimes as runtimes
    from benchmarks import thirdparty_vs_peers as bench

    made = []
    real = runtimes.ort_session_options

    def spy(threads, profile_prefix=None, spinning=True):
        made.append(spinning)
        return real(threads, profile_prefix, spinning)

    monkeypatch.setattr(runtimes, "ort_session_options", spy)
    path = _tiny_onnx(tmp_path)
    x = np.zeros((1, 3, 8, 8), np.float32)
    bench.variant_runner(path, x, "onnxruntime")()
    assert bench.ort_kernel_ms(path, x, 2) > 0
    assert made == [False, False]


def test_report_counts_only_the_recipe_default_as_a_target():
    """An override row (prune-50 with prune.round_to=16) is shown, but the verdicts are int8 and the recipe's prune-50."""
    import argparse

    from benchmarks import thirdparty_vs_peers as bench

    rng = np.random.default_rng(0)
    ms = {"fp32": 10.0, "edgekit-int8": 5.0, "edgekit-int8-ov": 5.0, "ort-int8": 5.0, "nncf-int8": 5.0,
          "edgekit-p50": 8.0, "tp-p50": 8.0, "edgekit-p50-r16": 4.0}
    lat = {(k, rt): list(v * (1 + 0.01 * rng.standard_normal(20))) for k, v in ms.items() for rt in bench.RUNTIMES}
    r = {"name": "mobilenetv2", "lat": lat, "macs": {"fp32": 100, "edgekit-p50": 30, "tp-p50": 30, "edgekit-p50-r16": 32},
         "sizes": {k: 1e6 for k in ms}, "seconds": {}, "notes": [], "uptime": ["u0", "u1"],
         "kernel_ms": {"fp32": 8.0, "edgekit-p50": 4.0}, "ov_kernel_ms": {"fp32": 6.0, "edgekit-p50": 1.5}}
    args = argparse.Namespace(command="cmd", load_note="", runs=20, warmup=1, samples=4, note=[])
    text = bench.report([r], args)
    assert "Targets met: 2 of 4" in text, text  # int8 on both runtimes; prune-50 (0.2 / 0.7) misses on both
    r16 = [line for line in text.splitlines() if "round_to=16" in line and line.startswith("|")]
    assert len(r16) == 2 and all("not a target" in line for line in r16), r16
    ek = [line for line in text.splitlines() if line.startswith("| mobilenetv2 | edgekit |")]
    assert "8.0 -> 4.0 ms: x0.500" in ek[0] and "6.0 -> 1.5 ms: x0.250" in ek[1], ek  # ORT row, then OpenVINO row


def test_openvino_node_times_are_the_executed_nodes(tmp_path):
    pytest.importorskip("openvino")
    from benchmarks import thirdparty_vs_peers as bench
    from edgekit.exporters.runtimes import openvino_node_times

    path = _tiny_onnx(tmp_path)
    x = np.zeros((1, 3, 8, 8), np.float32)
    times = openvino_node_times(path, x, runs=3, threads=1, warmup=1)
    kinds = {kind for kind, _ in times.values()}
    assert "Convolution" in kinds, kinds  # the conv ran (ReLU may be fused into it)
    assert all(1 <= len(t) <= 3 and min(t) >= 0 for _, t in times.values())
    assert all(len(t) == 3 for kind, t in times.values() if kind == "Convolution")
    assert bench.ov_kernel_ms(path, x, 2) > 0


def test_prune_allocation_counts_macs_and_bytes_per_layer_class(tmp_path):
    """benchmarks/prune_allocation's layer classes (by the module path the exported names keep): a 1x1 expand and
    a depthwise 3x3; halving the width halves the bytes and quarters the MACs of the conv pruned on both sides."""
    import torch
    from torch import nn

    from benchmarks.prune_allocation import class_work, layer_class
    from edgekit.exporters.torch2onnx import to_onnx

    class Block(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.expand_1x1 = nn.Conv2d(c, 4 * c, 1)
            self.conv_3x3 = nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c)

        def forward(self, x):
            return self.conv_3x3(self.expand_1x1(x))

    x = torch.randn(1, 8, 8, 8)
    dense = class_work(to_onnx(Block(8).eval(), x, tmp_path / "d.onnx"), x.numpy())
    assert dense["1x1 expand"]["macs"] == 8 * 32 * 64 and dense["3x3 depthwise"]["macs"] == 32 * 9 * 64
    assert dense["1x1 expand"]["bytes"] == 4 * (8 + 32) * 64
    half = class_work(to_onnx(Block(4).eval(), x[:, :4], tmp_path / "h.onnx"), x[:, :4].numpy())
    assert half["1x1 expand"]["macs"] * 4 == dense["1x1 expand"]["macs"]
    assert half["1x1 expand"]["bytes"] * 2 == dense["1x1 expand"]["bytes"]
    assert layer_class("ReorderOutput_kernel_time", "ReorderOutput") == "layout reorders"
    assert layer_class("/mobilenet_v2/layer.3/reduce_1x1/convolution/Conv_output_0_nchwc_kernel_time") == "1x1 reduce"
