"""The emulated board farm: Debian arm64 boards under qemu-user behind SSH, each in its own network namespace.

Needs root, binfmt_misc with qemu-aarch64, mmdebstrap, overlayfs and sshd, and the cached root file system
(`.ci/run` builds it before the tests: `edgekit devices emulate --build-only`); skipped with the reason
otherwise. Boards are named per xdist worker, so two workers never share one.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch
from torch import nn

from edgekit.devices import read_artifact
from edgekit.devices.artifact import ArchitectureMismatch
from edgekit.devices.farm.host import unavailable_reason
from edgekit.devices.profile import ProfileOptions, check_device, profile, profile_many
from edgekit.devices.record import Profile
from edgekit.devices.spec import get_device
from tests.device_artifacts import make_onnx_artifact

REASON = unavailable_reason("aarch64", need_rootfs=True)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("farm"),  # one worker builds the boards once
              pytest.mark.skipif(REASON is not None, reason=f"emulated boards unavailable: {REASON}")]
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw")
RUN = dict(warmup_s=0.2, warmup_runs=2, min_runs=10, threads=1, target_rel_ci=0.0, timeout_s=400.0)
TOL = 0.05  # energy per inference vs the power model's ground truth


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4)).eval()


@pytest.fixture(scope="module")
def farm(tmp_path_factory):
    from typer.testing import CliRunner

    from edgekit.cli.main import app
    from edgekit.devices.farm.board import load_state, start_board, stop_board

    d = tmp_path_factory.mktemp("farm")
    devices = d / "devices.yaml"
    a, b = f"ekt-{WORKER}-a", f"ekt-{WORKER}-b"
    try:
        res = CliRunner().invoke(app, ["devices", "emulate", a, "--arch", "aarch64", "--devices", str(devices),
                                       "--force"])
        assert res.exit_code == 0, res.output
        start_board(b, "aarch64", devices, force=True, log=lambda _: None)
        yield {"devices": devices, "a": get_device(a, devices), "b": get_device(b, devices),
               "state": {n: load_state(n) for n in (a, b)}, "dir": d}
    finally:
        for name in (a, b):
            stop_board(name, devices, quiet=True)


@pytest.fixture(scope="module")
def artifacts(farm):
    from edgekit.exporters import export

    d = farm["dir"]
    onnx = read_artifact(make_onnx_artifact(d / "onnx", shape=(3, 16, 16), width=8, classes=4))
    x = torch.randn(1, 3, 16, 16)
    export(_tiny_model(), "tvm", "fp32", out=d / "tvm-arm", example_inputs=x, validation_samples=4,
           device="aarch64", llvm_opt_level=1)
    export(_tiny_model(), "tvm", "fp32", out=d / "tvm-host", example_inputs=x, validation_samples=4,
           device="host", llvm_opt_level=1)
    return {"onnx": onnx, "tvm": read_artifact(d / "tvm-arm"), "tvm_host": read_artifact(d / "tvm-host")}


def test_board_is_an_emulated_aarch64_board_with_its_runtimes_and_sensor(farm):
    info = check_device(farm["a"])
    assert info["arch"] == "aarch64" and info["python"].startswith("3.")
    assert info["emulation"]["emulated"] is True and "qemu" in info["emulation"]["qemu"].lower()
    assert info["runtimes"]["onnxruntime"]["available"] and info["runtimes"]["tvm"]["available"]
    assert not info["runtimes"]["openvino"]["available"]  # no aarch64 wheel of the host's version
    (sensor,) = info["power_sensors"]
    assert sensor["name"] == "ina3221" and sensor["rails"] == ["VDD_IN"]
    watts = float(sensor["reading"].split()[0])
    assert 1.9 <= watts <= 2.0 + 1.5 * (os.cpu_count() or 1)  # idle 2 W plus what the board does


def test_host_key_is_pinned(farm, tmp_path):
    from edgekit.devices.transports.base import HostKeyError

    other = tmp_path / "known_hosts"
    other.write_text(f"{farm['a'].host} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYP0CgHWXoH9Cy02t1c5gmnwmZd1CzzwK9T6L9AsnwW\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        check_device(farm["a"].model_copy(update={"known_hosts": str(other)}))


def _truth_mj_per_inference(farm, r: Profile) -> tuple[float, float]:
    """(total, above idle) mJ per inference of a profile by the power model's ground truth (its CPU trace)."""
    from edgekit.devices.farm.power import PowerModel, ground_truth

    st = farm["state"][r.device.name]
    model = PowerModel(**st.power_model)
    idle = ground_truth(st.trace, *r.power_windows.idle, model)
    run = ground_truth(st.trace, *r.power_windows.run, model)
    n = r.samples.n * r.batch
    return run["energy_j"] / n * 1000.0, (run["power_w"] - idle["power_w"]) * run["seconds"] / n * 1000.0


