"""``greenroom up``: infrastructure, one node process per actor replica and the edge, kept alive.

Steps: load settings; start the embedded development infrastructure unless a Kafka bootstrap is
configured (``--infra`` overrides); then supervise one ``greenroom run <actor>`` process per
replica and ``greenroom edge`` (see :mod:`runtime.procsup`). Children get the settings as
``GREENROOM_*`` variables and write their output to ``<run_dir>/logs/<actor>-<replica>.log``.

A process that dies is restarted after an exponential backoff with full jitter. When one actor's
processes exit more than ``--max-restarts`` times within ``--period`` seconds, ``up`` gives up the
OTP way: it stops everything (edge first) and exits 1 with a message naming the actor, its exit
statuses and the last lines of its log, rather than run on with a service silently missing.

Exit codes: 0 after a graceful stop (Ctrl-C / SIGTERM; a second one kills what is left), 1 when the
supervisor gave up on an actor, the infrastructure did not start, or another ``up`` already runs
with this run directory, 2 on bad arguments or settings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import signal
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import anyio
import msgspec

from runtime.config import Settings, load_settings
from runtime.logging import configure_logging, get_logger
from runtime.procsup import (
    ProcessGaveUp,
    ProcessSpec,
    ProcessSupervisor,
    UpState,
    read_state,
    supervisor_alive,
)
from runtime.supervision.backoff import Backoff
from runtime.supervision.intensity import RestartIntensity

HELP = "start infrastructure, the edge and every actor; keep them alive"

__all__ = [
    "HELP",
    "UsageError",
    "add_arguments",
    "build_specs",
    "companion_specs",
    "parse_scale",
    "run",
]

DEFAULT_MAX_RESTARTS = 5
DEFAULT_PERIOD_S = 60.0
# A node needs a second or two to start, so the period must be long enough that a node which
# crashes on start still exceeds the intensity (instead of restarting forever, slowly).


class UsageError(ValueError):
    """A command-line argument does not fit (unknown actor, bad scale); the message says which."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``greenroom up``."""
    parser.add_argument(
        "--actors",
        action="append",
        default=[],
        metavar="ACTOR[,ACTOR...]",
        help="actors to run: names of `actors.<name>` packages or module:Class"
        " (default: every actor the registry knows); repeatable",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="run only these actors (by actor name); repeatable",
    )
    parser.add_argument(
        "--scale",
        action="append",
        default=[],
        metavar="NAME=N[,NAME=N...]",
        help="replicas per actor, e.g. --scale orders=3 (default 1); repeatable",
    )
    parser.add_argument("--no-edge", action="store_true", help="do not start the edge gateway")
    parser.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on the import path for module:Class, here and in every node"
        " (default: the current one)",
    )
    parser.add_argument(
        "--infra",
        choices=("auto", "embedded", "none"),
        default="auto",
        help="auto (default): embedded servers unless GREENROOM_KAFKA_BOOTSTRAP is set;"
        " embedded: start every server not configured; none: start nothing",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=DEFAULT_MAX_RESTARTS,
        help=f"restarts per actor tolerated within --period (default {DEFAULT_MAX_RESTARTS})",
    )
    parser.add_argument(
        "--period",
        type=float,
        default=DEFAULT_PERIOD_S,
        metavar="SECONDS",
        help=f"restart intensity period (default {DEFAULT_PERIOD_S:g})",
    )
    parser.add_argument(
        "--backoff-base",
        type=float,
        default=0.5,
        metavar="SECONDS",
        help="first restart waits up to this; doubles per restart (full jitter; default 0.5)",
    )
    parser.add_argument(
        "--backoff-cap",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="longest wait before a restart (default 10)",
    )


def _split(values: Iterable[str]) -> list[str]:
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def parse_scale(values: Iterable[str]) -> dict[str, int]:
    """``["orders=3", "payments=2,users=1"]`` -> ``{"orders": 3, "payments": 2, "users": 1}``.

    Raises:
        UsageError: an item is not ``NAME=N`` with N a whole number >= 0.
    """
    scale: dict[str, int] = {}
    for item in _split(values):
        name, sep, count = item.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit():
            raise UsageError(f"--scale {item!r}: expected NAME=N with N >= 0, e.g. orders=3")
        scale[name.strip()] = int(count)
    return scale


def _targets(wanted: Sequence[str]) -> list[tuple[str, str]]:
    """``(actor name, what greenroom run is given)`` per wanted actor; all known ones by default.

    Raises:
        UsageError: nothing to run, or a ``module:Class`` that does not name an actor.
    """
    from runtime.registry import ActorNotFoundError, actor_names, resolve_actor

    if not wanted:
        wanted = actor_names()
        if not wanted:
            raise UsageError("no actors found under the `actors` package; name some with --actors")
    targets = []
    for target in wanted:
        # A plain name is the actor's name by definition; module:Class is imported for its name.
        # Either way the node resolves it again, and reports a bad name in its own log.
        try:
            name = resolve_actor(target).name if ":" in target else target
        except ActorNotFoundError as exc:
            raise UsageError(str(exc)) from exc
        targets.append((name, target))
    return targets


