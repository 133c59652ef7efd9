"""`edgekit sweep`: every cell runs, steps are cached by content, failures are recorded, results are ranked."""

from __future__ import annotations

import json

import pytest

from edgekit.errors import UserInputError
from edgekit.sweep import SweepCell, SweepResult, pareto, parse_size, ranked, sweep

FAST = ["quantize.calibration.samples=32"]


def _cell(recipe, acc, lat, size=1000, energy=None, state="works", drop=0.0):
    return SweepCell(recipe=recipe, target="onnx", device="local", state=state, accuracy=acc, latency_ms=lat,
                     file_bytes=size, energy_mj=energy, accuracy_drop_pt=drop)


def test_pareto_front_and_ranking_under_constraints():
    cells = [_cell("a", 0.99, 2.0), _cell("b", 0.98, 1.0, drop=0.6), _cell("c", 0.97, 1.5),  # c is dominated by b
             _cell("d", 0.995, 3.0, size=5_000_000), _cell("e", None, None, state="failed")]
    assert [c.recipe for c in pareto(cells, "latency_ms")] == ["b", "a", "d"]
    assert [c.recipe for c in ranked(cells, "latency")] == ["b", "c", "a", "d"]
    assert [c.recipe for c in ranked(cells, "latency", max_drop=0.5)] == ["c", "a", "d"]
    assert [c.recipe for c in ranked(cells, "latency", max_size=parse_size("4MB"))] == ["b", "c", "a"]
    assert ranked(cells, "energy") == []  # nothing measured energy: nothing to rank, not a guess
    with pytest.raises(UserInputError, match="--objective 'speed'"):
        ranked(cells, "speed")


@pytest.mark.parametrize("text, expected", [("4MB", 4_000_000), ("512KB", 512_000), ("2MiB", 2 * 1024**2), ("100", 100)])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1MB", "4XB", "MB", "0"])
def test_parse_size_rejects(text):
    with pytest.raises(UserInputError, match="--max-size"):
        parse_size(text)


def test_bad_grid_is_refused_before_any_work(tmp_path):
    out = tmp_path / "sw"
    with pytest.raises(UserInputError, match="unknown export target 'tflite'"):
        sweep("convnet", "int8", "onnx,tflite", out=out)
    with pytest.raises(UserInputError, match="unknown device 'pi9'"):
        sweep("convnet", "int8", "onnx", "local,pi9", out=out)
    with pytest.raises(UserInputError, match="unknown recipe|not a built-in recipe|no-such-recipe"):
        sweep("convnet", "no-such-recipe", "onnx", out=out)
    with pytest.raises(UserInputError, match="--set 'prune.ratio=0.3': no recipe of the sweep has that stage"):
        sweep("convnet", "int8", "onnx", out=out, overrides=["prune.ratio=0.3"])
    assert not out.exists()


