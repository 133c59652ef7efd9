"""A transport and a power sensor added from a module outside the package: one module, one registration each."""

from __future__ import annotations

import sys
import textwrap

import pytest

PLUGIN = textwrap.dedent('''
    from typing import Literal

    from edgekit.devices.power.base import PowerReader, power_sensor
    from edgekit.devices.spec import DeviceBase
    from edgekit.devices.transports.base import TRANSPORTS
    from edgekit.devices.transports.local import LocalTransport


    class SevenWatts(PowerReader):
        name, kind, source, rails = "seven", "power", "plugin", ["all"]

        def read(self):
            return 7.0


    @power_sensor("seven", scope="board", order=1, summary="a fixed 7 W meter")
    def discover(fs, options):
        return [SevenWatts()]


    class LoopDevice(DeviceBase):
        transport: Literal["loop"]
        python: str | None = None


    @TRANSPORTS.register("loop", spec=LoopDevice, summary="this machine, registered by a plugin")
    class LoopTransport(LocalTransport):
        pass
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    from edgekit.devices.power.base import SENSORS
    from edgekit.devices.transports.base import TRANSPORTS
    from edgekit.registry import load_plugins

    (tmp_path / "ek_devices_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    load_plugins(["ek_devices_plugin"])
    yield
    SENSORS.unregister("seven")
    TRANSPORTS.unregister("loop")
    sys.modules.pop("ek_devices_plugin", None)


def test_plugin_transport_and_sensor_are_found_through_the_registries(plugin, tmp_path):
    from edgekit.devices.power import LocalFS, discover
    from edgekit.devices.profile import transport_for
    from edgekit.devices.spec import load_devices

    devices = tmp_path / "devices.yaml"
    devices.write_text("devices:\n  - name: loopy\n    transport: loop\n    power: seven\n")
    spec = load_devices(devices)["loopy"]
    assert spec.transport == "loop" and spec.power == "seven"
    tr = transport_for(spec)
    assert type(tr).__name__ == "LoopTransport"
    (reader,) = discover(LocalFS(tmp_path), "seven")
    assert reader.read() == 7.0
    # auto tries whole-board sensors first, by their registered order: the plugin's comes before ina3221
    assert [r.name for r in discover(LocalFS(tmp_path), "auto")] == ["seven"]

