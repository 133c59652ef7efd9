"""The docs cannot drift: docs/recipes.md is generated and checked, and every ```bash block of README.md and
docs/getting-started.md is executed (in order, in one fresh working folder per file) and must exit 0.

Fast mode, so that the run stays in minutes: a shell function in front of ``edgekit`` adds
``--set measure.latency_runs=3 ...`` (and fewer calibration samples / no QAT epochs for the int8 / I-ViT
recipes) to every ``compress``, and a short ``--budget`` to every ``profile``. ``make demo`` runs the demo's own
command (from ``make -n demo``) in that folder; ``make install`` / ``make test`` are dry-run (``make -n``): the
suite runs inside the installed venv and cannot run itself. The SSH board of getting-started is a loopback sshd.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit import docgen
from tests.conftest import ROOT
from tests.test_devices_ssh import sshd  # noqa: F401 - the loopback sshd fixture for the SSH profile block

BLOCK = re.compile(r"^```(bash|sh)\n(.*?)^```", re.S | re.M)

FAST_SHELL = r"""
set -euo pipefail
edgekit() {
  if [ "${1:-}" = compress ]; then
    local extra=(--set measure.latency_runs=3 --set measure.latency_warmup=0 --set measure.fidelity_samples=16)
    case " $* " in *" ivit-int8 "*) extra+=(--set ivit.epochs=0);; esac
    case " $* " in *" int8 "*|*int8.yaml*) extra+=(--set quantize.calibration.samples=32);; esac
    command edgekit "$@" "${extra[@]}"
  elif [ "${1:-}" = profile ]; then
    command edgekit "$@" --budget 0.3 --warmup 0 --idle 0 --no-plots
  else
    command edgekit "$@"
  fi
}
make() {
  if [ "${1:-}" = demo ]; then
    local cmd
    cmd="$(command make -s -n -C "$EDGEKIT_ROOT" demo | grep '/edgekit ' | sed 's#^.*/edgekit #edgekit #')"
    [ -n "$cmd" ] || { echo "make -n demo printed no edgekit command" >&2; return 1; }
    eval "$cmd"
  else
    command make -s -n -C "$EDGEKIT_ROOT" "$@" > /dev/null
  fi
}
"""


def command_blocks(path: Path) -> list[str]:
    return [m.group(2) for m in BLOCK.finditer(path.read_text())]


def run_blocks(path: Path, cwd: Path, env: dict[str, str] | None = None) -> None:
    venv_bin = Path(sys.executable).parent
    full_env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}", "EDGEKIT_ROOT": str(ROOT),
                "EDGEKIT_NO_PROGRESS": "1", **(env or {})}
    full_env.pop("EDGEKIT_DEVICES", None)
    blocks = command_blocks(path)
    assert blocks, f"{path} has no command blocks"
    for i, block in enumerate(blocks, 1):
        r = subprocess.run(["bash", "-c", FAST_SHELL + block], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=1500)
        assert r.returncode == 0, (
            f"{path.name} block {i} exited {r.returncode}:\n{block}\n--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-3000:]}"
        )


def test_recipes_doc_is_current():
    assert docgen.main(["--check"]) == 0, "docs/recipes.md is out of date: run python -m edgekit.docgen"


def test_every_stage_and_builtin_recipe_is_documented():
    from edgekit.recipe import builtin_names
    from edgekit.stages import discover

    text = docgen.render()
    for name in discover().names():
        assert f"## Stage `{name}`" in text
    for name in builtin_names():
        assert f"| `{name}` |" in text


def test_block_extraction_and_fast_shell(tmp_path):
    """The harness itself: blocks are found, a failing command fails the run, the fast flags are added."""
    doc = tmp_path / "d.md"
    doc.write_text("text\n\n```bash\necho one\n```\n\n```python\nraise SystemExit(1)\n```\n\n```bash\nfalse\necho never\n```\n")
    assert command_blocks(doc) == ["echo one\n", "false\necho never\n"]
    with pytest.raises(AssertionError, match="block 2 exited 1"):
        run_blocks(doc, tmp_path)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "edgekit").write_text("#!/bin/sh\necho \"$@\" > args.txt\n")
    (fake / "edgekit").chmod(0o755)
    doc.write_text("```bash\nedgekit compress m --recipe int8\n```\n")
    run_blocks(doc, tmp_path, env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    args = (tmp_path / "args.txt").read_text()
    assert "--set measure.latency_runs=3" in args and "--set quantize.calibration.samples=32" in args


def test_getting_started_recipe_table_names_real_recipes_and_targets():
    from edgekit.exporters.base import target_names
    from edgekit.recipe import builtin_names

    text = (ROOT / "docs" / "getting-started.md").read_text()
    table = text.split("## 4.", 1)[1].split("\n\n")[1]
    rows = [line.split("|") for line in table.splitlines()[2:]]
    recipes = {r for row in rows for r in re.findall(r"`([a-z0-9-]+)`", row[2])}
    assert recipes and recipes <= set(builtin_names()), recipes - set(builtin_names())
    named_targets = {t for t in target_names() if t.lower() in table.lower() or t in ("coreml",)}
    assert {"onnx", "openvino", "tensorrt", "tvm"} <= named_targets


@pytest.mark.slow
def test_readme_command_blocks_run(tmp_path):
    run_blocks(ROOT / "README.md", tmp_path)


@pytest.mark.slow
def test_getting_started_command_blocks_run(tmp_path, sshd):  # noqa: F811 - the fixture imported above
    env = {"BOARD_HOST": "127.0.0.1", "BOARD_PORT": str(sshd.port), "BOARD_USER": sshd.user, "BOARD_KEY": str(sshd.key),
           "BOARD_KNOWN_HOSTS": str(sshd.known_hosts), "BOARD_PYTHON": sys.executable}  # the loopback board's python
    run_blocks(ROOT / "docs" / "getting-started.md", tmp_path, env)
