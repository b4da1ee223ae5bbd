"""Fixtures for the broker conformance suite: one parameter per Broker implementation.

Kafka parameters run on the session's Tansu with short session timeouts, so departures and
rebalances settle in seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from runtime.bus.base import Broker
from runtime.bus.memory import MemoryBroker
from runtime.infra.tansu import TansuServer

BrokerMaker = Callable[[], Broker]


def kafka_broker(bootstrap: str) -> Broker:
    """A KafkaBroker tuned for Tansu in tests (no idempotence, 5 ms fetch wait, short sessions)."""
    from runtime.bus.kafka import KafkaBroker

    return KafkaBroker(
        bootstrap,
        idempotence=False,
        fetch_max_wait_ms=5,
        connect_timeout_s=10.0,
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
        commit_interval_s=0.2,
        join_timeout_s=60.0,
    )


@pytest.fixture(
    params=[
        pytest.param("memory", marks=pytest.mark.contract),
        pytest.param("kafka", marks=[pytest.mark.contract, pytest.mark.kafka]),
    ]
)
def make_broker(request: pytest.FixtureRequest) -> BrokerMaker:
    """A factory of new, not yet started brokers of the parametrised kind."""
    if request.param == "memory":
        return lambda: MemoryBroker(commit_interval_s=0.2)
    tansu: TansuServer = request.getfixturevalue("tansu")
    return lambda: kafka_broker(tansu.bootstrap)


@pytest.fixture
async def broker(make_broker: BrokerMaker) -> AsyncIterator[Broker]:
    """A started broker of the parametrised kind, stopped after the test."""
    async with make_broker() as started:
        yield started
