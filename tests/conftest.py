"""Shared fixtures. Tests run on CPU with 1 torch thread each (pytest -n 2 uses both cores)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("EDGEKIT_NO_PROGRESS", "1")


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits():
    from edgekit.data import load_data

    return load_data()


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``edgekit ARGS`` in a subprocess (the installed console script's module)."""
    full_env = {**os.environ, "EDGEKIT_NO_PROGRESS": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgekit", *args], cwd=cwd or ROOT, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def cli():
    return run_cli
