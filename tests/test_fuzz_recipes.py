"""Fuzz: hostile and malformed recipes, --set overrides, and a property test of the recipe parser."""

from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.errors import UserInputError
from edgekit.recipe import load_recipe
from tests.hostile import assert_clean_error, invoke, snapshot


def _bomb(levels: int = 9, width: int = 9) -> str:
    text = "a: &a [" + ",".join(['"lol"'] * width) + "]\n"
    prev = "a"
    for i in range(levels - 1):
        name = f"l{i}"
        text += f"{name}: &{name} [" + ",".join([f"*{prev}"] * width) + "]\n"
        prev = name
    return text


RECIPES = {
    "alias-bomb": (_bomb(), "expands to more than"),
    "alias-bomb-in-stage": ("name: x\nstages:\n  - fuse: &f {mode: deploy}\n" + _bomb().replace("a: &a", "b: &a", 1), "expands"),
    "merge-key-bomb": ("a: &a {x: 1, y: 2}\n" + "".join(f"b{i}: &b{i} {{<<: [*{'a' if i == 0 else f'b{i-1}'}], z{i}: [" + ",".join([f"*{'a' if i == 0 else f'b{i-1}'}"] * 9) + "]}\n" for i in range(8)), "expands"),
    "self-alias": ("a: &a [*a]\n", "cycle"),
    "deep-nesting": ("a: " + "[" * 200 + "]" * 200 + "\n", "nesting"),
    "very-deep-nesting": ("a: " + "[" * 20000 + "]" * 20000 + "\n", "nesting"),
    "python-tag": ("name: !!python/object/apply:os.system ['touch PWNED']\nstages: []\n", "invalid yaml"),
    "python-name-tag": ("name: !!python/name:os.system\n", "invalid yaml"),
    "top-level-list": ("- fuse: {}\n", "a recipe is a mapping"),
    "top-level-scalar": ("42\n", "a recipe is a mapping"),
    "unknown-field": ("name: x\nevil: 1\n", "unknown field 'evil'"),
    "version-99": ("name: x\nversion: 99\n", "version"),
    "stages-mapping": ("name: x\nstages: {fuse: {}}\n", "must be a list"),
    "stage-two-keys": ("name: x\nstages:\n  - {fuse: {}, quantize: {}}\n", "one stage name"),
    "stage-options-list": ("name: x\nstages:\n  - fuse: [1, 2]\n", "mapping of options"),
    "unknown-stage": ("name: x\nstages:\n  - evil: {}\n", "unknown stage"),
    "bad-option-type": ("name: x\nstages:\n  - fuse: {mode: 42}\n", "stage 'fuse'"),
    "unknown-option": ("name: x\nstages:\n  - fuse: {rm_rf: true}\n", "unknown field"),
    "huge-int": ("name: x\nversion: " + "9" * 5000 + "\n", "value cannot be read"),
    "bad-yaml": ("name: [unclosed\n", "invalid yaml"),
    "tabs": ("name: x\n\tstages: []\n", "invalid yaml"),
    "name-is-list": ("name: [a, b]\n", "must be a string"),
    "measure-list": ("name: x\nmeasure: [1]\n", "must be a mapping"),
    "measure-bad": ("name: x\nmeasure: {threads: -4}\n", "measure.threads"),
    "prune-after-quantize": ("name: x\nstages:\n  - quantize: {}\n  - prune: {ratio: 0.3}\n", "must run before"),
    "base-missing": ("name: x\nbase: no-such-recipe-zz\n", "unknown recipe"),
    "base-self-loop": ("name: x\nbase: SELF\n", "loops"),
    "base-etc-passwd": ("name: x\nbase: /etc/passwd\n", "a recipe is a mapping"),
    "base-directory": ("name: x\nbase: /tmp\n", "not a regular file"),
    "nul-bytes": ("name: x\x00\n", "invalid yaml"),
}


