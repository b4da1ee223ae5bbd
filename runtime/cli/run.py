"""``greenroom run <actor>``: one actor node in the foreground (the container entrypoint).

``<actor>`` is a service name (``orders`` -> package ``actors.orders``) or ``module:Class``.
Settings come from ``GREENROOM_*`` variables (or ``GREENROOM_CONFIG``). The first SIGTERM or
SIGINT drains the node (stop fetching, finish held work within ``GREENROOM_SHUTDOWN_TIMEOUT_S``,
commit, exit 0); a second one stops at once (exit 130).

Exit codes: 0 drained cleanly; 1 the node failed (bus unreachable, consumer kept crashing);
2 bad arguments or settings; 130 stopped hard by a second signal.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import anyio

HELP = "run one actor node in the foreground (container entrypoint)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``actor``, ``--health-file`` and ``--app-dir``."""
    parser.add_argument("actor", help="service name (package actors.<name>) or module:Class")
    parser.add_argument(
        "--health-file",
        type=Path,
        default=None,
        help="rewrite this JSON heartbeat file every second while running (for health checks)",
    )
    parser.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on the import path for module:Class (default: the current one)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the node until it is drained by a signal; returns the exit code (see module doc).

    Raises:
        SettingsError: a ``GREENROOM_*`` value is malformed (the CLI prints it and exits 2).
    """
    from runtime.config import load_settings
    from runtime.logging import configure_logging
    from runtime.registry import ActorNotFoundError, resolve_actor

    # As uvicorn's --app-dir: `module:Class` resolves against the project directory even when
    # `greenroom` runs as a console script (whose sys.path[0] is the venv's bin directory).
    app_dir = str(Path(args.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    try:
        actor = resolve_actor(args.actor)
    except ActorNotFoundError as exc:
        print(f"greenroom run: {exc}", file=sys.stderr)
        return 2
    from runtime.node import Node

    node = Node(actor, settings, health_file=args.health_file)
    return anyio.run(_serve, node)


async def _serve(node: object) -> int:
    from runtime.bus.base import BrokerError
    from runtime.logging import get_logger
    from runtime.node import Node
    from runtime.supervision import SupervisorGaveUp

    assert isinstance(node, Node)
    log = get_logger("runtime.cli.run", actor=node.actor_type.name)
    hard_stop = False

    async def watch_signals(scope: anyio.CancelScope) -> None:
        nonlocal hard_stop
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if node.state in ("created", "starting", "running"):
                    log.info("signal.drain", signal=signal.Signals(signum).name)
                    node.drain()
                else:
                    log.warning("signal.hard_stop", signal=signal.Signals(signum).name)
                    hard_stop = True
                    scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_signals, tg.cancel_scope)
            await node.run()
            tg.cancel_scope.cancel()
    except SupervisorGaveUp as exc:
        log.exception("node.gave_up", reason=str(exc))
        return 1
    except BrokerError as exc:
        log.exception("node.failed", error=str(exc))
        return 1
    return 130 if hard_stop else 0
