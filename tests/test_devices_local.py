"""Local profiling (ONNX and OpenVINO artifacts), the artifact contract, the devices file, the CLI and the
runner's statistics."""

from __future__ import annotations

import json
import math
import random
import sys

import pytest
from typer.testing import CliRunner

from edgekit.devices import read_artifact
from edgekit.devices.artifact import ChecksumError, verify_files
from edgekit.devices.profile import ProfileOptions, check_device, profile
from edgekit.devices.record import Profile
from edgekit.devices.remote.runner import median_ci, percentile, summarize
from edgekit.devices.spec import LocalDevice, add_device, get_device, load_devices
from tests.device_artifacts import make_onnx_artifact, make_openvino_artifact
from edgekit.errors import UserInputError

FAST = dict(budget_s=0.5, warmup_s=0.05, warmup_runs=3, idle_s=0.0, min_runs=20)


@pytest.fixture(scope="module")
def onnx_art(tmp_path_factory):
    return make_onnx_artifact(tmp_path_factory.mktemp("art") / "onnx")


def test_profile_onnx_and_openvino_locally(onnx_art, tmp_path):
    for path, runtime in ((onnx_art, "onnxruntime"), (make_openvino_artifact(onnx_art, tmp_path / "ov"), "openvino")):
        r = profile(read_artifact(path), LocalDevice(name="local"), ProfileOptions(**FAST, threads=1))
        assert r.status == "ok" and r.runtime.name == runtime and r.runtime.version
        assert r.samples.n >= 20 and r.samples.stop_reason in ("converged", "time_budget")
        assert r.latency_ms.min <= r.latency_ms.median <= r.latency_ms.max
        assert r.throughput_ips == pytest.approx(1000 / r.latency_ms.median)
        # fp32 on both runtimes; OpenVINO's CPU kernels accumulate in another order: 1e-3 absolute on logits
        assert r.validation.status == "passed" and r.validation.max_abs < 1e-3


def test_emulated_latency_is_labelled_wherever_it_is_shown(onnx_art, tmp_path):
    import dataclasses

    from rich.console import Console

    from edgekit.devices.output import render_table, write_plots

    native = profile(read_artifact(onnx_art), LocalDevice(name="local"), ProfileOptions(**FAST))
    assert native.latency_kind == "native" and native.emulation is None and not native.emulated
    emu = dataclasses.replace(native, latency_kind="emulated", emulation={"emulated": True, "qemu": "qemu 7.2"})
    console = Console(record=True, width=200)
    console.print(render_table({"local": native, "board": emu}))
    text = console.export_text()
    median_row = next(line for line in text.splitlines() if "latency median ms" in line)
    assert median_row.count("emulated") == 1  # the board's cell, not the native one
    assert "not comparable" in text
    assert Profile.from_json(emu.to_json()).latency_kind == "emulated"
    write_plots(emu, tmp_path)
    assert (tmp_path / "latency_hist.png").stat().st_size > 1000


def test_architecture_of_a_compiled_artifact_is_checked_before_the_push(tmp_path):
    from edgekit.devices.artifact import ArchitectureMismatch, Artifact, check_architecture

    lib = tmp_path / "model.so"
    header = bytearray(64)
    header[:4], header[4], header[5], header[18:20] = b"\x7fELF", 2, 1, (62).to_bytes(2, "little")  # x86_64
    lib.write_bytes(bytes(header))
    art = Artifact(root=tmp_path, target="tvm", model_file="model.so", files={})
    assert art.machine_code_arch() == "x86_64"
    check_architecture(art, "x86_64", "here")
    with pytest.raises(ArchitectureMismatch, match="x86_64 machine code but device pi is aarch64; refused before"):
        check_architecture(art, "arm64", "pi")  # macOS / Android spellings are normalized
    (tmp_path / "model.onnx").write_bytes(b"\x08\x07")  # portable: any architecture
    check_architecture(Artifact(root=tmp_path, target="onnx", model_file="model.onnx", files={}), "aarch64", "pi")


