"""`edgekit devices list|check|add`: the boards edgekit can profile on."""

from __future__ import annotations

from typing import List, Optional

import typer

DEVICES_OPTION_HELP = "Devices file (default: <config dir>/edgekit/devices.yaml, or $EDGEKIT_DEVICES)."


def register(app: typer.Typer) -> None:
    from edgekit.cli._common import FORCE_OPTION, JSON_OPTION

    devices_app = typer.Typer(help="Boards to profile on: list, check, add, emulate.\n\nExample: edgekit devices check local",
                              no_args_is_help=True)
    app.add_typer(devices_app, name="devices")

    @devices_app.command("list")
    def list_cmd(devices_file: Optional[str] = typer.Option(None, "--devices", help=DEVICES_OPTION_HELP),
                 json_: bool = JSON_OPTION) -> None:
        """List the devices (``local`` always exists).

        Example: edgekit devices list
        """
        from edgekit.cli._common import console, emit_json, run

        def body() -> None:
            from rich.table import Table

            from edgekit.devices.spec import default_devices_file, load_devices

            devs = load_devices(devices_file)
            if json_:
                emit_json({n: d.model_dump(mode="json") for n, d in devs.items()})
                return
            t = Table(title=f"devices ({devices_file or default_devices_file()})")
            for col in ("name", "transport", "where", "runtimes", "power", "tags"):
                t.add_column(col)
            for n, d in devs.items():
                t.add_row(n, d.transport, d.where(), ",".join(d.runtimes) or "auto", d.power, ",".join(d.tags))
            from edgekit.tables import print_table

            print_table(t)

        run(body)

    @devices_app.command("check")
    def check_cmd(name: str = typer.Argument("local", help="Device name."),
                  devices_file: Optional[str] = typer.Option(None, "--devices", help=DEVICES_OPTION_HELP),
                  json_: bool = JSON_OPTION) -> None:
        """Connect and describe a device: OS, arch, CPU/GPU, runtimes, power sensors, governor, clocks, temps.

        Example: edgekit devices check local
        """
        from edgekit.cli._common import console, emit_json, run

        def body() -> None:
            from edgekit.devices.profile import check_device
            from edgekit.devices.spec import get_device

            info = check_device(get_device(name, devices_file))
            if json_:
                emit_json(info)
                return
            print_check(info)

        def print_check(info: dict) -> None:
            from rich.table import Table

            t = Table(title=f"device {info['device']['name']} ({info['device']['transport']})", show_header=False)
            t.add_column("what")
            t.add_column("value")
            t.add_row("OS", info["os"])
            t.add_row("arch", info["arch"])
            emu = info.get("emulation")
            if emu:
                t.add_row("emulated", f"[yellow]yes[/]: {emu.get('emulator', '?')} ({emu.get('qemu', '')}) on a "
                          f"{emu.get('host_arch', '?')} host; latency measured here is emulated")
            t.add_row("CPU", f"{info['cpu']} ({info['cpu_count']} cores)")
            t.add_row("memory", f"{info['memory_mb']} MB" if info.get("memory_mb") else "-")
            t.add_row("GPU", ", ".join(info["gpus"]) or "none found")
            for rt, d in info["runtimes"].items():
                state = (f"{d['version']}" + ("" if d.get("runnable") else " (detected; edgekit cannot run it yet)")
                         if d["available"] else "not available")
                if rt == "tensorrt" and d.get("trtexec"):
                    state += f", trtexec at {d['trtexec']}"
                t.add_row(f"runtime {rt}", state)
            t.add_row("CPU governor", ", ".join(info["cpu_governor"]) if info.get("cpu_governor") else "not readable")
            freqs = info.get("cpu_freq_khz") or {}
            t.add_row("CPU clocks", ", ".join(f"{c} {f / 1000:.0f} MHz" for c, f in freqs.items()) or "not readable")
            temps = info.get("temperatures_c") or {}
            t.add_row("temperature", ", ".join(f"{z} {v:.1f} C" for z, v in temps.items()) or "not readable")
            sensors = info["power_sensors"]
            if sensors:
                for s in sensors:
                    t.add_row(f"power {s['name']}", f"{s['reading']} ({', '.join(s['rails'])}; {s['source']})")
            else:
                t.add_row("power", f"[bold]{info['power_status']}[/]")
            from edgekit.tables import print_table

            print_table(t)

        run(body)

    @devices_app.command("emulate")
    def emulate_cmd(
        name: Optional[str] = typer.Argument(None, help="Board name (written into the devices file)."),
        arch: str = typer.Option("aarch64", "--arch", help="Board architecture (aarch64)."),
        stop: bool = typer.Option(False, "--stop", help="Stop the board and remove its devices-file entry."),
        build_only: bool = typer.Option(False, "--build-only", help="Build (or check) the cached root file system only."),
        idle_w: float = typer.Option(2.0, "--idle-w", help="Power model: watts of the idle board."),
        core_w: float = typer.Option(1.5, "--core-w", help="Power model: watts added per busy CPU core."),
        devices_file: Optional[str] = typer.Option(None, "--devices", help=DEVICES_OPTION_HELP),
        force: bool = typer.Option(False, "--force", help="Restart a running board of that name, or replace a "
                                   "devices-file entry of that name that is not an emulated board."),
    ) -> None:
        """Start an emulated board (Debian arm64 under qemu-user, sshd in its own network namespace) and add it
        to the devices file; its latency is emulated, its power follows a stated model of its CPU time. Root only.

        Example: edgekit devices emulate pi-emu --arch aarch64 && edgekit profile ART --device pi-emu
        """
        from edgekit.cli._common import console, run

        def body() -> None:
            from edgekit.errors import UserInputError

            err = console(stderr=True)
            if build_only:
                from edgekit.devices.farm.host import FarmError, unavailable_reason
                from edgekit.devices.farm.rootfs import build_rootfs

                reason = unavailable_reason(arch)
                if reason:
                    raise FarmError(f"cannot build an {arch} board here: {reason}")
                console().print(f"root file system: [bold]{build_rootfs(arch, log=err.print)}[/]")
                return
            if not name:
                raise UserInputError("give the board's NAME (or --build-only)")
            if stop:
                from edgekit.devices.farm.board import stop_board

                if not stop_board(name, devices_file or _default_file()):
                    raise UserInputError(f"no running emulated board {name!r}")
                console().print(f"stopped [bold]{name}[/]")
                return
            from edgekit.devices.farm.board import start_board
            from edgekit.devices.farm.power import PowerModel

            st = start_board(name, arch, devices_file, PowerModel(idle_w=idle_w, core_w=core_w), force=force,
                             log=err.print)
            console().print(f"board [bold]{name}[/] ({arch}, [yellow]emulated[/]) at root@{st.address}; "
                            f"profile with: edgekit profile ARTIFACT --device {name}")

        run(body)

    def _default_file() -> str:
        from edgekit.devices.spec import default_devices_file

        return str(default_devices_file())

    @devices_app.command("add")
    def add_cmd(
        name: str = typer.Argument(..., help="Device name (letters, digits, . _ -)."),
        transport: str = typer.Option(..., "--transport", help="ssh | adb | local."),
        host: Optional[str] = typer.Option(None, "--host"),
        user: Optional[str] = typer.Option(None, "--user"),
        port: int = typer.Option(22, "--port"),
        key: Optional[str] = typer.Option(None, "--key", help="SSH private key (the agent is used otherwise)."),
        known_hosts: Optional[str] = typer.Option(None, "--known-hosts", help="known_hosts file (default ~/.ssh/known_hosts)."),
        python: Optional[str] = typer.Option(None, "--python", help="Python interpreter on the board."),
        serial: Optional[str] = typer.Option(None, "--serial", help="adb serial."),
        runtime: List[str] = typer.Option([], "--runtime", help="Runtime available there (repeatable)."),
        power: str = typer.Option("auto", "--power", help="auto | none | rapl | hwmon | ina3221 | tegrastats | nvml | external."),
        power_command: Optional[str] = typer.Option(None, "--power-command", help="External meter command that prints watts (split like a shell, never run by one)."),
        tag: List[str] = typer.Option([], "--tag"),
        devices_file: Optional[str] = typer.Option(None, "--devices", help=DEVICES_OPTION_HELP),
        force: bool = FORCE_OPTION,
    ) -> None:
        """Add a device to the devices file (validated before writing).

        Example: edgekit devices add pi5 --transport ssh --host 192.168.1.20 --user pi --key ~/.ssh/id_ed25519
        """
        from edgekit.cli._common import console, run

        def body() -> None:
            from edgekit.devices.spec import add_device

            entry = {"name": name, "transport": transport, "host": host, "user": user, "port": port, "key": key,
                     "known_hosts": known_hosts, "python": python, "serial": serial, "runtimes": runtime,
                     "power": power, "power_command": power_command, "tags": tag}
            if transport != "ssh":
                for k in ("host", "user", "port", "key", "known_hosts"):
                    if k == "port" and port == 22:
                        entry.pop(k)
                    elif entry.get(k) is None:
                        entry.pop(k)
            entry = {k: v for k, v in entry.items() if v is not None and v != []}
            path = add_device(entry, devices_file, force=force)
            console().print(f"added [bold]{name}[/] to {path}")

        run(body)
