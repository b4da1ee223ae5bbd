"""``greenroom edge``: the HTTP gateway alone, under uvicorn.

Listens on ``GREENROOM_EDGE_HOST``:``GREENROOM_EDGE_PORT`` (127.0.0.1:8000) unless ``--host`` /
``--port`` say otherwise; talks to the bus named by the settings and to Redis at
``GREENROOM_REDIS_URL`` (127.0.0.1:6379 when empty). Several replicas can run at once: each has
its own reply topic, and rate limits and idempotency keys are shared through Redis.

SIGTERM or SIGINT stops accepting connections, lets requests in flight finish (up to
``GREENROOM_SHUTDOWN_TIMEOUT_S``), closes the reply consumer and the bus, and exits 0.

Exit codes: 0 stopped cleanly; 1 could not start (bus or port unavailable); 2 bad arguments or
settings.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.routes import Route

HELP = "run the HTTP edge gateway"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the listening address, the route table and the edge's token and limit options."""
    parser.add_argument("--host", default=None, help="address to bind (default: edge_host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: edge_port)")
    parser.add_argument(
        "--routes",
        default="edge.api:ROUTES",
        help="module:attribute holding the Route table (default: edge.api:ROUTES)",
    )
    parser.add_argument(
        "--app-dir",
        default=".",
        help="directory put first on the import path for --routes (default: the current one)",
    )
    parser.add_argument("--jwt-issuer", default=None, help="required token issuer (iss)")
    parser.add_argument("--jwt-audience", default=None, help="required token audience (aud)")
    parser.add_argument(
        "--rate-limit-ip", type=int, default=None, help="requests per window per client IP"
    )
    parser.add_argument(
        "--rate-limit-subject", type=int, default=None, help="requests per window per token"
    )
    parser.add_argument("--rate-window", type=int, default=None, help="rate window, seconds")
    parser.add_argument(
        "--max-body-bytes", type=int, default=None, help="largest request body accepted"
    )
    parser.add_argument(
        "--redis-prefix",
        default=None,
        help="prefix of the edge's Redis keys (rate limits, idempotency; default greenroom:edge:)",
    )
    parser.add_argument(
        "--trust-forwarded-for",
        action="store_true",
        help="take the client IP from X-Forwarded-For (only behind a trusted proxy)",
    )


def load_routes(spec: str) -> Sequence[Route]:
    """The route table named by ``module:attribute``.

    Raises:
        ValueError: the spec is malformed, or the attribute is not a sequence of Routes.
        ImportError: the module cannot be imported.
    """
    from edge.routes import Route

    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--routes must be module:attribute, got {spec!r}")
    table = getattr(importlib.import_module(module_name), attribute)
    if not isinstance(table, Sequence) or not all(isinstance(r, Route) for r in table):
        raise ValueError(f"{spec} is not a sequence of edge.routes.Route")
    return table


def run(args: argparse.Namespace) -> int:
    """Serve the edge until SIGTERM/SIGINT; returns the exit code (see the module docstring).

    Raises:
        SettingsError: a ``GREENROOM_*`` value is malformed (the CLI prints it and exits 2).
    """
    import msgspec

    from runtime.config import load_settings
    from runtime.logging import configure_logging

    # As `greenroom run --app-dir`: a console script's sys.path[0] is the venv's bin directory,
    # so --routes could not name a module of the project being served without this.
    app_dir = str(Path(args.app_dir).resolve())
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    from edge.app import create_app
    from edge.config import EdgeConfig

    try:
        routes = load_routes(args.routes)
    except (ValueError, ImportError) as exc:
        print(f"greenroom edge: {exc}", file=sys.stderr)
        return 2
    overrides = {
        "jwt_issuer": args.jwt_issuer,
        "jwt_audience": args.jwt_audience,
        "rate_limit_per_ip": args.rate_limit_ip,
        "rate_limit_per_subject": args.rate_limit_subject,
        "rate_window_s": args.rate_window,
        "max_body_bytes": args.max_body_bytes,
        "redis_prefix": args.redis_prefix,
        "trust_forwarded_for": args.trust_forwarded_for or None,
    }
    config = msgspec.structs.replace(
        EdgeConfig(), **{k: v for k, v in overrides.items() if v is not None}
    )
    app = create_app(settings, routes=routes, config=config)
    server = _server_class()(
        uvicorn_config(
            app,
            host=args.host or settings.edge_host,
            port=args.port or settings.edge_port,
            lifespan="on",
            ws="none",
            # The edge logs one structured line per request itself.
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(settings.shutdown_timeout_s),
            # Longer than any client's or load balancer's idle timeout (httpx and aiohttp keep
            # idle connections 5 s and 15 s, AWS ALB 60 s), so the client always closes an idle
            # connection first. With uvicorn's 5 s default both ends closed at once and a POST
            # sent on the closing connection failed with a read error, never reaching the edge
            # (seen in the chaos suite's S1).
            timeout_keep_alive=KEEP_ALIVE_S,
            # The edge decides itself whether to trust X-Forwarded-For (--trust-forwarded-for);
            # uvicorn's own rewrite of the client address would bypass that setting.
            proxy_headers=False,
        )
    )
    # uvicorn's SIGTERM/SIGINT handlers stop accepting, drain, then run the lifespan shutdown
    # (reply consumer, bus, Redis).
    server.run()
    return 0 if server.started else 1


KEEP_ALIVE_S = 75  # nginx's default keep-alive timeout; see run()


def uvicorn_config(app: Any, **options: Any) -> Any:
    """``uvicorn.Config`` (imported here so ``greenroom --help`` never imports uvicorn).

    Uses the C HTTP parser (httptools) and uvloop when they are installed (they are
    dependencies): the pure-Python fallbacks cost most of the edge's CPU under load.
    """
    import importlib.util

    import uvicorn

    options.setdefault("http", "httptools" if importlib.util.find_spec("httptools") else "h11")
    options.setdefault("loop", "uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
    return uvicorn.Config(app, **options)


def _server_class() -> Any:
    import uvicorn

    class EdgeServer(uvicorn.Server):
        """uvicorn's server, except that a drained edge exits 0.

        After a graceful shutdown uvicorn raises the captured signal again, so the process would
        die of SIGTERM (exit -15) although it stopped cleanly; supervisors read that as a crash.
        """

        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    return EdgeServer
