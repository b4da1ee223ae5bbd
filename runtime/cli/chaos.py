"""``greenroom chaos``: signal random actor processes of a running ``greenroom up``.

Every ``--every`` for ``--duration`` it picks an actor process slot (``--only`` narrows the choice;
the edge only with ``--include-edge``) and sends it ``--signal`` (KILL, TERM, or STOP resumed with
CONT after ``--stop-for``). The victims come from a generator seeded with ``--seed`` (printed when
not given), so a run can be repeated: ``--dry-run`` prints the plan and signals nothing. Each fault
is logged (structlog ``chaos.fault``) and printed; at the end a summary gives faults injected,
restarts seen (``up.json`` restart counts before and after) and the recovery time of each fault
(signal to the slot's new process running again). ``--json PATH`` also writes the summary there.

Exit codes: 0 when every injected fault recovered; 1 when no ``up`` is running, it stopped during
the run, or a fault did not recover within ``--recovery-timeout``; 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import anyio

from runtime.chaos import (
    SIGNALS,
    ChaosConfig,
    ChaosError,
    ChaosReport,
    FaultRecord,
    eligible_targets,
    parse_duration,
    plan_faults,
    require_running,
    run_chaos,
)
from runtime.config import load_settings
from runtime.logging import configure_logging

HELP = "kill actor processes of a running `greenroom up`"

__all__ = ["HELP", "add_arguments", "run"]


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``greenroom chaos``."""
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="run directory of the `greenroom up` to hit (default: GREENROOM_RUN_DIR, .run)",
    )
    parser.add_argument(
        "--every", type=_duration, default=3.0, metavar="DURATION", help="fault period (3s)"
    )
    parser.add_argument(
        "--duration", type=_duration, default=60.0, metavar="DURATION", help="run length (60s)"
    )
    parser.add_argument(
        "--signal",
        type=str.upper,
        choices=list(SIGNALS),
        default="KILL",
        help="KILL (default), TERM, or STOP (resumed with CONT after --stop-for)",
    )
    parser.add_argument(
        "--stop-for",
        type=_duration,
        default=2.0,
        metavar="DURATION",
        help="how long a STOPped process stays frozen (2s)",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="ACTOR[,ACTOR...]",
        help="pick victims only among these actors; repeatable",
    )
    parser.add_argument(
        "--include-edge", action="store_true", help="the edge may be picked too (never by default)"
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the plan (default: random)")
    parser.add_argument(
        "--recovery-timeout",
        type=_duration,
        default=60.0,
        metavar="DURATION",
        help="a fault not recovered within this counts as unrecovered (60s)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write the summary")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan for this seed; signal nothing"
    )


def _print_fault(record: FaultRecord) -> None:
    where = f"{record.actor}-{record.replica}"
    if record.outcome == "injected":
        print(
            f"[{record.at_s:7.2f}s] fault {record.index}: SIG{record.signal} {where}"
            f" (pid {record.pid})",
            flush=True,
        )
    else:
        print(
            f"[{record.at_s:7.2f}s] fault {record.index}: skipped {where}: {record.reason}",
            flush=True,
        )


def _print_recovery(record: FaultRecord) -> None:
    where = f"{record.actor}-{record.replica}"
    if record.recovered_after_s is None:
        print(f"          fault {record.index}: {where} did not recover", flush=True)
    else:
        print(
            f"          fault {record.index}: {where} running again after"
            f" {record.recovered_after_s:.2f}s (pid {record.new_pid})",
            flush=True,
        )


def run(args: argparse.Namespace) -> int:
    """Run the chaos loop and print the summary; see the module docstring for exit codes."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    run_dir: Path = (args.run_dir or Path(settings.run_dir)).absolute()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    only = tuple(o.strip() for value in args.only for o in value.split(",") if o.strip())
    try:
        config = ChaosConfig(
            every_s=args.every,
            duration_s=args.duration,
            signal=args.signal,
            stop_for_s=args.stop_for,
            only=only,
            include_edge=args.include_edge,
            seed=seed,
            recovery_timeout_s=args.recovery_timeout,
        )
    except ValueError as exc:
        print(f"greenroom chaos: {exc}", file=sys.stderr)
        return 2
    try:
        # Checked before anything is printed, so a refusal is the only output.
        state = require_running(run_dir)
        targets = eligible_targets(state, only=only, include_edge=args.include_edge)
        if args.dry_run:
            print(f"plan for seed {seed} (SIG{config.signal}):")
            for fault in plan_faults(config, targets):
                print(f"  at {fault.at_s:7.2f}s  {fault.target.id}")
            return 0
        print(
            f"chaos: SIG{config.signal} every {config.every_s:g}s for {config.duration_s:g}s,"
            f" seed {seed} (repeat with --seed {seed}) over {', '.join(t.id for t in targets)}",
            flush=True,
        )
        report: ChaosReport = anyio.run(
            lambda: run_chaos(run_dir, config, on_fault=_print_fault, on_recovery=_print_recovery)
        )
    except ChaosError as exc:
        print(f"greenroom chaos: {exc}", file=sys.stderr)
        return 1
    print(report.format_summary(), flush=True)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.summary(), indent=2) + "\n")
        print(f"summary written to {args.json}")
    summary = report.summary()
    return 1 if report.aborted or summary["unrecovered"] else 0