def test_runner_archive_is_deterministic_and_runs(tmp_path):
    import subprocess

    from edgekit.devices.remote import archive

    first = archive._archive_bytes()
    assert first == archive._archive_bytes()
    out = subprocess.run([sys.executable, str(archive.runner_archive()), "info"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and '"event": "info"' in out.stdout


def test_no_power_sensor_is_said_plainly(onnx_art, tmp_path):
    # an empty sysfs tree: nothing to read, so no power figure at all (never an estimate)
    dev = LocalDevice(name="local", sysfs_root=str(tmp_path))
    r = profile(read_artifact(onnx_art), dev, ProfileOptions(**FAST))
    assert r.power_status == "no power sensor"
    assert r.power_w is None and r.energy_mj_per_inference is None and r.inferences_per_joule is None
    assert check_device(dev)["power_status"] == "no power sensor"


def test_energy_with_an_external_meter(onnx_art, tmp_path):
    # an external meter that reports a constant 7.5 W: average power and energy/inference follow from it
    dev = LocalDevice(name="local", power_command=[sys.executable, "-c", "print(7.5)"])
    r = profile(read_artifact(onnx_art), dev, ProfileOptions(**{**FAST, "idle_s": 0.2}))
    assert r.power_status == "measured"
    assert r.power_w.total == pytest.approx(7.5) and r.power_w.above_idle == pytest.approx(0.0)
    secs_per_inf = r.energy_mj_per_inference.total / 7.5 / 1000  # mJ -> J -> s
    assert 0 < secs_per_inf < 1.0
    assert r.inferences_per_joule.total == pytest.approx(1000 / r.energy_mj_per_inference.total)
    assert r.power_trace["external"]


def test_batch_and_wrong_runtime(onnx_art):
    art = read_artifact(onnx_art)
    r = profile(art, LocalDevice(name="local"), ProfileOptions(**FAST, batch=4, validate=False))
    assert r.batch == 4 and r.input_shape[0] == 4
    assert r.throughput_ips == pytest.approx(4000 / r.latency_ms.median)
    from edgekit.devices.transports.base import RunnerFailed

    with pytest.raises(RunnerFailed, match="tensorrt"):
        profile(art, LocalDevice(name="local"), ProfileOptions(**FAST, runtime="tensorrt"))
    with pytest.raises(UserInputError, match="lists runtimes"):
        profile(art, LocalDevice(name="local", runtimes=["openvino"]), ProfileOptions(**FAST))


def test_artifact_contract_errors(onnx_art, tmp_path):
    art = read_artifact(onnx_art)
    verify_files(art)
    assert art.has_reference and art.input_shape == [1, 3, 16, 16]
    bad = tmp_path / "bad"
    make_onnx_artifact(bad)
    (bad / "model.onnx").write_bytes(b"not the model")
    with pytest.raises(ChecksumError, match="model.onnx"):
        verify_files(read_artifact(bad))
    manifest = json.loads((bad / "manifest.json").read_text())
    del manifest["input_shape"]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="input_shape"):
        read_artifact(bad)
    manifest["input_shape"] = [1, 3, 16, 16]
    manifest["files"]["../escape"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="inside the artifact"):
        read_artifact(bad)
    (tmp_path / "model.tflite").write_bytes(b"x")
    with pytest.raises(UserInputError, match=".onnx or .xml"):
        read_artifact(tmp_path / "model.tflite")
    bare = read_artifact(onnx_art / "model.onnx")
    assert bare.bare and not bare.has_reference


def test_devices_file_validation(tmp_path):
    f = tmp_path / "devices.yaml"
    f.write_text("devices:\n  - name: pi\n    transport: ssh\n    host: 10.0.0.2\n    user: pi\n    prot: 22\n")
    with pytest.raises(UserInputError, match="prot"):
        load_devices(f)
    f.write_text("devices:\n  - name: pi\n    transport: telnet\n")
    with pytest.raises(UserInputError, match="transport must be one of adb, local, ssh"):  # the registered ones
        load_devices(f)
    f.write_text("devices:\n  - name: pi\n    transport: local\n    power: magic\n")
    with pytest.raises(UserInputError, match="unknown power sensor 'magic'; accepted: auto, none, .*ina3221"):
        load_devices(f)
    f.write_text("devices:\n  - name: pi\n    transport: ssh\n    host: h\n    user: u\n    runtimes: [tflite]\n")
    with pytest.raises(UserInputError, match="tflite"):
        load_devices(f)
    f.unlink()
    add_device({"name": "pi", "transport": "ssh", "host": "10.0.0.2", "user": "pi", "tags": ["arm"]}, f)
    add_device({"name": "phone", "transport": "adb", "serial": "R58"}, f)
    with pytest.raises(UserInputError, match="already exists"):
        add_device({"name": "pi", "transport": "ssh", "host": "h", "user": "u"}, f)
    devs = load_devices(f)
    assert set(devs) == {"local", "pi", "phone"} and devs["pi"].port == 22 and devs["pi"].tags == ["arm"]
    with pytest.raises(UserInputError, match="unknown device 'nope'"):
        get_device("nope", f)
    with pytest.raises(UserInputError, match="does not exist"):
        load_devices(tmp_path / "missing.yaml")


def test_statistics():
    rng = random.Random(0)
    vals = sorted(rng.gauss(10, 1) for _ in range(1001))
    assert percentile(vals, 50) == vals[500]
    assert percentile([1.0, 2.0], 50) == 1.5
    lo, hi = median_ci(vals)
    assert lo < vals[500] < hi
    # ~95% coverage of the true median (10) over repeated draws: an honest CI, not a decoration
    covered = 0
    for _ in range(300):
        s = sorted(rng.gauss(10, 1) for _ in range(101))
        a, b = median_ci(s)
        covered += a <= 10 <= b
    assert 0.90 <= covered / 300 <= 0.99
    s = summarize([2.0, 1.0, 3.0], batch=2)
    assert s["latency_ms"]["median"] == 2.0 and s["throughput_ips"] == 1000.0 and math.isnan(s["median_ci95_ms"][0])


def test_cli_devices_and_profile(onnx_art, tmp_path, monkeypatch):
    from edgekit.cli.main import app

    monkeypatch.setenv("EDGEKIT_DEVICES", str(tmp_path / "devices.yaml"))
    runner = CliRunner()
    res = runner.invoke(app, ["devices", "check", "local"])
    assert res.exit_code == 0 and "runtime onnxruntime" in res.output
    res = runner.invoke(app, ["devices", "add", "pi", "--transport", "ssh", "--host", "10.0.0.9", "--user", "pi"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["devices", "list", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["pi"]["host"] == "10.0.0.9"
    res = runner.invoke(app, ["devices", "add", "x", "--transport", "ssh", "--host", "h"])
    assert res.exit_code == 2 and "user" in res.output
    out = tmp_path / "prof"
    res = runner.invoke(app, ["profile", str(onnx_art), "--budget", "0.3", "--warmup", "0.05", "--idle", "0",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads((out / "profile.json").read_text())
    assert data["status"] == "ok" and data["latency_ms"]["median"] > 0 and data["latency_kind"] == "native"
    back = Profile.read(out / "profile.json")  # the typed record reads back what it wrote
    assert back.latency_ms.median == data["latency_ms"]["median"] and back.validation.status == "passed"
    assert back.to_dict() == data
    assert (out / "latency_hist.png").stat().st_size > 1000
    res = runner.invoke(app, ["profile", str(onnx_art), "--budget", "0.3", "--out", str(out)])
    assert res.exit_code == 2 and "exists" in res.output
    res = runner.invoke(app, ["profile", str(onnx_art), "--device", "nope"])
    assert res.exit_code == 2 and "unknown device" in res.output


def test_adb_device_unreachable_is_reported(onnx_art, monkeypatch):
    from edgekit.devices.spec import ADBDevice
    from edgekit.devices.transports.base import BoardUnreachable

    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", "1")  # nothing listens there: no adb server, no device
    with pytest.raises(BoardUnreachable, match="adb serial NOPE"):
        check_device(ADBDevice(name="phone", transport="adb", serial="NOPE"))