def test_onnx_and_tvm_profiled_on_two_boards_concurrently(farm, artifacts):
    opts = ProfileOptions(budget_s=2.0, idle_s=1.0, **RUN)
    for kind in ("onnx", "tvm"):
        t0 = time.monotonic()
        results = profile_many(artifacts[kind], [farm["a"], farm["b"]], opts)
        wall = time.monotonic() - t0
        ra, rb = results[farm["a"].name], results[farm["b"].name]
        for r in (ra, rb):
            assert isinstance(r, Profile), r
            assert r.status == "ok", r.error
            assert r.device.info["arch"] == "aarch64"
            assert r.latency_kind == "emulated" and r.emulation["emulated"] is True
            assert r.runtime.name == ("onnxruntime" if kind == "onnx" else "tvm")
            assert r.validation.status == "passed", r.validation
            assert r.validation.n >= 4 and r.samples.n >= 10
            # energy per inference on each board against its own power model's ground truth; the part above idle
            # from 1-2 s windows is noisier (the 5% check of it has longer windows, in the energy test below)
            truth_total, truth_above = _truth_mj_per_inference(farm, r)
            got = r.energy_mj_per_inference
            assert abs(got.total - truth_total) <= TOL * truth_total, (kind, got, truth_total)
            assert abs(got.above_idle - truth_above) <= 0.25 * truth_above, (kind, got, truth_above)
        # concurrently: both profiles together took less than one after the other would have
        assert wall < 0.85 * (ra.seconds + rb.seconds), (wall, ra.seconds, rb.seconds)


def test_wrong_architecture_is_refused_before_the_push(farm, artifacts):
    art = artifacts["tvm_host"]
    with pytest.raises(ArchitectureMismatch, match="x86_64 machine code but device .* is aarch64; refused before"):
        profile(art, farm["a"], ProfileOptions(budget_s=0.5, idle_s=0.0, **RUN))
    pushed = farm["state"][farm["a"].name].root / "root" / ".cache" / "edgekit" / "artifacts" / art.digest[:32]
    assert not pushed.exists()


def test_a_board_killed_mid_run_keeps_the_other_results_and_its_partial_samples(farm, artifacts):
    from typer.testing import CliRunner

    from edgekit.cli.main import app
    from edgekit.devices.farm.board import kill_board, start_board, stop_board
    from edgekit.devices.spec import load_devices

    c = f"ekt-{WORKER}-c"
    start_board(c, "aarch64", farm["devices"], force=True, log=lambda _: None)
    stopped = False
    try:
        spec_c = get_device(c, farm["devices"])
        chunks: dict[str, int] = {}
        killed = threading.Event()

        def on_event(device: str, ev: dict) -> None:
            if ev.get("event") == "samples":
                chunks[device] = chunks.get(device, 0) + 1
                if device == c and chunks[device] == 3 and not killed.is_set():
                    killed.set()
                    threading.Thread(target=kill_board, args=(c,)).start()

        opts = ProfileOptions(budget_s=4.0, idle_s=0.0, chunk_s=0.2, **RUN)
        results = profile_many(artifacts["onnx"], [farm["a"], spec_c], opts, on_event=on_event)
        assert killed.is_set()
        ok, dead = results[farm["a"].name], results[c]
        assert ok.status == "ok" and ok.validation.status == "passed"
        assert dead.status == "partial" and dead.samples.n >= 3
        assert "connection lost" in dead.error and dead.latency_ms.median > 0
        res = CliRunner().invoke(app, ["devices", "emulate", c, "--stop", "--devices", str(farm["devices"])])
        assert res.exit_code == 0, res.output
        stopped = True
        assert c not in load_devices(farm["devices"]) and farm["a"].name in load_devices(farm["devices"])
    finally:
        if not stopped:
            stop_board(c, farm["devices"], quiet=True)