def _greenroom_argv() -> list[str]:
    # The console script beside this interpreter gives children a readable process title
    # ("greenroom run orders" in ps/top); fall back to the interpreter when it is not installed.
    script = Path(sys.executable).with_name("greenroom")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from runtime.cli import main; sys.exit(main())"]


def build_specs(
    targets: Sequence[tuple[str, str]],
    *,
    scale: dict[str, int],
    only: Sequence[str],
    edge: bool,
    env: dict[str, str],
    run_dir: Path,
    app_dir: str | None = None,
) -> list[ProcessSpec]:
    """One spec per actor replica (``greenroom run <target>``), then the edge when asked.

    ``targets`` pairs each actor's name with what ``greenroom run`` is given (name or
    module:Class); ``app_dir`` is passed on as its ``--app-dir``. Each node writes its heartbeat
    to ``<run_dir>/health/<actor>-<replica>.json``, which tells the supervisor it is running.
    Actors start first and the edge last, so the edge finds them ready; the supervisor stops
    the edge first.

    Raises:
        UsageError: ``--only`` or ``--scale`` names an actor that is not in ``targets``.
    """
    names = [name for name, _ in targets]
    for label, wanted in (("--only", list(only)), ("--scale", list(scale))):
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            raise UsageError(
                f"{label} names unknown actor(s) {', '.join(unknown)}; known: {', '.join(names)}"
            )
    base = _greenroom_argv()
    app = ("--app-dir", app_dir) if app_dir else ()
    health = run_dir / "health"
    specs = [
        ProcessSpec(
            name=name,
            replica=replica,
            argv=(
                *base,
                "run",
                target,
                *app,
                "--health-file",
                str(health / f"{name}-{replica}.json"),
            ),
            env=env,
            health_file=str(health / f"{name}-{replica}.json"),
        )
        for name, target in targets
        if not only or name in only
        for replica in range(scale.get(name, 1))
    ]
    if edge:
        specs.append(ProcessSpec(name="edge", argv=(*base, "edge"), env=env, kind="edge"))
    return specs


def companion_specs(specs: Sequence[ProcessSpec], run_dir: Path) -> list[ProcessSpec]:
    """One process per helper an actor in ``specs`` declares, to start before the actors.

    An actor class may name a helper it needs running beside it as ``companion = (name, module)``
    (the payments actor's payment-provider stand-in); it is run as ``python -m <module> --run-dir
    <run_dir>`` and supervised like an actor process. Each helper runs once, whatever the scale.
    """
    from runtime.registry import ActorNotFoundError, resolve_actor

    out: list[ProcessSpec] = []
    seen: set[str] = set()
    for spec in specs:
        if spec.kind != "actor" or spec.replica != 0:
            continue
        try:
            companion = getattr(resolve_actor(spec.name), "companion", None)
        except ActorNotFoundError:
            continue  # a module:Class target; its node reports its own problems
        if not companion or companion[0] in seen:
            continue
        name, module = companion
        seen.add(name)
        argv = (sys.executable, "-m", module, "--run-dir", str(run_dir))
        out.append(ProcessSpec(name=name, argv=argv, env=spec.env))
    return out


def _wants_infra(mode: str, settings: Settings) -> bool:
    if mode != "auto":
        return mode == "embedded"
    return settings.broker == "kafka" and not settings.kafka_bootstrap


class _Announce:
    """The supervisor's ``task_status``: prints each process once all were spawned."""

    def __init__(self, supervisor: ProcessSupervisor, run_dir: Path) -> None:
        self._supervisor = supervisor
        self._run_dir = run_dir

    def started(self, value: None = None) -> None:
        state = self._supervisor.snapshot()
        for proc in state.processes:
            pid = proc.pid if proc.pid is not None else f"- ({proc.state})"
            print(f"started {proc.actor}-{proc.replica} pid {pid}", flush=True)
        print(
            f"supervisor pid {state.supervisor_pid}; logs in {self._run_dir / 'logs'};"
            " `greenroom ps` shows the table; Ctrl-C stops everything",
            flush=True,
        )


