"""The devices file: which boards exist and how to reach them.

YAML (``yaml.safe_load``) at ``$EDGEKIT_DEVICES`` or ``<user config dir>/edgekit/devices.yaml``
(``$XDG_CONFIG_HOME`` or ``~/.config``); ``--devices FILE`` overrides. A ``local`` device (this machine)
always exists. Example::

    devices:
      - name: pi5
        transport: ssh
        host: 192.168.1.20
        user: pi
        key: ~/.ssh/id_ed25519        # optional: the SSH agent is used otherwise
        known_hosts: ~/.ssh/known_hosts
        runtimes: [onnxruntime]
        power: auto                   # auto | none | rapl | hwmon | ina3221 | tegrastats | nvml | external
        tags: [arm64]
      - name: phone
        transport: adb
        serial: R58M123ABC
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import UserInputError

POWER_CHOICES = ("auto", "none")  # besides the registered power sensors (edgekit.devices.power.SENSORS)
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class DeviceBase(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    runtimes: list[str] = Field(default_factory=list)
    power: str = "auto"
    power_command: list[str] | None = None  # external meter: argv of a command that prints watts
    sysfs_root: str = "/"  # where /sys lives (tests point it at fixture trees)
    tags: list[str] = Field(default_factory=list)

    def where(self) -> str:
        """How the device is reached, for listings (each transport's model says it)."""
        return self.transport

    @field_validator("runtimes")
    @classmethod
    def _runtimes(cls, v: list[str]) -> list[str]:
        from edgekit.exporters.runtimes import RUNTIMES  # the one runtime registry

        names = [n for n in RUNTIMES.names() if n != "torch"]  # eager torch is a latency baseline, not a runtime
        bad = [r for r in v if r not in names]
        if bad:
            raise ValueError(f"unknown runtime(s) {bad}; accepted: {', '.join(names)}")
        return v

    @field_validator("power")
    @classmethod
    def _power(cls, v: str) -> str:
        from edgekit.devices.power.base import SENSORS

        if v not in POWER_CHOICES and v not in SENSORS:
            raise ValueError(f"unknown power sensor {v!r}; accepted: {', '.join(POWER_CHOICES + tuple(SENSORS))}")
        return v

    @field_validator("power_command", mode="before")
    @classmethod
    def _power_command(cls, v: object) -> object:
        if isinstance(v, str):  # a string is split like a shell would, but never run through a shell
            import shlex

            return shlex.split(v)
        return v


class LocalDevice(DeviceBase):
    transport: Literal["local"] = "local"
    python: str | None = None  # interpreter for the runner; default: the one running edgekit

    def where(self) -> str:
        return "this machine"


class SSHDevice(DeviceBase):
    transport: Literal["ssh"]
    host: str
    user: str
    port: int = Field(default=22, ge=1, le=65535)
    key: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    python: str = "python3"
    remote_dir: str | None = None  # board-side cache; default ~/.cache/edgekit
    connect_timeout_s: float = Field(default=10.0, gt=0)

    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


class ADBDevice(DeviceBase):
    transport: Literal["adb"]
    serial: str
    python: str | None = None  # a python on the device (e.g. Termux) to run the runner; else benchmark binary
    benchmark_binary: str | None = None  # e.g. /data/local/tmp/onnxruntime_perf_test
    remote_dir: str = "/data/local/tmp/edgekit"

    def where(self) -> str:
        return f"serial {self.serial}"




def default_devices_file() -> Path:
    env = os.environ.get("EDGEKIT_DEVICES")
    if env:
        return Path(env).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "edgekit" / "devices.yaml"


def parse_device(data: dict, where: str = "device") -> LocalDevice | SSHDevice | ADBDevice:
    if not isinstance(data, dict):
        raise UserInputError(f"{where}: each device must be a mapping, got {type(data).__name__}")
    from edgekit.devices.transports.base import TRANSPORTS

    transport = data.get("transport")
    if not isinstance(transport, str) or transport not in TRANSPORTS:
        raise UserInputError(f"{where}: transport must be one of {', '.join(TRANSPORTS)} "
                             f"(got {data.get('transport')!r})")
    try:
        return TRANSPORTS.meta(transport)["spec"].model_validate(data)
    except ValidationError as exc:
        msg = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise UserInputError(f"{where}: {msg}") from None


def load_devices(path: str | Path | None = None) -> dict[str, LocalDevice | SSHDevice | ADBDevice]:
    """All devices by name; ``local`` is always present (a file may override its options)."""
    from edgekit.limits import safe_yaml_file

    explicit = path is not None
    path = Path(path).expanduser() if path is not None else default_devices_file()
    devices: dict[str, LocalDevice | SSHDevice | ADBDevice] = {"local": LocalDevice(name="local")}
    if not path.exists():
        if explicit:
            raise UserInputError(f"devices file {path} does not exist")
        return devices
    doc = safe_yaml_file(path, "devices file") or {}  # bounded (size, nesting, aliases); one-line errors
    if not isinstance(doc, dict) or set(doc) - {"devices", "version"}:
        raise UserInputError(f"devices file {path}: expected a mapping with a 'devices' list (and optional "
                             "'version')")
    entries = doc.get("devices") or []
    if not isinstance(entries, list):
        raise UserInputError(f"devices file {path}: 'devices' must be a list")
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        dev = parse_device(entry, where=f"{path}: device #{i + 1} ({name or 'unnamed'})")
        if dev.name in seen:
            raise UserInputError(f"{path}: device name {dev.name!r} appears twice")
        if dev.name == "local" and dev.transport != "local":
            raise UserInputError(f"{path}: the name 'local' is reserved for this machine")
        seen.add(dev.name)
        devices[dev.name] = dev
    return devices


def get_device(name: str, path: str | Path | None = None) -> LocalDevice | SSHDevice | ADBDevice:
    devices = load_devices(path)
    if name not in devices:
        raise UserInputError(f"unknown device {name!r}; known: {', '.join(sorted(devices))} "
                             f"(add one with `edgekit devices add`)")
    return devices[name]


def _write_devices(doc: dict, path: Path) -> None:
    import tempfile

    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".devices.", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    os.replace(tmp, path)


def remove_device(name: str, path: str | Path | None = None, only_tag: str | None = None) -> bool:
    """Remove device ``name`` from the devices file (only if it has ``only_tag``, when given); False if absent."""
    import yaml

    path = Path(path).expanduser() if path is not None else default_devices_file()
    if not path.exists() or name not in load_devices(path) or name == "local":
        return False
    doc = yaml.safe_load(path.read_text()) or {}
    keep = [d for d in doc.get("devices") or [] if d.get("name") != name or
            (only_tag is not None and only_tag not in (d.get("tags") or []))]
    if len(keep) == len(doc.get("devices") or []):
        return False
    doc["devices"] = keep
    _write_devices(doc, path)
    return True


def add_device(entry: dict, path: str | Path | None = None, force: bool = False) -> Path:
    """Validate ``entry`` and append it to the devices file (atomically); replace an existing one with force."""
    import yaml

    path = Path(path).expanduser() if path is not None else default_devices_file()
    dev = parse_device(entry, where=f"new device {entry.get('name')!r}")
    if dev.name == "local" and dev.transport != "local":
        raise UserInputError("the name 'local' is reserved for this machine")
    doc = {"version": 1, "devices": []}
    if path.exists():
        load_devices(path)  # refuse to edit an invalid file
        doc = yaml.safe_load(path.read_text()) or doc
        doc.setdefault("devices", [])
    names = [d.get("name") for d in doc["devices"]]
    if dev.name in names:
        if not force:
            raise UserInputError(f"{path}: device {dev.name!r} already exists (use --force to replace it)")
        doc["devices"] = [d for d in doc["devices"] if d.get("name") != dev.name]
    doc["devices"].append(dev.model_dump(mode="json", exclude_defaults=True) | {"transport": dev.transport})
    _write_devices(doc, path)
    return path
