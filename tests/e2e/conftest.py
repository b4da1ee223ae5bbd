"""End-to-end fixtures: a real edge and real nodes, as processes, on Tansu and Redis.

``start_stack(**options)`` is :func:`tests.support.edge_helpers.edge_stack` bound to this session's
Tansu, Redis and run folder, with a fresh unique name for its topics and Redis keys each call.
Modules start one stack for all their tests (start-up costs seconds of group joins on Tansu);
their tests keep apart by token subject.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from runtime.infra.tansu import TansuServer
from tests.support.edge_helpers import EdgeStack, StackFactory, edge_stack


@pytest.fixture(scope="session")
def start_stack(tansu: TansuServer, redis_url: str, run_dir: Path) -> StackFactory:
    """``with start_stack(things_replicas=2, edge_args=[...]) as stack:`` a running deployment."""

    def start(**options: Any) -> AbstractContextManager[EdgeStack]:
        unique = uuid.uuid4().hex[:10]
        return edge_stack(
            bootstrap=tansu.bootstrap,
            redis_url=redis_url,
            log_dir=run_dir / "e2e" / unique,
            unique=unique,
            **options,
        )

    return start
