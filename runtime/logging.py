"""structlog configuration: one call, JSON or console output, bound context per actor."""

from __future__ import annotations

import logging
import sys
from typing import Any

import msgspec
import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _json_dumps(event: Any, **_: Any) -> str:
    # msgspec's encoder is several times faster than json.dumps on the per-request log line;
    # anything it cannot encode natively is written as its str().
    return msgspec.json.encode(event, enc_hook=str).decode()


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    """Configure structlog process-wide. Logs go to stderr; stdout stays free for CLI output."""
    renderer: Any = (
        structlog.processors.JSONRenderer(serializer=_json_dumps)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A lazy structlog logger with ``logger_name=name`` and any extra context.

    Lazy on purpose: a module-level logger made at import time, before
    :func:`configure_logging`, must still use the configuration in force when it first logs.
    (``logger=`` cannot be used as the key: it clashes with ``structlog.wrap_logger``'s own
    ``logger`` parameter.)
    """
    return structlog.get_logger(logger_name=name, **context)
