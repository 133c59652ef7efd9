"""Fuzz: tampered and malformed compress outputs (manifest schema, sha256, listed files), and --out/--force."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.artifacts import MANIFEST, atomic_output_dir, read_manifest, write_manifest
from edgekit.errors import UserInputError
from tests.hostile import assert_clean_error, build_zip, entries, evil_torch_save, invoke, snapshot, tiny_pt2_bytes
from tests.test_fuzz_models import _opaque, _pickled_weight


@pytest.fixture(scope="module")
def pt2_blob():
    return tiny_pt2_bytes()


def make_output(root, blob, **extra):
    out = root / "out"
    out.mkdir()
    (out / "model.pt2").write_bytes(blob)
    (out / "report.json").write_text("{}")
    write_manifest(out, kind="compressed-model", model="tiny", model_file="model.pt2", input_shape=[1, 2, 2], **extra)
    return out


def _edit(out, fn):
    path = out / MANIFEST
    doc = json.loads(path.read_text())
    doc = fn(doc)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))


def _set(key, value):
    def fn(d):
        d[key] = value
        return d
    return fn


def _files(fn2):
    def fn(d):
        fn2(d["files"])
        return d
    return fn


MANIFESTS = {
    "is-list": (lambda d: [d], "expected a JSON object"),
    "is-string": (lambda d: json.dumps("x"), "expected a JSON object"),
    "is-null": (lambda d: "null", "expected a JSON object"),
    "not-json": (lambda d: "{oops", "not valid json"),
    "files-list": (_set("files", ["model.pt2"]), "files"),
    "files-missing": (lambda d: {k: v for k, v in d.items() if k != "files"}, "files"),
    "files-bad-digest": (_files(lambda f: f.update({"model.pt2": "abc"})), "sha256"),
    "files-digest-int": (_files(lambda f: f.update({"model.pt2": 12})), "files"),
    "files-dotdot": (_files(lambda f: f.update({"../escape.txt": "0" * 64})), "relative path"),
    "files-absolute": (_files(lambda f: f.update({"/etc/passwd": "0" * 64})), "relative path"),
    "files-nested-dotdot": (_files(lambda f: f.update({"a/../../x": "0" * 64})), "relative path"),
    "model-file-unlisted": (lambda d: {**d, "model_file": "other.pt2"}, "not listed"),
    "model-file-traversal": (_set("model_file", "../../x.pt2"), "relative path"),
    "model-file-int": (_set("model_file", 3), "model_file"),
    "version-2": (_set("edgekit_manifest", 2), "edgekit_manifest"),
    "version-missing": (lambda d: {k: v for k, v in d.items() if k != "edgekit_manifest"}, "edgekit_manifest"),
    "shape-negative": (_set("input_shape", [-1, 2, 2]), "input_shape"),
    "shape-string": (_set("input_shape", "1x2x2"), "input_shape"),
    "deep-nesting": (lambda d: json.dumps(d)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}", "nesting"),
    "program-evil-kind": (_set("program", {"kind": "os", "files": []}), "program kind"),
    "model-file-onnx": (lambda d: {**d, "model_file": "report.json"}, "not a torch.export program"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_malformed_manifest(case, pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    fn, needle = MANIFESTS[case]
    _edit(out, fn)
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, needle)
    assert snapshot(tmp_path) == before


def test_tampered_model_detected(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    blob = bytearray((out / "model.pt2").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / "model.pt2").write_bytes(bytes(blob))
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "sha256")


def test_listed_file_missing(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    (out / "report.json").unlink()
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "missing")


def test_listed_file_is_symlink(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    target = tmp_path / "elsewhere.json"
    target.write_text("{}")
    (out / "report.json").unlink()
    (out / "report.json").symlink_to(target)  # same content, same sha256: refused anyway
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "symlink")


def test_manifest_is_symlink(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    real = tmp_path / "m.json"
    (out / MANIFEST).rename(real)
    (out / MANIFEST).symlink_to(real)
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "manifest")


def test_listed_device_file_not_hashed_forever(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    os.symlink("/dev/zero", out / "zero")
    _edit(out, _files(lambda f: f.update({"zero": "0" * 64})))
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "symlink")


def test_oversize_manifest(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    _edit(out, _set("padding", "x" * (5 << 20)))
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "limit")


@pytest.mark.parametrize("build", [_pickled_weight, _opaque], ids=["pickled-weight", "opaque-object"])
def test_swapped_model_with_recomputed_manifest(build, pt2_blob, tmp_path):
    """The attack the sha256 cannot stop (docs/security.md): the .pt2 inspection does."""
    marker = tmp_path / "PWNED"
    files = entries(pt2_blob)
    build(files, marker)
    out = make_output(tmp_path, build_zip(files))  # manifest written over the hostile file: digests match
    assert_clean_error(invoke(["inspect", out], cwd=tmp_path), 2, "refused to load")
    res = invoke(["export", out, "--target", "onnx", "--out", tmp_path / "exp"], cwd=tmp_path)
    assert_clean_error(res, 2, "refused to load")
    assert not marker.exists() and not (tmp_path / "exp").exists()


def test_pickle_next_to_model_is_never_opened(pt2_blob, tmp_path):
    marker = tmp_path / "PWNED"
    out = make_output(tmp_path, pt2_blob)
    (out / "extra.pt").write_bytes(evil_torch_save(marker))
    res = invoke(["inspect", out, "--json"], cwd=tmp_path)
    assert res.code == 0, res.err
    json.loads(res.out)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ outputs


def _compress(tmp_path, out, *extra):
    return invoke(["compress", "convnet", "-r", "deploy", "--no-latency", "--out", out, *extra], cwd=tmp_path)


@pytest.mark.parametrize("kind", ["plain-dir", "file", "symlink-to-output", "symlink-to-dir", "dir-with-fake-manifest"])
def test_force_refuses_what_is_not_an_edgekit_output(kind, pt2_blob, tmp_path):
    target = tmp_path / "victim"
    if kind == "plain-dir":
        target.mkdir()
        (target / "thesis.tex").write_text("years of work")
    elif kind == "file":
        target.write_text("precious")
    elif kind == "symlink-to-output":
        real = make_output(tmp_path, pt2_blob)
        target.symlink_to(real)
    elif kind == "symlink-to-dir":
        (tmp_path / "d").mkdir()
        target.symlink_to(tmp_path / "d")
    else:
        target.mkdir()
        (target / MANIFEST).write_text('{"not": "edgekit"}')
    before = snapshot(tmp_path)
    res = _compress(tmp_path, target, "--force")
    assert_clean_error(res, 2, "not an edgekit output")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("out,needle", [(".", "working directory"), ("..", "working directory"),
                                        ("/proc/edgekit-x", "cannot write"), ("/", "working directory")],
                         ids=["dot", "parent", "proc", "root"])
def test_impossible_out(out, needle, tmp_path):
    before = snapshot(tmp_path)
    assert_clean_error(_compress(tmp_path, out, "--force"), 2, needle)
    assert snapshot(tmp_path) == before


def test_existing_output_without_force(pt2_blob, tmp_path):
    out = make_output(tmp_path, pt2_blob)
    before = snapshot(tmp_path)
    assert_clean_error(_compress(tmp_path, out), 2, "--force")
    assert snapshot(tmp_path) == before


def test_force_replaces_an_edgekit_output_and_leaves_no_siblings(tmp_path):
    out = tmp_path / "o"
    with atomic_output_dir(out) as t:
        (t / "a").write_text("1")
    with atomic_output_dir(out, force=True) as t:
        (t / "b").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert sorted(p.name for p in out.iterdir()) == sorted([MANIFEST, "b"])


def test_stale_tmp_of_a_killed_run_is_removed(tmp_path):
    dead = 2**22 + 12345  # above pid_max on common systems: never alive
    stale = tmp_path / f".o.tmp-{dead}-abc"
    stale.mkdir()
    (stale / "model.pt2").write_text("half")
    other = tmp_path / ".o.tmp-notapid"
    other.mkdir()
    with atomic_output_dir(tmp_path / "o") as t:
        (t / "x").write_text("1")
    assert not stale.exists() and other.exists()


# ------------------------------------------------------------------------------------------------ property

_json = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
                     lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(
                         st.sampled_from(["edgekit_manifest", "files", "model_file", "input_shape", "kind", "x", "a.txt"]),
                         inner, max_size=5)), max_leaves=20)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_json)
def test_manifest_parser_property(doc, tmp_path):
    """Any JSON: a dict that satisfies the schema, or one UserInputError naming the manifest; nothing else."""
    d = tmp_path / "m"
    d.mkdir(exist_ok=True)
    (d / MANIFEST).write_text(json.dumps(doc))
    try:
        m = read_manifest(d)
    except UserInputError as exc:
        assert MANIFEST in str(exc)
    else:
        assert m["edgekit_manifest"] == 1 and isinstance(m["files"], dict)
