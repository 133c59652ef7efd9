"""The CLI end to end, in subprocesses: compress, inspect, recipes, zoo; exit codes; --json; --force."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT


HEAVY = ("torch", "onnx", "onnxruntime", "openvino", "tvm", "coremltools", "paramiko", "ray", "matplotlib", "numpy")


def test_help_is_fast_and_imports_no_backend():
    """`edgekit --help` stays fast by construction: rendering it imports no backend (no wall clock to race)."""
    code = (
        "import sys\n"
        "sys.argv = ['edgekit', '--help']\n"
        "from edgekit.cli.main import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert e.code in (0, None), e.code\n"
        f"print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "compress" in r.stdout and "sweep" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "HEAVY []", r.stdout[-500:]


def test_every_command_has_help_with_example(cli):
    for cmd in (["compress"], ["inspect"], ["recipes"], ["recipes", "show"], ["zoo"], ["zoo", "train"], ["export"], ["profile"], ["sweep"]):
        r = cli(*cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Example" in r.stdout, cmd


def test_compress_default_model_end_to_end(tmp_path, cli):
    out = tmp_path / "out"
    r = cli("compress", "--recipe", "deploy", "--out", str(out), "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["model"] == "convnet" and report["recipe"] == "deploy"
    for key in ("params", "size_bytes", "macs", "accuracy", "latency_ms"):
        assert set(report[key]) == {"before", "after"}, key
    assert report["accuracy"]["before"] > 0.9
    assert abs(report["accuracy"]["after"] - report["accuracy"]["before"]) < 1e-9  # folding is exact
    assert report["latency_ms"]["after"]["runs"] >= 50 and report["latency_ms"]["after"]["p90"] >= report["latency_ms"]["after"]["median"]
    assert report["fidelity"]["cosine"] > 0.99999
    assert report["params"]["after"] < report["params"]["before"]  # BN parameters folded away
    assert [s["name"] for s in report["stages"]] == ["fuse"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model.pt2", "report.json", "layers.json"}
    assert manifest["recipe"]["stages"][0]["fuse"]["mode"] == "deploy"
    assert json.loads((out / "report.json").read_text())["accuracy"] == report["accuracy"]

    # the output directory is a MODEL for inspect (and export)
    r = cli("inspect", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params"] == report["params"]["after"] and info["macs"] == report["macs"]["after"]
    assert any(row["macs"] > 0 for row in info["layers"])

    # an altered output file is refused (its sha256 no longer matches the manifest)
    (out / "layers.json").write_text((out / "layers.json").read_text() + " ")
    r = cli("inspect", str(out))
    assert r.returncode == 2 and "layers.json" in r.stderr and "sha256" in r.stderr
    (out / "layers.json").write_text((out / "layers.json").read_text()[:-1])

    # existing output refused without --force (exit 2), accepted with it
    r = cli("compress", "--recipe", "deploy", "--out", str(out), "--no-latency")
    assert r.returncode == 2 and "--force" in r.stderr
    r = cli("compress", "--recipe", "deploy", "--out", str(out), "--no-latency", "--force")
    assert r.returncode == 0, r.stderr


def test_compress_module_factory_model(tmp_path, cli):
    out = tmp_path / "o"
    r = cli("compress", "tests.core_models:small_net", "--recipe", "deploy", "--out", str(out), "--no-latency", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["model"] == "small_net" and rep["stages"][0]["report"]["folded"]


def test_compress_bad_inputs_exit_2(tmp_path, cli):
    r = cli("compress", "no-such-model", "--recipe", "deploy", "--out", str(tmp_path / "a"))
    assert r.returncode == 2 and "zoo models" in r.stderr
    r = cli("compress", "--recipe", "deploy", "--data", "random:3x8", "--out", str(tmp_path / "b"))
    assert r.returncode == 2 and "CxHxW" in r.stderr
    r = cli("compress", "--recipe", "deploy", "--data", "random:3x16x16", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "(3, 32, 32)" in r.stderr  # shape does not fit the zoo model
    r = cli("compress", "--recipe", "deploy", "--set", "fuse.nope=1", "--out", str(tmp_path / "d"))
    assert r.returncode == 2 and "nope" in r.stderr
    assert not any(tmp_path.iterdir())


def test_recipes_and_zoo_listing(cli):
    r = cli("recipes", "list", "--json")
    assert r.returncode == 0 and "deploy" in {x["name"] for x in json.loads(r.stdout)}
    r = cli("recipes", "show", "deploy", "--json")
    assert json.loads(r.stdout)["stages"][0]["fuse"]["mode"] == "deploy"
    r = cli("zoo", "list", "--json")
    rows = {x["name"]: x for x in json.loads(r.stdout)}
    assert rows["convnet"]["checkpoint"] is True


def test_int8_compress_then_export_defaults_to_int8(tmp_path, cli):
    out = tmp_path / "q"
    r = cli("compress", "--recipe", "int8", "--out", str(out), "--no-latency", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["size_bytes"]["after"] < 0.3 * rep["size_bytes"]["before"]  # int8 weights
    assert rep["accuracy"]["after"] >= rep["accuracy"]["before"] - 0.005
    r = cli("export", str(out), "--target", "onnx", "--out", str(tmp_path / "onnx"), "--json")
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert exported["manifest"]["precision"] == "int8" and exported["validation"]["passed"]
