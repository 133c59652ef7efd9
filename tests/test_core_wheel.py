"""The wheel carries every sub-package and the recipes: install it in a scratch dir, run from elsewhere."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile

from tests.conftest import ROOT


def test_wheel_contains_stage_packages_and_recipes(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True,
    )
    assert r.returncode == 0, r.stderr
    wheel = next(tmp_path.glob("edgekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for expected in ("edgekit/prune/__init__.py", "edgekit/quant/__init__.py", "edgekit/exporters/__init__.py",
                     "edgekit/devices/__init__.py", "edgekit/recipes/deploy.yaml", "edgekit/models/checkpoints/convnet.pt"):
        assert expected in names, expected
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    # -S: no site processing, so the editable install of this checkout is invisible; deps come from this venv.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), sysconfig.get_paths()["purelib"]])}
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = subprocess.run([sys.executable, "-S", "-m", "edgekit", "recipes", "list", "--json"], cwd=work, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "deploy" in {x["name"] for x in json.loads(r.stdout)}
    r = subprocess.run([sys.executable, "-S", "-c", "import edgekit.recipe as m; print(m.__file__)"], cwd=work, env=env,
                       capture_output=True, text=True)
    assert str(target) in r.stdout
