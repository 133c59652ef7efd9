"""Tables never cut a cell: long cells fold at the console width; --wide keeps each row on one line."""

from __future__ import annotations

import io
import json

import pytest

from rich.console import Console
from rich.table import Table

from edgekit import tables


def _table() -> Table:
    t = Table(title="layers")
    for col in ("layer", "type", "output shape"):
        t.add_column(col)
    t.add_row("stages.0.0.rbr_dense.conv_with_a_long_name", "Conv2dWithALongTypeName", "[1, 64, 112, 112]")
    return t


def test_folds_instead_of_cutting(monkeypatch):
    monkeypatch.setattr(tables, "WIDE", False)
    out = io.StringIO()
    tables.print_table(_table(), Console(file=out, width=40))
    text = out.getvalue()
    assert "…" not in text and max(len(line) for line in text.splitlines()) <= 40
    joined = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert "stages.0.0.rbr_dense.conv_with_a_long_name" in joined  # every character is there, folded


def test_wide_keeps_rows_whole(monkeypatch):
    monkeypatch.setattr(tables, "WIDE", True)
    out = io.StringIO()
    tables.print_table(_table(), Console(file=out, width=40))
    assert "│ stages.0.0.rbr_dense.conv_with_a_long_name │ Conv2dWithALongTypeName │ [1, 64, 112, 112] │" in out.getvalue()


@pytest.mark.slow
def test_cli_tables_are_not_cut(cli):
    targets = cli("export", "--list-targets")
    assert targets.returncode == 0, targets.stderr
    assert "…" not in targets.stdout
    wide = cli("--wide", "inspect", "repvgg")
    as_json = cli("inspect", "repvgg", "--json")
    assert wide.returncode == 0 and as_json.returncode == 0, wide.stderr + as_json.stderr
    assert "…" not in wide.stdout
    for row in json.loads(as_json.stdout)["layers"]:
        assert f" {row['name']} " in wide.stdout
