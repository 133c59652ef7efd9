"""Background sampling of power readers, and energy over a time window.

Every ``interval_s`` the sampler reads each reader and stores ``(t, value)`` with ``time.monotonic()``.
Energy counters are interpolated at the window edges (exact up to the counter's resolution); power readers
are integrated with the trapezoid rule over the samples inside the window (plus the edges, interpolated).
"""

from __future__ import annotations

import bisect
import threading
import time

from edgekit.devices.power.base import PowerReader


class PowerSampler:
    def __init__(self, readers: list[PowerReader], interval_s: float = 0.05) -> None:
        self.readers = readers
        self.interval = interval_s
        self.series: list[list[tuple[float, float]]] = [[] for _ in readers]
        self.errors: list[str | None] = [None for _ in readers]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample_once(self) -> None:
        for i, r in enumerate(self.readers):
            if self.errors[i]:
                continue
            try:
                val = r.read()
            except (OSError, ValueError) as exc:  # a sensor that stops answering is reported, not guessed
                self.errors[i] = f"{r.name}: {exc}"
                continue
            self.series[i].append((time.monotonic(), val))

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample_once()
            self._stop.wait(self.interval)

    def start(self) -> "PowerSampler":
        self.sample_once()
        self._thread = threading.Thread(target=self._run, name="edgekit-power", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.sample_once()

    def close(self) -> None:
        for r in self.readers:
            try:
                r.close()
            except Exception:  # noqa: BLE001 - closing must not hide the result
                pass

    # ------------------------------------------------------------------ analysis
    @staticmethod
    def _interp(series: list[tuple[float, float]], t: float) -> float | None:
        ts = [p[0] for p in series]
        if not series or t < ts[0] - 1e-9 or t > ts[-1] + 1e-9:
            return None
        j = bisect.bisect_left(ts, t)
        if j < len(ts) and abs(ts[j] - t) < 1e-12:
            return series[j][1]
        (t0, v0), (t1, v1) = series[max(j - 1, 0)], series[min(j, len(series) - 1)]
        return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)

    def energy_j(self, idx: int, t0: float, t1: float) -> float | None:
        """Energy of reader ``idx`` over [t0, t1], or None when the samples do not cover the window."""
        series, reader = self.series[idx], self.readers[idx]
        if reader.kind == "energy":
            e0, e1 = self._interp(series, t0), self._interp(series, t1)
            return None if e0 is None or e1 is None else e1 - e0
        p0, p1 = self._interp(series, t0), self._interp(series, t1)
        if p0 is None or p1 is None:
            return None
        pts = [(t0, p0)] + [p for p in series if t0 < p[0] < t1] + [(t1, p1)]
        return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:]))

    def window(self, t0: float, t1: float) -> dict:
        """Average power per reader and in total over [t0, t1]; total is None if any reader lacks data."""
        per, total = {}, 0.0
        for i, r in enumerate(self.readers):
            e = self.energy_j(i, t0, t1) if t1 > t0 else None
            per[r.name] = None if e is None else e / (t1 - t0)
            total = None if (e is None or total is None) else total + e
        return {"seconds": t1 - t0, "energy_j": total,
                "power_w": None if total is None or t1 <= t0 else total / (t1 - t0), "per_sensor_w": per}

    def power_series(self, t_ref: float = 0.0) -> dict[str, list[tuple[float, float]]]:
        """Power over time per reader (energy counters differentiated), time relative to ``t_ref``."""
        out = {}
        for r, series in zip(self.readers, self.series):
            if r.kind == "energy":
                pts = [((a[0] + b[0]) / 2 - t_ref, (b[1] - a[1]) / (b[0] - a[0]))
                       for a, b in zip(series, series[1:]) if b[0] > a[0]]
            else:
                pts = [(t - t_ref, v) for t, v in series]
            out[r.name] = pts
        return out
