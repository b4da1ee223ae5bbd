"""Requester over MemoryBroker, answered by a tiny in-test responder."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
import msgspec
import pytest

from runtime.bus.base import Broker
from runtime.bus.memory import MemoryBroker
from runtime.config import Settings
from runtime.errors import (
    DeadlineExceededError,
    ErrorReply,
    InternalError,
    NotFoundError,
    UnavailableError,
)
from runtime.infra.tansu import TansuServer
from runtime.messages import Envelope
from runtime.metrics import MetricsRegistry
from runtime.request import Requester
from runtime.resilience.deadline import current_deadline, deadline_scope
from tests.support.responder import responder as shared_responder


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="test.Ping"):
    n: int
    delay_s: float = 0.0
    fail: str = ""


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag="test.Pong"):
    n: int
    deadline: int = 0


Handler = Callable[[Ping, Envelope], Awaitable[msgspec.Struct | None]]


async def _default_handler(ping: Ping, envelope: Envelope) -> msgspec.Struct | None:
    if ping.delay_s:
        await anyio.sleep(ping.delay_s)
    if ping.fail:
        return ErrorReply(kind="not_found", message=ping.fail)  # type: ignore[arg-type]
    return Pong(n=ping.n, deadline=envelope.deadline)


def responder(
    broker: Broker, settings: Settings, service: str, handler: Handler = _default_handler
) -> AbstractAsyncContextManager[list[Envelope]]:
    """Answers ``<service>.commands`` concurrently; yields the list of requests it saw."""
    return shared_responder(broker, settings, service, Ping, handler)


@pytest.fixture
def settings(unique: str) -> Settings:
    return Settings(broker="memory", topic_prefix=f"t{unique}.", request_timeout_s=2.0)


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[MemoryBroker, Requester]]:
    async with (
        MemoryBroker() as broker,
        Requester(broker, settings, metrics=MetricsRegistry()) as requester,
    ):
        yield broker, requester


async def test_reply_is_decoded_and_returned(settings: Settings) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc") as seen:
        reply = await requester.request("svc", Ping(n=7), key="k1", reply_type=Pong)
        assert reply.n == 7
        assert requester.pending_count == 0
        request = seen[0]
        assert request.reply_to == requester.reply_topic
        assert request.reply_to == settings.topic(f"replies.{requester.instance}")
        assert request.key == "k1"
        assert request.deadline > time.time() * 1000


async def test_reply_topic_has_one_partition(settings: Settings) -> None:
    async with running(settings) as (broker, requester):
        assert await broker.partition_count(requester.reply_topic) == 1


async def test_concurrent_requests_get_their_own_replies(settings: Settings) -> None:
    results: dict[int, int] = {}
    async with running(settings) as (broker, requester), responder(broker, settings, "svc"):

        async def one(n: int) -> None:
            # Reversed delays so replies arrive in the opposite order to requests.
            reply = await requester.request(
                "svc", Ping(n=n, delay_s=(20 - n) * 0.005), key=str(n), reply_type=Pong
            )
            results[n] = reply.n

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(one, n)
    assert results == {n: n for n in range(20)}


async def test_shared_correlation_id_still_matches_each_reply(settings: Settings) -> None:
    # Two HTTP requests may carry the same X-Correlation-Id; replies match on the request id.
    results: list[int] = []
    async with running(settings) as (broker, requester), responder(broker, settings, "svc"):

        async def one(n: int, delay: float) -> None:
            reply = await requester.request(
                "svc", Ping(n=n, delay_s=delay), key="k", reply_type=Pong, correlation_id="same"
            )
            results.append(reply.n)
            assert reply.n == n

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 1, 0.05)
            tg.start_soon(one, 2, 0.0)
    assert sorted(results) == [1, 2]


async def test_error_reply_raises_the_typed_domain_error(settings: Settings) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc"):
        with pytest.raises(NotFoundError, match="no such order"):
            await requester.request(
                "svc", Ping(n=1, fail="no such order"), key="k", reply_type=Pong
            )
        assert requester.pending_count == 0


async def test_unexpected_reply_type_is_an_internal_error(settings: Settings) -> None:
    async def wrong(ping: Ping, envelope: Envelope) -> msgspec.Struct:
        return Ping(n=ping.n)

    async with running(settings) as (broker, requester), responder(broker, settings, "svc", wrong):
        with pytest.raises(InternalError):
            await requester.request("svc", Ping(n=1), key="k", reply_type=Pong)


async def test_no_reply_by_the_deadline_raises_and_the_late_reply_is_counted(
    settings: Settings,
) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc"):
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError):
            await requester.request(
                "svc", Ping(n=1, delay_s=0.3), key="k", reply_type=Pong, timeout_s=0.1
            )
        elapsed = time.monotonic() - started
        assert requester.pending_count == 0
        assert requester.late_replies == 0
        with anyio.fail_after(2):
            # Polls a counter the requester exposes; there is no event to wait on.
            while requester.late_replies == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        assert requester.late_replies == 1
        assert requester._late_metric.value() == 1
    print(f"deadline raised after {elapsed:.3f}s for a 0.1s timeout")


async def test_cancelled_request_leaves_no_pending_entry(settings: Settings) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc"):
        with anyio.move_on_after(0.05) as scope:
            await requester.request(
                "svc", Ping(n=1, delay_s=0.2), key="k", reply_type=Pong, timeout_s=5
            )
        assert scope.cancelled_caught
        assert requester.pending_count == 0
        assert requester._by_correlation == {}
        with anyio.fail_after(2):
            # Polls a counter the requester exposes; there is no event to wait on.
            while requester.late_replies == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)


async def test_nested_request_inherits_the_remaining_deadline(settings: Settings) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc") as seen:
        outer = int(time.time() * 1000) + 800
        with deadline_scope(outer):
            # No timeout: the inherited deadline is used as is.
            reply = await requester.request("svc", Ping(n=1), key="k", reply_type=Pong)
            assert reply.deadline == outer
            # A longer timeout cannot extend it; a shorter one shortens it.
            await requester.request("svc", Ping(n=2), key="k", reply_type=Pong, timeout_s=60)
            short = await requester.request(
                "svc", Ping(n=3), key="k", reply_type=Pong, timeout_s=0.2
            )
            assert short.deadline < outer
        assert [e.deadline for e in seen[:2]] == [outer, outer]
        assert current_deadline() is None


async def test_nested_request_past_its_deadline_is_not_sent(settings: Settings) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc") as seen:
        with deadline_scope(int(time.time() * 1000) - 1), pytest.raises(DeadlineExceededError):
            await requester.request("svc", Ping(n=1), key="k", reply_type=Pong)
        await anyio.sleep(0.02)
        assert seen == []


async def test_nested_request_times_out_at_the_inherited_deadline(settings: Settings) -> None:
    async with running(settings) as (broker, requester), responder(broker, settings, "svc"):
        started = time.monotonic()
        with deadline_scope(int(time.time() * 1000) + 100), pytest.raises(DeadlineExceededError):
            await requester.request("svc", Ping(n=1, delay_s=1.0), key="k", reply_type=Pong)
        assert time.monotonic() - started < 1.0


async def test_publish_to_unknown_service_is_unavailable(settings: Settings) -> None:
    async with running(settings) as (_broker, requester):
        with pytest.raises(UnavailableError) as info:
            await requester.request("nobody", Ping(n=1), key="k", reply_type=Pong)
        assert info.value.retry_after_s > 0
        assert requester.pending_count == 0


async def test_close_fails_waiting_requests(settings: Settings) -> None:
    errors: list[Exception] = []
    async with MemoryBroker() as broker, responder(broker, settings, "svc"):
        async with anyio.create_task_group() as tg:
            requester = Requester(broker, settings, metrics=MetricsRegistry())
            async with requester:

                async def waiting() -> None:
                    try:
                        await requester.request(
                            "svc", Ping(n=1, delay_s=5), key="k", reply_type=Pong, timeout_s=10
                        )
                    except UnavailableError as exc:
                        errors.append(exc)

                tg.start_soon(waiting)
                await anyio.sleep(0.05)
        assert len(errors) == 1
        with pytest.raises(UnavailableError):
            await requester.request("svc", Ping(n=1), key="k", reply_type=Pong)


async def test_two_requesters_have_separate_reply_topics(settings: Settings) -> None:
    async with (
        MemoryBroker() as broker,
        responder(broker, settings, "svc"),
        Requester(broker, settings) as a,
        Requester(broker, settings) as b,
    ):
        assert a.reply_topic != b.reply_topic
        ra = await a.request("svc", Ping(n=1), key="k", reply_type=Pong)
        rb = await b.request("svc", Ping(n=2), key="k", reply_type=Pong)
        assert (ra.n, rb.n) == (1, 2)
        assert a.late_replies == b.late_replies == 0


@pytest.mark.kafka
async def test_request_reply_over_kafka_on_tansu(tansu: TansuServer, settings: Settings) -> None:
    from runtime.bus.kafka import KafkaBroker

    broker = KafkaBroker(
        tansu.bootstrap,
        idempotence=False,  # Tansu cannot do InitProducerId
        fetch_max_wait_ms=5,  # Tansu does not wake waiting fetches
        session_timeout_ms=6_000,
        heartbeat_interval_ms=500,
    )
    async with (
        broker,
        responder(broker, settings, "svc"),
        Requester(broker, settings, metrics=MetricsRegistry()) as requester,
    ):
        assert await broker.partition_count(requester.reply_topic) == 1
        # The first call may wait for group joins on Tansu; later ones are quick.
        first = await requester.request("svc", Ping(n=1), key="k", reply_type=Pong, timeout_s=30)
        assert first.n == 1
        with pytest.raises(NotFoundError):
            await requester.request("svc", Ping(n=2, fail="gone"), key="k", reply_type=Pong)
        with pytest.raises(DeadlineExceededError):
            await requester.request(
                "svc", Ping(n=3, delay_s=0.5), key="k", reply_type=Pong, timeout_s=0.1
            )
        with anyio.fail_after(5):
            # Polls a counter the requester exposes; there is no event to wait on.
            while requester.late_replies == 0:  # noqa: ASYNC110
                await anyio.sleep(0.01)
        started = time.monotonic()
        for n in range(20):
            assert (await requester.request("svc", Ping(n=n), key=str(n), reply_type=Pong)).n == n
        print(f"20 sequential round trips over Tansu: {time.monotonic() - started:.3f}s")


async def test_reply_consumer_rejoins_after_the_bus_restarts(settings: Settings) -> None:
    async with running(settings) as (broker, requester):
        async with responder(broker, settings, "svc"):
            assert (await requester.request("svc", Ping(n=1), key="k", reply_type=Pong)).n == 1
        await broker.stop()  # closes every subscription, the reply consumer's too
        await broker.start()
        async with responder(broker, settings, "svc"):
            reply = await requester.request("svc", Ping(n=2), key="k", reply_type=Pong)
            assert reply.n == 2
