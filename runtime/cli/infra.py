"""``greenroom infra``: the embedded development servers, for use from other shells.

``greenroom infra up`` starts what the ``GREENROOM_*`` settings leave unconfigured (Tansu,
SeaweedFS, Postgres, Redis; see :mod:`runtime.infra.stack`), prints ``export GREENROOM_...=...``
lines for another shell, writes them to ``<run_dir>/infra/infra.env`` (mode 0600: it holds the S3
admin secret) and waits. SIGINT (Ctrl-C), SIGTERM or SIGHUP stop every server and exit 0; a server
that dies on its own stops the rest and exits 1. A SIGKILLed ``infra up`` takes its servers with
it (they get ``PR_SET_PDEATHSIG`` on Linux).

``greenroom infra status`` reads ``<run_dir>/infra/infra.json`` and checks each server's process
and port; exit 0 when all are up, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType

import msgspec

from runtime.config import Settings, load_settings

HELP = "start or inspect the embedded development servers"

__all__ = ["HELP", "InfraState", "ServerEntry", "add_arguments", "run"]


class ServerEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One started server as recorded in ``infra.json``."""

    name: str
    pid: int  # 0: started through a wheel's API, pid unknown
    address: str


class InfraState(msgspec.Struct, frozen=True, kw_only=True):
    """The content of ``infra.json``: who runs the servers and where they are."""

    pid: int
    started_at: float
    servers: list[ServerEntry]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the ``up`` and ``status`` actions and ``--run-dir``."""
    parser.add_argument("action", choices=["up", "status"], help="start servers, or show them")
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run directory (default: GREENROOM_RUN_DIR, .run); servers live in <run-dir>/infra",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``infra up`` or ``infra status``; returns the exit code.

    Raises:
        SettingsError: a ``GREENROOM_*`` setting is malformed (the CLI prints it, exit 2).
    """
    settings = load_settings()
    infra_dir = Path(args.run_dir or settings.run_dir).absolute() / "infra"
    if args.action == "status":
        return _status(infra_dir)
    return _up(settings, infra_dir)


class _StopRequested(BaseException):
    """A stop signal arrived; unwinds start-up or the wait so servers are stopped in order.

    A BaseException, like KeyboardInterrupt, so no `except Exception` on the way swallows it.
    """


def _raise_stop(signum: int, _frame: FrameType | None) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def _up(settings: Settings, infra_dir: Path) -> int:
    from runtime.infra._process import ServerStartError
    from runtime.infra.stack import InfraStack

    state_file = infra_dir / "infra.json"
    env_file = infra_dir / "infra.env"
    running = _read_state(state_file)
    if running is not None and _pid_alive(running.pid):
        print(
            f"greenroom infra: already running (pid {running.pid}) in {infra_dir};"
            " see `greenroom infra status`",
            file=sys.stderr,
        )
        return 1
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    stack = InfraStack(settings, infra_dir)
    code = 0
    try:
        stack.start()
        env = stack.env()
        lines = [f"export {name}={shlex.quote(value)}" for name, value in env.items()]
        infra_dir.mkdir(parents=True, exist_ok=True)
        env_file.touch(mode=0o600)
        env_file.write_text("\n".join(lines) + "\n")
        state = InfraState(
            pid=os.getpid(),
            started_at=time.time(),
            servers=[
                ServerEntry(name=name, pid=stack.pids.get(name, 0), address=address)
                for name, address in stack.addresses.items()
            ],
        )
        state_file.write_bytes(msgspec.json.encode(state))
        print("\n".join(lines), flush=True)
        print(f"# infra ready; the lines above are in {env_file}; Ctrl-C stops", flush=True)
        while not (dead := stack.dead()):
            time.sleep(0.5)
        print(f"greenroom infra: {', '.join(dead)} exited; stopping the rest", file=sys.stderr)
        code = 1
    except _StopRequested as stop:
        print(f"# {stop}: stopping", flush=True)
    except ServerStartError as exc:
        print(f"greenroom infra: {exc}", file=sys.stderr)
        code = 1
    finally:
        # A second Ctrl-C must not cut the orderly stop short and orphan a server.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stack.stop()
        for path in (state_file, env_file):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    print("# infra stopped", flush=True)
    return code


def _read_state(path: Path) -> InfraState | None:
    try:
        return msgspec.json.decode(path.read_bytes(), type=InfraState)
    except (OSError, msgspec.DecodeError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _port_open(address: str) -> bool | None:
    """Whether ``address`` accepts a TCP connection; None for a Unix-socket URL (cannot tell)."""
    # Addresses are "host:port", "http://host:port" or a URL with host:port after "@".
    hostport = address.split("://", 1)[-1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not port.isdigit():
        return None
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _status(infra_dir: Path) -> int:
    state = _read_state(infra_dir / "infra.json")
    if state is None or not _pid_alive(state.pid):
        print(f"no `greenroom infra up` is running in {infra_dir}")
        return 1
    print(f"greenroom infra up: pid {state.pid}, settings in {infra_dir / 'infra.env'}")
    all_up = True
    for server in state.servers:
        up = (server.pid == 0 or _pid_alive(server.pid)) and _port_open(server.address) is not False
        all_up = all_up and up
        pid = str(server.pid) if server.pid else "-"
        print(f"  {server.name:<10} {'up' if up else 'DOWN':<5} pid {pid:<8} {server.address}")
    return 0 if all_up else 1
