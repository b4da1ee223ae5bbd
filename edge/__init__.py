"""The Litestar edge gateway: HTTP in, request/reply over the bus out.

Build it with :func:`create_app`; declare endpoints as :class:`Route` data against the actors'
message contracts. Depends only on the runtime and the actors' contracts (DESIGN.md, layout).
"""

from edge.app import create_app
from edge.config import EdgeConfig
from edge.routes import Route

__all__ = ["EdgeConfig", "Route", "create_app"]
