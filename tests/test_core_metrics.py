"""Model figures: parameter and storage protocols, MACs, fidelity."""

from __future__ import annotations

import torch
from torch import nn

from edgekit.metrics import count_macs, count_params, fidelity, layer_table, storage_bytes


class Packed(nn.Module):
    """A layer that keeps 1-bit weights in a buffer and reports its logical size itself."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("bits", torch.zeros(16, dtype=torch.uint8))  # 128 weights
        self.inner = nn.Linear(4, 4)  # skipped: the module reports for its children

    def param_count(self) -> int:
        return 128

    def storage_bytes(self) -> int:
        return 16


def test_param_and_storage_protocols():
    m = nn.Sequential(nn.Linear(10, 5), Packed())
    assert count_params(m) == 55 + 128
    assert storage_bytes(m) == 55 * 4 + 16
    shared = nn.Linear(3, 3)
    assert count_params(nn.Sequential(shared, shared)) == 12  # tied weights count once


def test_macs_and_layer_table():
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    x = torch.randn(1, 3, 4, 4)
    expected = 8 * 16 * 27 + 128 * 10
    assert count_macs(m, x) == expected
    total, rows = layer_table(m, x)
    assert total == expected
    by = {r["name"]: r for r in rows}
    assert by["0"]["macs"] == 8 * 16 * 27 and by["0"]["output_shape"] == [1, 8, 4, 4] and by["1"]["macs"] == 0


def test_fidelity_detects_difference():
    a = nn.Linear(4, 3)
    b = nn.Linear(4, 3)
    x = torch.randn(32, 4)
    same = fidelity(a, a, x)
    assert same["cosine"] > 0.999999 and same["max_abs"] == 0 and same["top1_agreement"] == 1.0
    assert fidelity(a, b, x)["cosine"] < 0.99


class SimClock:
    """A clock that only moves when a simulated call spends time; costs can drift with the clock (load)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def fn(self, ms: float, drift_per_s: float = 0.0, log: list | None = None, tag: str = ""):
        def call():
            if log is not None:
                log.append(tag)
            self.now += ms / 1e3 * (1 + drift_per_s * self.now)
        return call


def test_compare_latency_interleaves_and_reports_median_ratio_with_ci():
    from edgekit.metrics import compare_latency

    clock, log = SimClock(), []
    cmp = compare_latency(clock.fn(2.0, log=log, tag="B"), clock.fn(1.0, log=log, tag="A"), runs=20, warmup=1, clock=clock)
    assert log[2:10] == ["B", "A", "A", "B", "B", "A", "A", "B"]  # after warm-up: ABBA, neither side always first
    assert abs(cmp.ratio - 0.5) < 1e-9 and cmp.ratio_low <= 0.5 <= cmp.ratio_high
    assert abs(cmp.before["median"] - 2.0) < 1e-9 and "p99" in cmp.after and cmp.before["runs"] == 20
    d = cmp.to_dict()
    assert d["ratio"] == cmp.ratio and d["before"]["p90"] == cmp.before["p90"]
    assert "ratio 0.500x (95% CI" in cmp.summary() and "p90 2 / 1 ms" in cmp.summary()


def test_interleaving_survives_load_drift_that_fools_sequential_timing():
    """Machine load rising during the measurement: timing A then B (sequentially) makes two equal models look
    different; interleaved, the ratio stays near 1 and the interval covers it."""
    from edgekit.metrics import compare_latency, time_callable

    clock = SimClock()
    import edgekit.metrics as m

    seq_clock = SimClock()
    orig = m.time.perf_counter
    try:
        m.time.perf_counter = seq_clock  # time_callable reads the module's clock
        a = time_callable(seq_clock.fn(1.0, drift_per_s=2.0), runs=200, warmup=0)
        b = time_callable(seq_clock.fn(1.0, drift_per_s=2.0), runs=200, warmup=0)
    finally:
        m.time.perf_counter = orig
    assert b["median"] / a["median"] > 1.3  # sequential: a 30%+ "slowdown" of an identical model
    cmp = compare_latency(clock.fn(1.0, drift_per_s=2.0), clock.fn(1.0, drift_per_s=2.0), runs=200, warmup=0, clock=clock)
    assert abs(cmp.ratio - 1.0) < 0.02 and cmp.ratio_low <= 1.0 <= cmp.ratio_high


def test_compare_latency_on_real_models_and_bad_args():
    import pytest

    from edgekit.errors import UserInputError
    from edgekit.metrics import compare_latency

    big, small = nn.Linear(256, 256), nn.Linear(256, 4)
    x = torch.randn(8, 256)
    with torch.no_grad():
        cmp = compare_latency(lambda: big(x), lambda: small(x), runs=10, warmup=2)
    assert cmp.before["median"] > 0 and cmp.after["median"] > 0 and cmp.ratio_low <= cmp.ratio <= cmp.ratio_high
    with pytest.raises(UserInputError, match="runs=1"):
        compare_latency(lambda: None, lambda: None, runs=1)
