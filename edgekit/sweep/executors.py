"""Executors run a sweep's steps: a local process pool (default) or a Ray cluster.

The sweep runs in three phases (compress, export, profile). Compress and export steps are independent and
run in parallel (one torch thread each). Profile steps never overlap on one device, so latency stays clean:
the local executor runs each device's profiles one after another (devices side by side) once every build
step has finished; on Ray each device is a custom resource (``device:NAME``, one unit) held by the worker
that can reach the board, so a device's profiles run only there and one at a time.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from typing import Any, Callable, Sequence

from edgekit.errors import MissingDependencyError, UserInputError
from edgekit.registry import Registry

Call = tuple[Callable[..., dict[str, Any]], tuple[Any, ...]]


class LocalExecutor:
    """Build steps in a process pool sized to the cores; profiles per device, in order, after the builds."""

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if address:
            raise UserInputError("--address is for --executor ray; the local executor runs on this machine")
        self.workers = max(1, workers or (os.cpu_count() or 1))

    def map(self, calls: Sequence[Call]) -> list[dict[str, Any]]:
        if not calls:
            return []
        if self.workers == 1 or len(calls) == 1:
            return [fn(*args) for fn, args in calls]
        import multiprocessing

        with ProcessPoolExecutor(max_workers=min(self.workers, len(calls)), mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(fn, *args) for fn, args in calls]
            return [f.result() for f in futures]

    def map_per_device(self, calls: dict[str, Sequence[Call]]) -> dict[str, list[dict[str, Any]]]:
        def run_device(device_calls: Sequence[Call]) -> list[dict[str, Any]]:
            return [fn(*args) for fn, args in device_calls]

        with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
            futures = {d: pool.submit(run_device, c) for d, c in calls.items()}
            return {d: f.result() for d, f in futures.items()}

    def close(self) -> None:
        pass


class RayExecutor:
    """The same phases as Ray tasks; devices are Ray resources ``device:NAME`` (one unit each)."""

    def __init__(self, workers: int | None = None, address: str | None = None, devices: Sequence[str] = ()) -> None:
        try:
            import ray
        except ImportError:
            raise MissingDependencyError("--executor ray needs Ray: pip install 'edgekit[sweep]'") from None
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, log_to_driver=False)
            else:  # a local instance that holds every named device (this machine reaches them all)
                ray.init(num_cpus=workers or os.cpu_count() or 1, resources={f"device:{d}": 1 for d in devices},
                         include_dashboard=False, log_to_driver=False)
            self.started = True

    def map(self, calls: Sequence[Call]) -> list[dict[str, Any]]:
        remote = {}
        refs = []
        for fn, args in calls:
            task = remote.setdefault(fn, self.ray.remote(num_cpus=1)(fn))
            refs.append(task.remote(*args))
        return self.ray.get(refs)

    def map_per_device(self, calls: dict[str, Sequence[Call]]) -> dict[str, list[dict[str, Any]]]:
        refs = {}
        for device, device_calls in calls.items():
            refs[device] = []
            for fn, args in device_calls:
                task = self.ray.remote(num_cpus=1, resources={f"device:{device}": 1})(fn)
                refs[device].append(task.remote(*args))
        return {d: self.ray.get(r) for d, r in refs.items()}

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()


EXECUTORS: Registry[Callable[..., Any]] = Registry("sweep executor")
EXECUTORS.add("local", LocalExecutor)
EXECUTORS.add("ray", RayExecutor)


def make_executor(name: str, workers: int | None, address: str | None, devices: Sequence[str]):
    cls = EXECUTORS.get(name)
    return cls(workers, address, devices) if cls is RayExecutor else cls(workers, address)
