"""Recipe engine: composition, overrides, and errors that name file, line and field (exit 2)."""

from __future__ import annotations

import textwrap

import pytest

from edgekit.errors import UserInputError
from edgekit.recipe import builtin_names, load_recipe


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_builtin_recipes_load():
    names = builtin_names()
    assert {"deploy", "int8"} <= set(names)
    for name in names:
        rec = load_recipe(name)
        assert rec.stages, name


def test_base_merge_and_set_override(tmp_path):
    base = write(tmp_path, "base.yaml", """\
        name: base
        stages:
          - fuse: {mode: deploy}
        measure: {latency_runs: 20}
        """)
    child = write(tmp_path, "child.yaml", f"""\
        name: child
        base: {base}
        stages:
          - fuse: {{}}
        measure: {{threads: 1}}
        """)
    rec = load_recipe(child, overrides=["measure.latency_runs=7"])
    assert [s.name for s in rec.stages] == ["fuse"]
    assert rec.measure.latency_runs == 7 and rec.measure.threads == 1
    assert len(rec.sources) == 2


def test_repeated_recipes_compose_in_order(tmp_path):
    a = write(tmp_path, "a.yaml", "name: a\nstages:\n  - fuse: {}\n")
    b = write(tmp_path, "b.yaml", "name: b\nstages:\n  - fuse: {mode: deploy}\n")
    rec = load_recipe([a, b])
    assert rec.name == "a+b" and [s.name for s in rec.stages] == ["fuse"]


@pytest.mark.parametrize(
    "text, expect",
    [
        ("name: x\nstages:\n  - fuse: {mode: [1\n", [":4", "invalid YAML", "starts at line 3"]),
        ("name: x\nstages:\n  - fuse: {}\n  - frobnicate: {}\n", [":4", "unknown stage 'frobnicate'", "fuse"]),
        ("name: x\nstages:\n  - fuse:\n      mdoe: deploy\n", [":4", "'mdoe'", "unknown field", "mode"]),
        ("name: x\nstages:\n  - fuse:\n      mode: 3\n", [":4", "'mode'", "deploy"]),
        ("name: x\nstagez: []\n", [":2", "'stagez'", "accepted"]),
        ("name: x\nversion: 9\nstages: []\n", [":2", "version"]),
    ],
    ids=["bad-yaml", "unknown-stage", "unknown-field", "wrong-type", "unknown-top-field", "bad-version"],
)
def test_errors_name_file_line_field(tmp_path, text, expect):
    p = write(tmp_path, "bad.yaml", text)
    with pytest.raises(UserInputError) as err:
        load_recipe(p)
    msg = str(err.value)
    assert str(p) in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_set_errors():
    with pytest.raises(UserInputError, match="no stage 'quantise'"):
        load_recipe("deploy", overrides=["quantise.calibration.method=mse"])
    with pytest.raises(UserInputError, match="path.to.field=value"):
        load_recipe("deploy", overrides=["fuse.mode"])
    with pytest.raises(UserInputError, match="'mode'"):
        load_recipe("deploy", overrides=["fuse.mode=nonsense"])


def test_unknown_recipe_lists_builtins():
    with pytest.raises(UserInputError, match="deploy"):
        load_recipe("no-such-recipe")


def test_cli_bad_recipe_exit_2(tmp_path, cli):
    p = write(tmp_path, "bad.yaml", "name: x\nstages:\n  - fuse:\n      mode: sideways\n")
    r = cli("compress", "--recipe", str(p), "--out", str(tmp_path / "o"))
    assert r.returncode == 2, r.stderr
    assert f"{p}:4" in r.stderr.replace("\n", "") and "mode" in r.stderr
    assert not (tmp_path / "o").exists()


def test_config_round_trip():
    rec = load_recipe("int8")
    for st in rec.stages:
        cls = type(st.config)
        assert cls.from_dict(st.config.to_dict()) == st.config


def test_declared_but_unimplemented_stage_raises(tmp_path):
    import edgekit
    from edgekit.errors import NotImplementedStageError
    from edgekit.stages import STAGES, StageConfig, declare_stage

    declare_stage("_test_future", StageConfig, "a stage that has not landed", issue="test")
    try:
        p = write(tmp_path, "f.yaml", "name: f\nstages:\n  - _test_future: {}\n")
        rec = load_recipe(p)  # it validates: the stage and its options exist
        with pytest.raises(NotImplementedStageError, match="not implemented yet"):
            edgekit.compress("convnet", rec, latency=False)
    finally:
        STAGES.unregister("_test_future")