async def _supervise(supervisor: ProcessSupervisor, run_dir: Path) -> ProcessGaveUp | None:
    """Run the supervisor until a signal stops it or it gives up (returned, not raised)."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with anyio.create_task_group() as tg:

            async def forward_signals() -> None:
                received = 0
                async for signum in signals:
                    received += 1
                    if received == 1:
                        print(
                            f"{signal.Signals(signum).name}: stopping every process"
                            f" (up to {supervisor.shutdown_timeout_s:g}s; again to kill now)",
                            file=sys.stderr,
                            flush=True,
                        )
                        supervisor.stop()
                    else:
                        supervisor.stop(kill=True)

            tg.start_soon(forward_signals)
            try:
                await supervisor.run(task_status=_Announce(supervisor, run_dir))
            except ProcessGaveUp as exc:
                return exc
            finally:
                tg.cancel_scope.cancel()
    return None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _already_running(run_dir: Path) -> UpState | None:
    # An unreadable state file is not a running `up`; the new supervisor overwrites it.
    with contextlib.suppress(OSError, msgspec.DecodeError):
        state = read_state(run_dir)
        if state and state.state not in ("stopped", "gave_up") and supervisor_alive(state):
            return state
    return None


def _plan(args: argparse.Namespace, run_dir: Path, app_dir: str) -> list[ProcessSpec]:
    """Check every argument before anything starts; the specs, without the child environment.

    Raises:
        UsageError: an unknown actor, a bad --scale, bad restart options, or nothing to run.
    """
    scale = parse_scale(args.scale)
    targets = _targets(_split(args.actors))
    edge = not args.no_edge
    if edge and importlib.util.find_spec("runtime.cli.edge") is None:
        get_logger("runtime.cli.up").warning(
            "up.edge_unavailable", note="runtime.cli.edge is not installed; running no edge"
        )
        edge = False
    specs = build_specs(
        targets,
        scale=scale,
        only=_split(args.only),
        edge=edge,
        env={},
        run_dir=run_dir,
        app_dir=app_dir,
    )
    if not specs:
        raise UsageError("nothing to run (check --only and --scale)")
    specs = [*companion_specs(specs, run_dir), *specs]
    try:  # the same checks ProcessSupervisor makes, before any server is started
        RestartIntensity(args.max_restarts, args.period)
        Backoff(args.backoff_base, args.backoff_cap)
    except ValueError as exc:
        raise UsageError(f"restart options: {exc}") from exc
    return specs


def _start_infra(stack: contextlib.ExitStack, settings: Settings, run_dir: Path) -> Settings:
    """Start the embedded servers (stopped when ``stack`` closes); the settings that reach them.

    InfraStack prints a line per server as it starts and stops them.

    Raises:
        UsageError: the embedded infrastructure is not installed.
        ServerStartError: a server did not start (those already started are stopped).
        RuntimeError: a server's package is missing (the message names the extra to install).
    """
    try:
        from runtime.infra.stack import InfraStack
    except ImportError as exc:
        raise UsageError(
            "embedded infrastructure is not available (runtime.infra.stack); set"
            " GREENROOM_KAFKA_BOOTSTRAP and the other server settings, or pass --infra none"
        ) from exc
    print(f"starting embedded infrastructure in {run_dir / 'infra'} ...", flush=True)
    # Registered first so it runs last: after InfraStack has stopped every server.
    stack.callback(print, "infrastructure stopped", flush=True)
    infra = stack.enter_context(InfraStack(settings, run_dir / "infra"))
    return infra.settings()


def run(args: argparse.Namespace) -> int:
    """Start everything, supervise until stopped; see the module docstring for exit codes.

    Raises:
        SettingsError: a ``GREENROOM_*`` setting is malformed (the CLI prints it, exit 2).
    """
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    run_dir = Path(settings.run_dir).absolute()
    # As `greenroom run --app-dir`: module:Class resolves against the project directory even when
    # `greenroom` runs as a console script (whose sys.path[0] is the venv's bin directory).
    app_dir = str(Path(args.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        planned = _plan(args, run_dir, app_dir)
    except UsageError as exc:
        print(f"greenroom up: {exc}", file=sys.stderr)
        return 2
    running = _already_running(run_dir)
    if running is not None:
        print(
            f"greenroom up: already running with run dir {run_dir}"
            f" (supervisor pid {running.supervisor_pid}); see `greenroom ps`",
            file=sys.stderr,
        )
        return 1
    # Until the supervisor's own signal handling takes over, make SIGTERM unwind like Ctrl-C so
    # infrastructure being started is still stopped (the default action would orphan it).
    signal.signal(signal.SIGTERM, _interrupt)
    with contextlib.ExitStack() as stack:
        if _wants_infra(args.infra, settings):
            from runtime.infra._process import ServerStartError

            try:
                settings = _start_infra(stack, settings, run_dir)
            except (UsageError, ServerStartError, RuntimeError) as exc:
                print(f"greenroom up: infrastructure: {exc}", file=sys.stderr)
                return 1
        # Unbuffered children: their log lines reach the log file as they happen, and the last
        # lines before a crash are not lost in a buffer.
        env = {**settings.env(), "PYTHONUNBUFFERED": "1"}
        supervisor = ProcessSupervisor(
            [msgspec.structs.replace(spec, env=env) for spec in planned],
            run_dir=run_dir,
            max_restarts=args.max_restarts,
            period_s=args.period,
            backoff_base_s=args.backoff_base,
            backoff_cap_s=args.backoff_cap,
            shutdown_timeout_s=settings.shutdown_timeout_s,
        )
        gave_up = anyio.run(_supervise, supervisor, run_dir)
        if gave_up is not None:
            print(f"greenroom up: {gave_up.reason}", file=sys.stderr, flush=True)
            return 1
        print("all processes stopped", flush=True)
    return 0
