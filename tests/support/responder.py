"""A minimal in-test service: answers ``<service>.commands`` the way the actor runtime does.

For tests of the requester and the edge that need someone on the other end of the bus without a
whole node. Replies go through the runtime's own :mod:`runtime.actor.reply`, so the envelope a
test sees is the one a real actor would send.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec

from runtime.actor.reply import publish_error_reply, publish_reply
from runtime.bus.base import Broker
from runtime.codec import Codec
from runtime.config import Settings
from runtime.errors import DomainError
from runtime.messages import Envelope

__all__ = ["Handler", "responder"]

Handler = Callable[[Any, Envelope], Awaitable[msgspec.Struct | None]]


@asynccontextmanager
async def responder(
    broker: Broker, settings: Settings, service: str, union: Any, handler: Handler
) -> AsyncIterator[list[Envelope]]:
    """Answer ``<service>.commands`` while the block runs; yields the requests seen so far.

    Each request is handled concurrently: a returned contract is the reply, ``None`` sends no
    reply (a lost answer), a raised :class:`DomainError` becomes its typed error reply.
    """
    topic = settings.topic(f"{service}.commands")
    await broker.ensure_topics({topic: 3})
    codec: Codec[Any] = Codec(union)
    seen: list[Envelope] = []

    async def answer(envelope: Envelope) -> None:
        try:
            reply = await handler(codec.decode(envelope.type, envelope.body), envelope)
        except DomainError as exc:
            await publish_error_reply(broker, envelope, exc)
            return
        if reply is not None:
            await publish_reply(broker, envelope, reply)

    async with anyio.create_task_group() as tg:
        ready = anyio.Event()

        async def consume() -> None:
            sub = broker.subscribe([topic], f"{service}-responders")
            await sub.start()
            try:
                ready.set()
                async for delivery in sub:
                    delivery.ack()
                    assert delivery.envelope is not None
                    seen.append(delivery.envelope)
                    tg.start_soon(answer, delivery.envelope)
            finally:
                # Leave the group even though we are being cancelled, or connections leak.
                with anyio.move_on_after(10, shield=True):
                    await sub.close()

        tg.start_soon(consume)
        await ready.wait()
        yield seen
        tg.cancel_scope.cancel()