def _sampled_vs_truth(farm, spec, load: tuple[float, float] | None, window: tuple[float, float]):
    """Sample the board's sensor over ``window`` (start, end; seconds from now) while a busy loop runs on the
    board over ``load`` (start, end); return the sampler's figures and the model's truth over the window."""
    from edgekit.devices.farm.power import PowerModel, ground_truth
    from edgekit.devices.power import PowerSampler, discover
    from edgekit.devices.transports.ssh import SSHTransport

    st = farm["state"][spec.name]
    busy = "import sys, time\nt = time.time()\nwhile time.time() - t < float(sys.argv[1]):\n    pass\n"
    with SSHTransport(spec, timeout_s=120) as tr:
        readers = discover(tr.power_fs(), "ina3221", local=False)
        sampler = PowerSampler(readers, 0.05).start()
        base = time.monotonic()
        worker = None
        if load:
            worker = threading.Thread(target=tr.exec, args=(["python3", "-S", "-c", busy, str(load[1] - load[0])],),
                                      kwargs={"timeout_s": 120})
            time.sleep(max(0.0, base + load[0] - time.monotonic()))
            worker.start()
        time.sleep(max(0.0, base + window[1] - time.monotonic()))
        if worker:
            worker.join()
        sampler.stop()
        sampler.close()
    t0, t1 = base + window[0], base + window[1]
    return sampler.window(t0, t1), ground_truth(st.trace, t0, t1, PowerModel(**st.power_model))


# (load start, load end), (window start, window end), seconds; python3 takes ~1-3 s to start under qemu
CASES = {"idle only": (None, (0.0, 4.0)), "busy only": ((0.0, 9.0), (4.0, 8.0)), "phase change": ((1.0, 9.0), (0.0, 6.0))}


@pytest.mark.parametrize("case", list(CASES))
def test_sensor_path_matches_the_power_model(farm, case):
    name = farm["a"].name
    got, truth = _sampled_vs_truth(farm, farm["a"], *CASES[case])
    idle_w = farm["state"][name].power_model["idle_w"]
    assert abs(got["power_w"] - truth["power_w"]) <= TOL * truth["power_w"], (case, got, truth)
    above_got, above_truth = got["power_w"] - idle_w, truth["power_w"] - idle_w
    if case == "idle only":
        assert abs(above_got - above_truth) < 0.05 and truth["cpu_s"] < 0.5, (got, truth)
    else:  # the part the board's activity adds, which the idle subtraction keeps
        assert abs(above_got - above_truth) <= TOL * above_truth, (case, got, truth)
        assert truth["cpu_s"] > 0.25, truth  # the busy loop ran (its CPU share depends on the host's load)


def test_energy_per_inference_matches_the_ground_truth(farm, artifacts):
    from edgekit.devices.farm.power import PowerModel, ground_truth

    spec = farm["a"]
    st = farm["state"][spec.name]
    r = profile(artifacts["onnx"], spec, ProfileOptions(budget_s=5.0, idle_s=2.0, **RUN))
    assert r.status == "ok" and r.power_status == "measured", r.power_status
    assert [s["name"] for s in r.power_sensors] == ["ina3221"]
    truth_total, truth_above = _truth_mj_per_inference(farm, r)
    run = ground_truth(st.trace, *r.power_windows.run, PowerModel(**st.power_model))
    got = r.energy_mj_per_inference
    assert abs(got.total - truth_total) <= TOL * truth_total, (got, truth_total)
    assert abs(got.above_idle - truth_above) <= TOL * truth_above, (got, truth_above)
    assert run["cpu_s"] > 0.25, run  # the board was busy inferring (its CPU share depends on the host's load)
