"""The architecture holds: typed records between stages, one plugin mechanism, one name per thing."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT

PACKAGE_DIRS = ("edgekit", "prune", "quant", "exporters", "devices")
MAX_LINES = 500


def _sources():
    for d in PACKAGE_DIRS:
        for p in sorted((ROOT / d).rglob("*.py")):
            if "__pycache__" not in p.parts:
                yield p


def test_no_edgekit_attributes_set_on_modules():
    """Model metadata travels in ModelInfo, never as ``module.edgekit_*`` attributes."""
    pattern = re.compile(r"\.edgekit_\w+\s*=[^=]|setattr\([^)]*['\"]edgekit_")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _sources()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_no_getattr_defaults_on_stage_configs():
    """A stage reads its validated config's fields; defaults live in the config class only."""
    pattern = re.compile(r"getattr\((cfg|config|st\.config|self\.config)\b[^)]*,[^)]*,")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _sources()
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert offenders == []


def test_no_module_over_500_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _sources()}
    assert {k: v for k, v in sizes.items() if v > MAX_LINES} == {}


@pytest.mark.parametrize("folder", ["prune", "quant", "exporters", "devices", "recipes"])
def test_stage_folders_refuse_top_level_import(folder):
    proc = subprocess.run([sys.executable, "-c", f"import {folder}"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert f"import edgekit.{folder} instead" in proc.stderr.strip().splitlines()[-1]


def test_inspect_stays_a_function_after_the_module_is_imported():
    import edgekit
    import edgekit.inspection  # noqa: F401 - the module has its own name, so it cannot shadow the function

    assert callable(edgekit.inspect) and edgekit.inspect is edgekit.inspection.inspect_model


def test_stage_version_is_checked(tmp_path):
    from edgekit.errors import UserInputError
    from edgekit.recipe import load_recipe

    p = tmp_path / "v.yaml"
    p.write_text("name: v\nstages:\n  - fuse: {mode: deploy, version: 99}\n")
    with pytest.raises(UserInputError, match=r"v.yaml:3.*version 99 .*accepted: 1"):
        load_recipe(p)


def test_compress_report_is_a_typed_record_that_round_trips(digits):
    import edgekit
    from edgekit.errors import UserInputError
    from edgekit.records import CompressReport, ModelInfo
    from tests.core_models import small_net

    res = edgekit.compress(small_net(), "deploy", digits, latency=False, info=ModelInfo(name="small", input_shape=(3, 32, 32)))
    rep = res.report
    assert isinstance(rep, CompressReport) and rep.model == "small" and rep.stage("fuse").report["folded"]
    assert res.info.input_shape == (3, 32, 32) and res.info.num_classes == 10
    assert not any(k.startswith("edgekit_") for k in vars(res.model))
    again = CompressReport.from_json(rep.to_json())
    assert again.to_dict() == rep.to_dict() and again.params.after == rep.params.after
    bad = rep.to_dict() | {"schema_version": 999}
    with pytest.raises(UserInputError, match="schema_version 999 is not supported"):
        CompressReport.from_dict(bad)
    with pytest.raises(UserInputError, match="unknown field"):
        CompressReport.from_dict(rep.to_dict() | {"surprise": 1})


def test_plugin_from_a_user_module_registers_a_stage_and_a_target(tmp_path, monkeypatch, digits):
    """Adding a stage (or an export target) is one new module with one registration, found via EDGEKIT_PLUGINS."""
    (tmp_path / "my_plugin.py").write_text(textwrap.dedent("""
        from edgekit.stages import StageConfig, register_stage
        from edgekit.exporters.base import TARGETS

        class ScaleConfig(StageConfig):
            factor: float = 2.0

        @register_stage("scale_head", config=ScaleConfig, summary="multiply the classifier weights (test plugin)")
        def scale_head(model, cfg, ctx):
            import copy, torch
            model = copy.deepcopy(model)
            with torch.no_grad():
                model.fc.weight.mul_(cfg.factor)
            return model, {"factor": cfg.factor}

        class MyTarget:
            pass

        TARGETS.add("my_target_plugin", MyTarget)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    from edgekit import registry
    from edgekit.exporters.base import TARGETS
    from edgekit.stages import STAGES

    registry.load_plugins(["my_plugin"])
    try:
        import edgekit
        from edgekit.recipe import load_recipe
        from tests.core_models import small_net

        p = tmp_path / "r.yaml"
        p.write_text("name: plug\nstages:\n  - scale_head: {factor: 3.0}\n")
        res = edgekit.compress(small_net(), load_recipe(p), digits, latency=False)
        assert res.report.stage("scale_head").report == {"factor": 3.0}
        assert "my_target_plugin" in TARGETS.names()
    finally:
        STAGES.unregister("scale_head")
        TARGETS.unregister("my_target_plugin")
        registry._plugins_loaded.discard("my_plugin")
    assert "scale_head" not in STAGES and "my_target_plugin" not in TARGETS


def test_unknown_plugin_module_is_a_clear_error(monkeypatch):
    from edgekit import registry
    from edgekit.errors import UserInputError

    with pytest.raises(UserInputError, match="plugin module 'no_such_plugin_xyz'"):
        registry.load_plugins(["no_such_plugin_xyz"])


def test_registries_fill_lazily_from_their_packages():
    from edgekit import models
    from edgekit.stages import discover

    assert {"convnet", "vit", "resnet50"} <= set(models.names())
    assert {"fuse", "prune", "quantize", "sparsify"} <= set(discover().names())


def test_keyed_registry_walks_the_mro_and_unregisters():
    from torch import nn

    from edgekit.errors import UserInputError
    from edgekit.registry import KeyedRegistry

    reg: KeyedRegistry[str] = KeyedRegistry("pruning handler")
    reg.add(nn.Conv2d, "conv")

    class UserConv(nn.Conv2d):
        pass

    assert reg.lookup(UserConv) == "conv" and reg.lookup(nn.Linear) is None and reg.names() == ["Conv2d"]
    with pytest.raises(UserInputError, match="no pruning handler for Linear; registered: Conv2d"):
        reg.get(nn.Linear)
    assert reg.unregister(nn.Conv2d) == "conv" and len(reg) == 0


def test_json_schemas_in_docs_are_current():
    """docs/schemas/ is generated from the record classes (`python -m edgekit.records docs/schemas`)."""
    from edgekit.records import schema_texts

    texts = schema_texts()
    assert {p.name for p in (ROOT / "docs" / "schemas").glob("*.json")} == set(texts)
    stale = [name for name, text in texts.items() if (ROOT / "docs" / "schemas" / name).read_text() != text]
    assert stale == [], "regenerate with: python -m edgekit.records docs/schemas"