def test_out_that_is_not_a_sweep_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(UserInputError, match="not an edgekit sweep directory"):
        sweep("convnet", "int8", "onnx", out=tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.slow
def test_sweep_runs_caches_extends_and_survives_a_failed_cell(tmp_path):
    out = tmp_path / "sw"
    first = sweep("convnet", "int8,bivit-w1a8", "onnx", out=out, overrides=FAST, profile_budget_s=0.2, workers=2)
    cells = {(c.recipe, c.target): c for c in first.cells}
    ok = cells[("int8", "onnx")]
    assert ok.state == "works" and ok.latency_ms > 0 and ok.file_bytes > 0 and ok.precision == "int8"
    assert ok.accuracy > 0.9 and ok.accuracy_drop_pt is not None and ok.validation
    bad = cells[("bivit-w1a8", "onnx")]  # BiViT needs a ViT: the cell is recorded, the rest went on
    assert bad.state in ("refused", "failed") and bad.error.startswith("compress:")
    assert first.steps_run == {"compress": 2, "export": 1, "profile": 1}

    again = SweepResult.read(out / "sweep.json")
    assert [c.to_dict() for c in again.cells] == [c.to_dict() for c in first.cells]
    assert (out / "pareto-local-latency.png").stat().st_size > 1000

    rerun = sweep("convnet", "int8,bivit-w1a8", "onnx", out=out, overrides=FAST, profile_budget_s=0.2)
    assert rerun.steps_run == {"compress": 0, "export": 0, "profile": 0}  # every step read from the cache
    assert {c.recipe: c.latency_ms for c in rerun.cells} == {c.recipe: c.latency_ms for c in first.cells}

    wider = sweep("convnet", "int8", "onnx,openvino", out=out, overrides=FAST, profile_budget_s=0.2)
    assert wider.steps_run == {"compress": 0, "export": 1, "profile": 1}  # only the new target ran
    assert {c.target: c.state for c in wider.cells} == {"onnx": "works", "openvino": "works"}


@pytest.mark.slow
def test_sweep_on_a_local_ray_instance(tmp_path):
    pytest.importorskip("ray")
    res = sweep("convnet", "int8", "onnx", out=tmp_path / "sw", overrides=FAST, executor="ray", workers=2,
                profile_budget_s=0.2, plots=False)
    (cell,) = res.cells
    assert cell.state == "works" and cell.latency_ms > 0
    assert res.steps_run == {"compress": 1, "export": 1, "profile": 1}


@pytest.mark.slow
def test_sweep_cli_json(tmp_path, cli):
    proc = cli("sweep", "convnet", "--recipes", "int8", "--targets", "onnx", "--out", str(tmp_path / "sw"),
               "--set", FAST[0], "--budget", "0.2", "--max-drop", "0.5", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["cells"][0]["state"] == "works" and [c["recipe"] for c in doc["ranked"]] == ["int8"]
    bad = cli("sweep", "convnet", "--recipes", "int8", "--objective", "speed", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--objective 'speed'" in bad.stderr


def test_profile_threads_key_only_the_profile_steps():
    """--threads changes what a profile measures, so it is in the profile key; compress and export are reused."""
    from edgekit.sweep.grid import build_grid

    base = build_grid("convnet", [["int8"]], ["onnx"], ["local"], data=None, seed=0)
    one = build_grid("convnet", [["int8"]], ["onnx"], ["local"], data=None, seed=0, profile_threads=1)
    assert [s.key for s in base.compress] == [s.key for s in one.compress]
    assert [s.key for s in base.exports] == [s.key for s in one.exports]
    assert base.profiles[0].key != one.profiles[0].key
    with pytest.raises(UserInputError, match="--threads -1"):
        build_grid("convnet", [["int8"]], ["onnx"], ["local"], data=None, seed=0, profile_threads=-1)


def test_profile_step_gives_the_runner_time_to_start(monkeypatch, tmp_path):
    """A sweep's profile waits budget + PROFILE_SLACK_S for the runner (not the interactive 60 s), with its threads."""
    from edgekit.devices import profile as prof
    from edgekit.sweep import steps

    seen = {}

    def fake_profile(art, dev, opts):
        seen["opts"] = opts
        raise RuntimeError("stop here")

    monkeypatch.setattr(prof, "profile", fake_profile)
    monkeypatch.setattr("edgekit.devices.read_artifact", lambda path: path)
    monkeypatch.setattr("edgekit.devices.get_device", lambda name, f: name)
    rec = steps.run_profile(str(tmp_path), "k", "art", "local", None, budget_s=0.5, threads=1)
    assert rec["state"] == "failed" and "stop here" in rec["error"]
    assert seen["opts"].timeout_s == 0.5 + steps.PROFILE_SLACK_S and seen["opts"].threads == 1


def _fake_steps(monkeypatch) -> list[str]:
    """Replace the three step kinds by fakes that record their kind and cache a result (run in-process: workers=1)."""
    from pathlib import Path

    from edgekit.sweep import steps

    calls: list[str] = []

    def fake(kind, extra):
        def run(cache, key, *args):
            calls.append(kind)
            return steps._finish(steps.step_dir(Path(cache), kind, key), {"kind": kind, "key": key, "state": "works", **extra})
        return run

    monkeypatch.setattr(steps, "run_compress", fake("compress", {"out": "o", "accuracy_before": 0.99, "accuracy_after": 0.98}))
    monkeypatch.setattr(steps, "run_export", fake("export", {"precision": "int8", "file_bytes": 10}))
    monkeypatch.setattr(steps, "run_profile", fake("profile", {"latency_ms": 0.5}))
    return calls


def test_no_profile_builds_only_and_a_later_pass_profiles_from_the_cache(monkeypatch, tmp_path):
    """--no-profile: compress and export (cached), cells `not profiled`; a later pass (here with --threads 1, as
    on a quiet machine) runs only the profiles."""
    calls = _fake_steps(monkeypatch)
    out = tmp_path / "sw"
    built = sweep("convnet", "int8,prune-30", "onnx,openvino", out=out, workers=1, profile=False, plots=False)
    assert calls == ["compress"] * 2 + ["export"] * 4
    assert {c.state for c in built.cells} == {"not profiled"} and all(c.latency_ms is None for c in built.cells)
    assert built.steps_run == {"compress": 2, "export": 4, "profile": 0} and ranked(built.cells, "latency") == []
    assert built.cells[0].accuracy == 0.98 and built.cells[0].file_bytes == 10
    calls.clear()
    timed = sweep("convnet", "int8,prune-30", "onnx,openvino", out=out, workers=1, profile_threads=1, plots=False)
    assert calls == ["profile"] * 4
    assert timed.steps_cached == {"compress": 2, "export": 4, "profile": 0}
    assert {(c.state, c.latency_ms) for c in timed.cells} == {("works", 0.5)}


def test_cli_no_profile(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from edgekit.cli.main import app

    calls = _fake_steps(monkeypatch)
    res = CliRunner().invoke(app, ["sweep", "convnet", "--recipes", "int8", "--targets", "onnx", "--workers", "1",
                                   "--out", str(tmp_path / "sw"), "--no-profile", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert calls == ["compress", "export"] and doc["cells"][0]["state"] == "not profiled" and doc["ranked"] == []