@pytest.mark.parametrize("case", sorted(RECIPES))
def test_hostile_recipe(case, tmp_path):
    text, needle = RECIPES[case]
    path = tmp_path / "r.yaml"
    path.write_text(text.replace("SELF", str(path)))
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    res = invoke(["recipes", "show", path], cwd=tmp_path)
    assert time.perf_counter() - t0 < 20
    assert_clean_error(res, 2, needle)
    assert snapshot(tmp_path) == before and not (tmp_path / "PWNED").exists()


def test_oversize_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ndescription: '" + "a" * (2 << 20) + "'\n")
    assert_clean_error(invoke(["recipes", "show", path], cwd=tmp_path), 2, "limit")


def test_binary_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage\x89PNG")
    assert_clean_error(invoke(["recipes", "show", path], cwd=tmp_path), 2, "r.yaml")


def test_recipe_is_a_fifo_not_read(tmp_path):
    import os

    path = tmp_path / "r.yaml"
    os.mkfifo(path)
    t0 = time.perf_counter()
    assert_clean_error(invoke(["recipes", "show", path], cwd=tmp_path), 2, "not a regular file")
    assert time.perf_counter() - t0 < 10


SETS = {
    "no-equals": ("quantize.calibration.method", "expected path.to.field=value"),
    "one-part": ("quantize=1", "expected <stage"),
    "unknown-stage": ("evil.x=1", "no stage 'evil'"),
    "bad-enum": ("quantize.calibration.method=banana", "--set 'quantize.calibration.method=banana'"),
    "unknown-field": ("quantize.rm_rf=1", "--set 'quantize.rm_rf=1'"),
    "bad-measure": ("measure.threads=-3", "--set 'measure.threads=-3'"),
    "yaml-bomb-value": ("quantize.ignore=" + "[" * 500 + "]" * 500, "--set"),
    "python-tag-value": ("quantize.mode=!!python/object/apply:os.system ['touch PWNED']", "--set"),
    "empty-value": ("quantize.mode=", "--set"),
    "nested-over-scalar": ("quantize.mode.x=1", "--set"),
    "data-unknown-field": ("data.rm_rf=1", "--set 'data.rm_rf=1'"),
    "data-bad-value": ("data.batch_size=-2", "--set 'data.batch_size=-2'"),
}


@pytest.mark.parametrize("case", sorted(SETS))
def test_set_errors_point_at_the_flag(case, tmp_path):
    item, needle = SETS[case]
    with pytest.raises(UserInputError) as ei:
        load_recipe("int8", [item])
    msg = str(ei.value)
    assert needle.lower() in msg.lower() and "\n" not in msg
    assert "int8.yaml" not in msg  # the flag is named, not the recipe file
    assert not (tmp_path / "PWNED").exists()


def test_composed_recipes_run_every_stage_in_order():
    rec = load_recipe(["int8", "prune-30"])
    assert [s.name for s in rec.stages] == ["prune", "fuse", "quantize"]
    rec = load_recipe(["prune-30", "int8"])
    assert [s.name for s in rec.stages] == ["prune", "fuse", "quantize"]


# ------------------------------------------------------------------------------------------------ property

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.text(max_size=12))
_keys = st.sampled_from(["name", "description", "base", "version", "stages", "measure", "fuse", "quantize", "prune",
                         "mode", "ratio", "calibration", "method", "x", "threads", "latency_runs"])
_docs = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=4)), max_leaves=20)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_docs)
def test_recipe_parser_property(doc, tmp_path):
    """Any YAML document either loads as a validated Recipe or raises one UserInputError line; nothing else."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        rec = load_recipe(path)
    except UserInputError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert all(s.config is not None for s in rec.stages)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.sampled_from(list("ab:-[]{}&*!|>'\"\n #,.?<")), max_size=120))
def test_recipe_text_property(text, tmp_path):
    """Arbitrary YAML-ish text: a Recipe or a UserInputError, never another exception."""
    path = tmp_path / "t.yaml"
    path.write_text(text)
    try:
        load_recipe(path)
    except UserInputError as exc:
        assert str(exc)
