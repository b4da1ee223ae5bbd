"""``greenroom dlq list|replay <service>``: inspect or replay a service's dead-letter topic.

``list`` prints one JSON line per dead letter (id, type, key, error, attempts, source) and moves
nothing. ``replay`` publishes every dead letter back to ``<service>.commands`` (attempt reset,
``gr-dlq-*`` headers removed) and commits its own consumer group
(``greenroom-dlq-replay.<service>``), so running it again replays only what was dead-lettered
since. Both stop once the topic has been quiet for ``--idle`` seconds.
"""

from __future__ import annotations

import argparse
import sys

import anyio

HELP = "inspect or replay a service's dead-letter topic"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``action``, ``service`` and ``--idle``."""
    parser.add_argument("action", choices=["list", "replay"])
    parser.add_argument("service", help="the service name, e.g. orders")
    parser.add_argument(
        "--idle", type=float, default=2.0, help="stop after this many quiet seconds (default 2)"
    )


def run(args: argparse.Namespace) -> int:
    """List or replay; returns 0, or 1 when the bus cannot be reached.

    Raises:
        SettingsError: a ``GREENROOM_*`` value is malformed (the CLI prints it and exits 2).
    """
    from runtime.config import load_settings
    from runtime.logging import configure_logging

    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return anyio.run(_main, args, settings)


async def _main(args: argparse.Namespace, settings: object) -> int:
    import msgspec

    from runtime.bus.base import BrokerError
    from runtime.bus.factory import broker_from_settings
    from runtime.config import Settings
    from runtime.dlq import read_dead_letters
    from runtime.messages import new_id

    assert isinstance(settings, Settings)
    service: str = args.service
    dlq_topic = settings.topic(f"{service}.dlq")
    replay = args.action == "replay"
    group = settings.topic(
        f"greenroom-dlq-replay.{service}" if replay else f"greenroom-dlq-list.{new_id()}"
    )
    try:
        async with broker_from_settings(settings) as broker:
            letters = await read_dead_letters(
                broker,
                dlq_topic,
                group=group,
                idle_s=args.idle,
                replay_to=settings.topic(f"{service}.commands") if replay else None,
            )
    except BrokerError as exc:
        print(f"greenroom dlq: {exc}", file=sys.stderr)
        return 1
    for letter in letters:
        print(msgspec.json.encode(letter).decode())
    verb = "replayed" if replay else "found"
    print(f"{verb} {len(letters)} dead letter(s) on {dlq_topic}", file=sys.stderr)
    return 0
