"""The ``greenroom`` command line.

Each subcommand lives in its own module ``runtime.cli.<name>`` exposing ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code). Modules are imported only
when their command runs, so ``greenroom --help`` stays fast and never imports aiokafka.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["main"]

# name -> (module, one-line help); the order is the order of `greenroom --help`.
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("runtime.cli.up", "start infrastructure, the edge and every actor; keep them alive"),
    "run": ("runtime.cli.run", "run one actor node in the foreground (container entrypoint)"),
    "edge": ("runtime.cli.edge", "run the HTTP edge gateway"),
    "ps": ("runtime.cli.ps", "show the processes `greenroom up` supervises"),
    "infra": ("runtime.cli.infra", "start or inspect the embedded development servers"),
    "dlq": ("runtime.cli.dlq", "inspect or replay a service's dead-letter topic"),
    "chaos": ("runtime.cli.chaos", "kill actor processes of a running `greenroom up`"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in COMMANDS.items():
        if importlib.util.find_spec(module) is not None:
            found[name] = (module, help_text)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; returns the process exit code."""
    parser = argparse.ArgumentParser(
        prog="greenroom", description="Supervised Python actors on Kafka."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = _available()
    for name, (_module, help_text) in commands.items():
        sub.add_parser(name, help=help_text)
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if args_list[0] not in commands:
        parser.error(f"unknown command {args_list[0]!r}; choose from {', '.join(commands)}")
    name = args_list[0]
    module = importlib.import_module(commands[name][0])
    command_parser = argparse.ArgumentParser(
        prog=f"greenroom {name}", description=commands[name][1]
    )
    module.add_arguments(command_parser)
    args = command_parser.parse_args(args_list[1:])
    from runtime.config import SettingsError

    try:
        code: int = module.run(args)
    except SettingsError as exc:
        print(f"greenroom {name}: bad setting: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    raise SystemExit(main())
