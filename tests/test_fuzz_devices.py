"""Fuzz: hostile devices files through the public parser (edgekit.devices.load_devices) and the CLI."""

from __future__ import annotations

import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.devices import load_devices
from edgekit.errors import UserInputError
from tests.hostile import assert_clean_error, invoke, snapshot
from tests.test_fuzz_recipes import _bomb

DEVICES = {
    "alias-bomb": ("devices:\n  - name: pi\n    transport: ssh\n    host: h\n    tags: *l7\n" .replace("*l7", "[]") + _bomb(), None),
    "alias-bomb-in-tags": (_bomb().replace("a: &a", "x: &a", 1) + "devices:\n  - {name: pi, transport: ssh, host: h, tags: *l7}\n", None),
    "self-alias": ("devices: &d [*d]\n", None),
    "python-tag": ("devices:\n  - !!python/object/apply:os.system ['touch PWNED']\n", None),
    "top-list": ("- name: pi\n", "mapping"),
    "devices-mapping": ("devices: {pi: {}}\n", "list"),
    "entry-scalar": ("devices: [3]\n", "mapping"),
    "unknown-transport": ("devices:\n  - {name: pi, transport: telnet, host: h}\n", "transport"),
    "duplicate-name": ("devices:\n  - {name: pi, transport: ssh, host: h, user: u}\n  - {name: pi, transport: ssh, host: h, user: u}\n", "twice"),
    "local-reserved": ("devices:\n  - {name: local, transport: ssh, host: h, user: u}\n", "reserved"),
    "port-out-of-range": ("devices:\n  - {name: pi, transport: ssh, host: h, port: 99999}\n", "port"),
    "unknown-top-key": ("evil: 1\ndevices: []\n", "mapping"),
    "bad-yaml": ("devices: [unclosed\n", None),
    "deep-nesting": ("devices: " + "[" * 300 + "]" * 300 + "\n", None),
    "huge-int": ("devices:\n  - {name: pi, transport: ssh, host: h, port: " + "9" * 6000 + "}\n", None),
    "name-list": ("devices:\n  - {name: [a], transport: ssh, host: h}\n", None),
}


@pytest.mark.parametrize("case", sorted(DEVICES))
def test_hostile_devices_file(case, tmp_path):
    text, needle = DEVICES[case]
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    before = snapshot(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(UserInputError) as ei:
        load_devices(path)
    assert time.perf_counter() - t0 < 20
    msg = str(ei.value)
    assert "devices.yaml" in msg
    if needle:
        assert needle in msg
    assert snapshot(tmp_path) == before and not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("case", ["alias-bomb", "python-tag", "duplicate-name", "bad-yaml"])
def test_hostile_devices_file_cli(case, tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(DEVICES[case][0])
    res = invoke(["devices", "list", "--devices", path], cwd=tmp_path)
    assert_clean_error(res, 2, "devices.yaml")
    assert not (tmp_path / "PWNED").exists()


def test_binary_devices_file(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    with pytest.raises(UserInputError, match="devices.yaml"):
        load_devices(path)


def test_devices_file_is_a_directory(tmp_path):
    with pytest.raises(UserInputError):
        load_devices(tmp_path)


_scalars = st.one_of(st.none(), st.booleans(), st.integers(-70000, 70000), st.text(max_size=10))
_keys = st.sampled_from(["devices", "version", "name", "transport", "host", "port", "user", "tags", "runtimes",
                         "power", "python", "key_file", "local", "ssh", "adb"])
_docs = st.recursive(_scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_keys, inner, max_size=5)),
                     max_leaves=24)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=_docs)
def test_devices_parser_property(doc, tmp_path):
    """Any document: a dict of validated devices (``local`` always there) or one UserInputError, nothing else."""
    path = tmp_path / "d.yaml"
    path.write_text(yaml.safe_dump(doc))
    try:
        devs = load_devices(path)
    except UserInputError as exc:
        assert str(exc)
    else:
        assert "local" in devs and all(d.name == n for n, d in devs.items())
