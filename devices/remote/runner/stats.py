"""Latency statistics: percentiles, the distribution-free 95% CI of the median, the summary of a run."""

from __future__ import annotations

import math

Z95 = 1.959963984540054


def percentile(sorted_vals: list, q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of an already sorted list."""
    if not sorted_vals:
        return float("nan")
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def median_ci(sorted_vals: list, z: float = Z95) -> tuple:
    """Distribution-free CI of the median: order statistics at n/2 -+ z*sqrt(n)/2 (normal approx. of B(n,1/2))."""
    n = len(sorted_vals)
    if n < 6:
        return (float("nan"), float("nan"))
    half = z * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half)), 0)
    hi = min(int(math.ceil(n / 2.0 + half)), n - 1)
    return (sorted_vals[lo], sorted_vals[hi])


def rel_ci_halfwidth(sorted_vals: list) -> float:
    """max(median - lo, hi - median) / median; inf when not computable."""
    lo, hi = median_ci(sorted_vals)
    med = percentile(sorted_vals, 50)
    if math.isnan(lo) or med <= 0:
        return float("inf")
    return max(med - lo, hi - med) / med


def summarize(samples_ms: list, batch: int = 1) -> dict:
    """Latency statistics (ms) and throughput (inferences/s, batch counted) of a list of samples."""
    s = sorted(samples_ms)
    if not s:
        return {"n": 0}
    lo, hi = median_ci(s)
    med = percentile(s, 50)
    return {
        "n": len(s),
        "latency_ms": {
            "min": s[0], "median": med, "p90": percentile(s, 90), "p99": percentile(s, 99), "max": s[-1],
            "mean": sum(s) / len(s),
        },
        "median_ci95_ms": [lo, hi],
        "median_ci95_rel": rel_ci_halfwidth(s),
        "throughput_ips": (1000.0 * batch / med) if med > 0 else None,
    }
