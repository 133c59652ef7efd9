"""Fuzz: hostile model files (.pt, .pt2, module:factory). No code runs without --trust-pickle, one clean line."""

from __future__ import annotations

import io
import json

import pytest
import torch

from tests.hostile import (
    assert_clean_error, build_zip, claim_size, edit_json, entries, evil_pickle, evil_torch_save, invoke, root_of,
    snapshot, tiny_pt2_bytes,
)


@pytest.fixture(scope="module")
def pt2_files():
    return entries(tiny_pt2_bytes())


def _pickled_weight(f, m):
    def cfg(doc):
        first = next(iter(doc["config"].values()))
        first["use_pickle"] = True
        first["tensor_meta"] = None
        f[f"{root_of(f)}/data/weights/{first['path_name']}"] = evil_torch_save(m)
    edit_json(f, "_weights_config.json", cfg)


def _pickled_constant(f, m):
    f[f"{root_of(f)}/data/constants/tensor_0"] = evil_torch_save(m)
    edit_json(f, "_constants_config.json", lambda d: d["config"].update(
        c={"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}))


def _opaque(f, m):
    f[f"{root_of(f)}/data/constants/opaque_obj_0"] = evil_pickle(m)
    edit_json(f, "_constants_config.json", lambda d: d["config"].update(
        o={"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}))


def _custom(f, m):
    f[f"{root_of(f)}/data/constants/custom_obj_0"] = evil_pickle(m)
    edit_json(f, "_constants_config.json", lambda d: d["config"].update(
        o={"path_name": "custom_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": None}))


def _sample_inputs(f, m):
    name = next(n for n in f if "/data/sample_inputs/" in n)
    f[name] = evil_torch_save(m, wrap=lambda e: ((e,), {}))


def _legacy(f, m):
    f.clear()
    f.update({"version": b"1", "serialized_exported_program.json": b"{}", "serialized_state_dict.pt": evil_torch_save(m),
              "serialized_constants.pt": b"", "serialized_example_inputs.pt": b""})


def _legacy_constants(f, m):
    r = root_of(f)
    cfg = next(n for n in f if n.endswith("_constants_config.json"))
    del f[cfg]
    f[f"{r}/data/constants/model.pt"] = evil_torch_save(m)


def _aoti(f, m):
    f[f"{root_of(f)}/data/aotinductor/model/model.so"] = b"\x7fELF" + evil_pickle(m)


def _unknown_entry(f, m):
    f[f"{root_of(f)}/data/payload.pkl"] = evil_pickle(m)


def _custom_in_graph(f, m):
    def g(doc):
        doc.setdefault("graph_module", {}).setdefault("graph", {})["custom_obj_values"] = {"x": {"name": "x", "class_fqn": "os.system"}}
    edit_json(f, "models/model.json", g)


def _use_pickle_missing(f, m):
    edit_json(f, "_weights_config.json", lambda d: next(iter(d["config"].values())).pop("use_pickle"))


def _missing_weight(f, m):
    edit_json(f, "_weights_config.json", lambda d: next(iter(d["config"].values())).update(path_name="weight_999"))


def _traversal(f, m):
    f[f"{root_of(f)}/../../escape"] = b"x"


def _two_roots(f, m):
    f["other/archive_format"] = b"pt2"


def _no_models(f, m):
    for n in [n for n in f if "/models/" in n]:
        del f[n]


def _bad_format(f, m):
    f[f"{root_of(f)}/archive_format"] = b"evil"


def _config_not_json(f, m):
    name = next(n for n in f if n.endswith("_weights_config.json"))
    f[name] = b"{not json"


def _config_list(f, m):
    name = next(n for n in f if n.endswith("_weights_config.json"))
    f[name] = b"[1, 2, 3]"


PT2_CASES = {
    "pickled-weight": (_pickled_weight, "use_pickle"),
    "pickled-constant": (_pickled_constant, "use_pickle"),
    "opaque-object": (_opaque, "opaque"),
    "custom-class-object": (_custom, "custom-class"),
    "evil-sample-inputs": (_sample_inputs, "sample inputs"),
    "legacy-format": (_legacy, "legacy"),
    "legacy-constants": (_legacy_constants, "legacy"),
    "aoti-compiled-code": (_aoti, "compiled code"),
    "unknown-entry": (_unknown_entry, "unexpected entry"),
    "custom-obj-in-graph": (_custom_in_graph, "custom-class"),
    "use-pickle-missing": (_use_pickle_missing, "use_pickle"),
    "weight-points-nowhere": (_missing_weight, "missing entry"),
    "path-traversal": (_traversal, "relative path"),
    "two-roots": (_two_roots, "top-level"),
    "no-program": (_no_models, "no exported program"),
    "bad-archive-format": (_bad_format, "archive_format"),
    "config-not-json": (_config_not_json, "json"),
    "config-is-list": (_config_list, "malformed"),
}


@pytest.mark.parametrize("case", sorted(PT2_CASES))
def test_hostile_pt2_refused(case, pt2_files, tmp_path):
    build, needle = PT2_CASES[case]
    marker = tmp_path / "PWNED"
    files = dict(pt2_files)
    build(files, marker)
    path = tmp_path / "model.pt2"
    path.write_bytes(build_zip(files))
    before = snapshot(tmp_path)
    res = invoke(["inspect", path], cwd=tmp_path)
    assert_clean_error(res, 2, needle)
    assert not marker.exists()
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["pickled-weight", "opaque-object", "evil-sample-inputs"])
def test_payloads_are_live(case, pt2_files, tmp_path):
    """Control: torch.export.load itself runs these payloads, so the refusals above are what protects."""
    build, _ = PT2_CASES[case]
    marker = tmp_path / "PWNED"
    files = dict(pt2_files)
    build(files, marker)
    path = tmp_path / "model.pt2"
    path.write_bytes(build_zip(files))
    import torch.ao.quantization.fx._decomposed  # noqa: F401

    try:
        torch.export.load(str(path))
    except Exception:  # noqa: BLE001 - the payload runs before anything fails
        pass
    assert marker.exists()


@pytest.mark.parametrize("blob,needle", [
    (b"", "not a torch.export archive"),
    (b"\x00" * 100, "not a torch.export archive"),
    (b"PK\x03\x04" + b"\xff" * 200, "not a torch.export archive"),
    (b"<html>not a model</html>", "not a torch.export archive"),
], ids=["empty", "zeros", "corrupt-zip", "text"])
def test_garbage_pt2(blob, needle, tmp_path):
    path = tmp_path / "m.pt2"
    path.write_bytes(blob)
    assert_clean_error(invoke(["inspect", path], cwd=tmp_path), 2, needle)


def test_truncated_pt2(pt2_files, tmp_path):
    blob = build_zip(dict(pt2_files))
    path = tmp_path / "m.pt2"
    path.write_bytes(blob[: len(blob) // 2])
    assert_clean_error(invoke(["inspect", path], cwd=tmp_path), 2, "m.pt2")


def test_oversize_entry_header_pt2(pt2_files, tmp_path):
    blob = claim_size(build_zip(dict(pt2_files)), "weight_0", 0xFFFFFFF0)
    path = tmp_path / "m.pt2"
    path.write_bytes(blob)
    res = invoke(["inspect", path], cwd=tmp_path)
    assert_clean_error(res, 2, "m.pt2")


def test_trust_pickle_runs_what_the_user_trusted(pt2_files, tmp_path):
    marker = tmp_path / "PWNED"
    files = dict(pt2_files)
    _opaque(files, marker)
    path = tmp_path / "model.pt2"
    path.write_bytes(build_zip(files))
    invoke(["inspect", path, "--trust-pickle"], cwd=tmp_path)
    assert marker.exists()  # the flag is honest: it does unpickle


def test_clean_pt2_loads(pt2_files, tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(build_zip(dict(pt2_files)))
    from edgekit.loading import load_model

    loaded = load_model(str(path))  # the unmodified archive passes the inspection and runs
    assert loaded.model(torch.ones(1, 1, 2, 2)).shape == (1, 3)


# ------------------------------------------------------------------------------------------------ .pt


def _pt_cases(marker):
    def save(obj):
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    from tests.hostile import Evil

    return {
        "evil-object": (evil_torch_save(marker), "refused to unpickle"),
        "evil-in-dict": (evil_torch_save(marker, wrap=lambda e: {"w": torch.ones(1), "x": e}), "refused to unpickle"),
        "evil-in-list": (evil_torch_save(marker, wrap=lambda e: [e]), "refused to unpickle"),
        "raw-pickle": (evil_pickle(marker), "refused to unpickle"),
        "evil-state-dict-key": (save({"state_dict": {"a": Evil(marker)}}), "refused to unpickle"),
        "full-module": (save(torch.nn.Linear(2, 2)), "refused to unpickle"),
        "garbage": (b"\x80\x04garbage", "refused to unpickle"),
        "empty": (b"", "refused to unpickle"),
        "list-of-tensors": (save([torch.ones(2)]), "expected a state dict"),
        "tensor": (save(torch.ones(2)), "expected a state dict"),
    }


@pytest.mark.parametrize("case", ["evil-object", "evil-in-dict", "evil-in-list", "raw-pickle", "evil-state-dict-key",
                                  "full-module", "garbage", "empty", "list-of-tensors", "tensor"])
def test_hostile_pt_refused(case, tmp_path):
    marker = tmp_path / "PWNED"
    blob, needle = _pt_cases(marker)[case]
    path = tmp_path / "m.pt"
    path.write_bytes(blob)
    before = snapshot(tmp_path)
    assert_clean_error(invoke(["inspect", path, "--arch", "convnet"], cwd=tmp_path), 2, needle)
    assert not marker.exists() and snapshot(tmp_path) == before


@pytest.mark.parametrize("state,needle", [
    ({"nope": torch.ones(1)}, "does not fit zoo model"),
    ({"stem.0.weight": torch.ones(1)}, "does not fit zoo model"),
    ({"stem.0.weight": 3}, "does not fit zoo model"),
], ids=["wrong-keys", "wrong-shape", "non-tensor"])
def test_state_dict_mismatch(state, needle, tmp_path):
    path = tmp_path / "m.pt"
    torch.save(state, path)
    assert_clean_error(invoke(["inspect", path, "--arch", "convnet"], cwd=tmp_path), 2, needle)


# ------------------------------------------------------------------------------------------------ module:factory


FACTORIES = {
    "raises": ("def make():\n    raise RuntimeError('boom in user code')\n", "make", "your factory make() raised"),
    "returns-int": ("def make():\n    return 3\n", "make", "expected an nn.Module"),
    "import-raises": ("raise ValueError('bad module')\n", "make", "importing module"),
    "syntax-error": ("def make(:\n", "make", "SyntaxError"),
    "not-callable": ("make = 3\n", "make", "no callable"),
    "missing-attr": ("x = 1\n", "make", "no callable"),
    "system-exit": ("def make():\n    raise KeyError('k')\n", "make", "KeyError"),
}


@pytest.mark.parametrize("case", sorted(FACTORIES))
def test_user_factory_errors(case, tmp_path):
    src, attr, needle = FACTORIES[case]
    mod = f"userfac_{case.replace('-', '_')}"
    (tmp_path / f"{mod}.py").write_text(src)
    line = assert_clean_error(invoke(["inspect", f"{mod}:{attr}"], cwd=tmp_path), 2, needle)
    if case == "raises":
        assert f"{mod}.py:2" in line  # the user's last frame


@pytest.mark.parametrize("spec", ["nosuchmodule_zz:make", ":make", "a:b:c", "../../etc:passwd"])
def test_weird_model_specs(spec, tmp_path):
    assert_clean_error(invoke(["inspect", spec], cwd=tmp_path), 2, "model")


# ------------------------------------------------------------------------------------------------ model outputs

OUTPUT_MODELS = '''
import torch
from torch import nn


class T(nn.Module):
    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.f = nn.Linear(8, 10)

    def feat(self, x):
        return self.f(self.c(x).mean((2, 3)))


class Tup(T):
    def forward(self, x):
        y = self.feat(x)
        return y, y * 2


class Dic(T):
    def forward(self, x):
        return {"logits": self.feat(x), "aux": x.mean()}


class Non(T):
    def forward(self, x):
        return None


class Boom(T):
    def forward(self, x):
        raise RuntimeError("forward exploded")


class TwoArgs(T):
    def forward(self, x, y):
        return self.feat(x)


def tup():
    return Tup()


def dic():
    return Dic()


def non():
    return Non()


def boom():
    return Boom()


def twoargs():
    return TwoArgs()
'''


@pytest.mark.parametrize("factory,code,needle", [
    ("non", 2, "NoneType"), ("boom", 2, "forward exploded"), ("twoargs", 2, "missing 1 required"),
    ("tup", None, None), ("dic", None, None),
])
def test_model_output_errors_are_clean(factory, code, needle, tmp_path):
    """A model that returns nothing usable or raises: one line, exit 2. Tuple/dict outputs (made to work by the
    capture work) either succeed or fail in one clean line, never with a traceback."""
    (tmp_path / "outmods.py").write_text(OUTPUT_MODELS)
    res = invoke(["compress", f"outmods:{factory}", "-r", "deploy", "--no-latency", "--out", tmp_path / "o"], cwd=tmp_path)
    if code is None:
        assert "Traceback" not in res.err + res.out
        assert res.code == 0 or len(res.error_lines) == 1, res.err[-2000:]
    else:
        assert_clean_error(res, code, needle)
        assert not (tmp_path / "o").exists()


def test_pt_zip_with_oversize_header(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"w": torch.ones(4)}, path)
    path.write_bytes(_claim_all(path.read_bytes()))  # every entry claims ~4 GiB
    assert_clean_error(invoke(["inspect", path, "--arch", "convnet"], cwd=tmp_path), 2, "m.pt")


def _claim_all(blob: bytes) -> bytes:
    import zipfile as _zf

    names = [i.filename for i in _zf.ZipFile(io.BytesIO(blob)).infolist()]
    for n in names:
        blob = claim_size(blob, n, 0xFFFFFFF0)
    return blob
