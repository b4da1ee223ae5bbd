"""Request/reply over the bus: the calling side (DESIGN.md, request/reply and the edge).

A :class:`Requester` owns one reply topic, ``replies.<instance>`` (one partition, read by a
consumer group of its own, so no other process ever sees its replies). :meth:`Requester.request`
publishes a contract to ``<service>.commands`` with ``reply_to``, a correlation id and an absolute
deadline, then waits for the matching reply:

* a result contract is decoded and returned;
* an :class:`~runtime.errors.ErrorReply` is raised as the matching
  :class:`~runtime.errors.DomainError` (``NotFoundError``, ``ConflictError``, ...);
* no reply by the deadline raises :class:`~runtime.errors.DeadlineExceededError`.

Replies are matched on ``causation_id`` (the responder sets it to the request's envelope id, which
is unique even when many requests share one correlation id, as HTTP requests with the same
``X-Correlation-Id`` do), falling back to ``correlation_id`` for responders that only echo that.
A reply nobody waits for any more (its caller timed out or was cancelled) is dropped and counted
in :attr:`Requester.late_replies` and the ``greenroom_late_replies_total`` metric.

Deadlines come from :mod:`runtime.resilience.deadline`: a request made inside a handler (which
runs under ``deadline_scope(envelope.deadline)``) never gets more time than the message it serves.

Reply topics are not deleted on close (the ``Broker`` contract has no delete); on Kafka give the
``replies.`` topics a short retention so those of departed processes age out.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import AsyncGenerator, Mapping
from contextlib import AsyncExitStack, aclosing
from types import TracebackType
from typing import Any, Final, Self, TypeVar, final

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from runtime.bus.base import Broker, BrokerError, Delivery, Subscription
from runtime.codec import Codec, DecodeError, encode
from runtime.config import Settings
from runtime.errors import (
    ERROR_REPLY_TYPE,
    DeadlineExceededError,
    DomainError,
    ErrorReply,
    InternalError,
    UnavailableError,
    error_from_reply,
)
from runtime.logging import get_logger
from runtime.messages import Envelope
from runtime.metrics import MetricsRegistry
from runtime.metrics import registry as default_registry
from runtime.resilience.deadline import current_deadline

__all__ = ["Requester", "RequesterClosedError", "new_instance_id"]

R = TypeVar("R")


def _log() -> Any:
    # Looked up per use, not bound at import: a logger bound before configure_logging() keeps
    # structlog's default configuration (stdout, console format) for good.
    return get_logger("runtime.request")


_error_decoder: Final = msgspec.json.Decoder(ErrorReply)

# A publish that fails because the bus is down is reported as "unavailable"; this is the
# Retry-After hint the edge passes on (the broker client reconnects within a few seconds).
_BUS_RETRY_AFTER_S: Final = 1.0
_CLOSE_TIMEOUT_S: Final = 10.0
_REJOIN_MAX_S: Final = 5.0


class RequesterClosedError(UnavailableError):
    """The requester was closed (or never started) while a request needed it."""


def new_instance_id() -> str:
    """A process-unique requester id, safe in a Kafka topic name: ``<pid>-<12 hex digits>``."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:12]}"


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@final
class _Pending:
    """One request waiting for its reply; set once by the reply consumer (or by close)."""

    __slots__ = ("correlation_id", "error", "event", "reply")

    def __init__(self, correlation_id: str) -> None:
        self.correlation_id = correlation_id
        self.event = anyio.Event()
        self.reply: Envelope | None = None
        self.error: Exception | None = None


@final
class Requester:
    """Sends requests over the bus and awaits their replies on a reply topic of its own.

    Use as ``async with Requester(broker, settings) as requester: ...``; the broker must already
    be started. Entering creates the reply topic (1 partition), joins a consumer group of its own
    and starts the reply consumer in a task group owned by this object; leaving stops it and fails
    every request still waiting with :class:`RequesterClosedError`.

    Works the same over ``MemoryBroker`` and ``KafkaBroker``; several requesters (edge replicas,
    actor nodes) can share a broker, each with its own reply topic.
    """

    def __init__(
        self,
        broker: Broker,
        settings: Settings | None = None,
        *,
        instance: str | None = None,
        default_timeout_s: float | None = None,
        metrics: MetricsRegistry | None = None,
    ) -> None:
        """``default_timeout_s`` (default ``settings.request_timeout_s``) bounds a request made
        with no ``timeout_s`` and no deadline in force."""
        self._broker = broker
        self._settings = settings or Settings()
        self.instance = instance or new_instance_id()
        self.reply_topic = self._settings.topic(f"replies.{self.instance}")
        self._group = self.reply_topic  # a group of its own: replies are never shared
        self._default_timeout_s = (
            self._settings.request_timeout_s if default_timeout_s is None else default_timeout_s
        )
        self._pending: dict[str, _Pending] = {}  # request envelope id -> waiter
        self._by_correlation: dict[str, str] = {}  # correlation id -> request envelope id
        self._codecs: dict[Any, Codec[Any]] = {}
        self._stack: AsyncExitStack | None = None
        self._task_group: TaskGroup | None = None
        self._running = False
        self.late_replies = 0
        """Replies that arrived after their caller stopped waiting (or matched no request)."""
        metrics = metrics or default_registry
        self._late_metric = metrics.counter(
            "greenroom_late_replies_total", "replies that arrived after their request gave up"
        )
        self._requests_metric = metrics.counter(
            "greenroom_requests_total", "requests sent over the bus, by service and outcome"
        )
        self._latency_metric = metrics.histogram(
            "greenroom_request_seconds", "time from publishing a request to its reply"
        )

    # --- lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Create the reply topic, join its group and start consuming replies.

        Must be paired with :meth:`close` in the same task (``async with`` does that).

        Raises:
            BrokerError: the broker is not started or cannot create the topic.
        """
        if self._stack is not None:
            raise RuntimeError("Requester already started")
        await self._broker.ensure_topics({self.reply_topic: 1})
        stack = AsyncExitStack()
        try:
            self._task_group = await stack.enter_async_context(anyio.create_task_group())
            # The consumer reports started only once it has joined its group, so no request can
            # be sent before someone is listening for its reply.
            await self._task_group.start(self._consume)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        self._running = True

    async def close(self) -> None:
        """Stop consuming and fail every waiting request with RequesterClosedError. Idempotent."""
        stack, self._stack = self._stack, None
        self._running = False
        if stack is None:
            return
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        try:
            await stack.aclose()
        finally:
            self._task_group = None
            for pending in self._pending.values():
                pending.error = RequesterClosedError("requester closed", retry_after_s=1.0)
                pending.event.set()

    async def _consume(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read replies until cancelled; rejoin (bounded backoff, full jitter) if the bus drops us.

        A failure before the first join propagates to :meth:`start`; later ones are logged and
        retried, since a requester without its reply consumer would only produce timeouts.
        """
        joined = False
        failures = 0
        while True:
            try:
                async with aclosing(self._subscribe()) as deliveries:
                    async for delivery in deliveries:
                        if delivery is None:  # joined the group (again)
                            if not joined:
                                joined = True
                                task_status.started()
                            continue
                        failures = 0
                        # Acknowledged on receipt: a reply is useful only to its live waiter, and
                        # re-reading old replies after a restart would only produce late replies.
                        delivery.ack()
                        envelope = delivery.envelope
                        if envelope is None:
                            _log().warning(
                                "invalid reply record dropped", error=str(delivery.error)
                            )
                            continue
                        self._deliver(envelope)
                reason = "subscription ended"
            except BrokerError as exc:
                if not joined:
                    raise
                reason = str(exc)
            failures += 1
            delay = random.uniform(0, min(_REJOIN_MAX_S, 0.1 * 2**failures))
            _log().warning("reply consumer rejoining", reason=reason, delay_s=round(delay, 3))
            await anyio.sleep(delay)

    async def _subscribe(self) -> AsyncGenerator[Delivery | None, None]:
        """Yields None once joined, then every delivery; leaves the group however it ends."""
        # from_beginning: the topic is new and ours alone, so every record on it is a reply to
        # us, including one that lands before the group assignment completes.
        subscription: Subscription = self._broker.subscribe(
            [self.reply_topic], self._group, from_beginning=True
        )
        await subscription.start()
        try:
            yield None
            async for batch in subscription.batches():
                for delivery in batch:
                    yield delivery
        finally:
            # Usually reached by cancellation (close): shield the leave, or the consumer's
            # network shutdown is cancelled half-way and its connections leak. Bounded.
            with anyio.move_on_after(_CLOSE_TIMEOUT_S, shield=True):
                await subscription.close()

    def _deliver(self, reply: Envelope) -> None:
        request_id = reply.causation_id if reply.causation_id in self._pending else None
        if request_id is None:
            request_id = self._by_correlation.get(reply.correlation_id)
        pending = self._pending.get(request_id) if request_id is not None else None
        if pending is None or pending.event.is_set():
            self.late_replies += 1
            self._late_metric.inc()
            _log().debug(
                "late reply dropped",
                correlation_id=reply.correlation_id,
                causation_id=reply.causation_id,
                type=reply.type,
            )
            return
        pending.reply = reply
        pending.event.set()

    # --- requests

    @property
    def pending_count(self) -> int:
        """How many requests are waiting for a reply now."""
        return len(self._pending)

    def _codec(self, reply_type: Any) -> Codec[Any]:
        codec = self._codecs.get(reply_type)
        if codec is None:
            codec = self._codecs[reply_type] = Codec(reply_type)
        return codec

    def _deadline_for(self, timeout_s: float | None) -> int:
        """The absolute deadline of a new request: its own timeout, never past the inherited one."""
        inherited = current_deadline()
        if timeout_s is None:
            if inherited is not None:
                return inherited
            timeout_s = self._default_timeout_s
        own = _now_ms() + int(timeout_s * 1000)
        return own if inherited is None else min(own, inherited)

    async def request(
        self,
        service: str,
        message: msgspec.Struct,
        *,
        key: str,
        reply_type: type[R],
        timeout_s: float | None = None,
        headers: Mapping[str, str] | None = None,
        correlation_id: str = "",
        causation_id: str = "",
    ) -> R:
        """Send ``message`` to ``<service>.commands`` and return the decoded reply.

        ``key`` picks the partition (usually the entity id). The deadline is ``timeout_s`` from
        now (default: the requester's default timeout), but never later than the deadline in
        force in :mod:`runtime.resilience.deadline` (a nested call inherits what is left).
        ``correlation_id`` defaults to the new request's own id; ``reply_type`` may be one
        contract class or a union of them.

        Raises:
            DomainError: the responder answered with an error reply (the matching subclass:
                NotFoundError, ConflictError, InvalidError, UnavailableError, ...).
            DeadlineExceededError: no reply arrived by the deadline (or it had already passed).
            UnavailableError: the bus refused the publish, or the requester is closed
                (RequesterClosedError).
            InternalError: the reply's type is not one of ``reply_type`` or does not decode.
        """
        if not self._running:
            raise RequesterClosedError("requester is not started", retry_after_s=1.0)
        deadline = self._deadline_for(timeout_s)
        left_ms = deadline - _now_ms()
        if left_ms <= 0:
            raise DeadlineExceededError("deadline passed before the request was sent")
        codec: Codec[R] = self._codec(reply_type)
        type_tag, body = encode(message)
        envelope = Envelope.new(
            type_tag,
            body,
            key=key,
            correlation_id=correlation_id,
            causation_id=causation_id,
            reply_to=self.reply_topic,
            deadline=deadline,
            headers=headers,
        )
        pending = _Pending(envelope.correlation_id)
        self._pending[envelope.id] = pending
        self._by_correlation.setdefault(envelope.correlation_id, envelope.id)
        started = time.perf_counter()
        outcome = "error"
        try:
            with anyio.move_on_after(left_ms / 1000):
                try:
                    await self._broker.publish(
                        self._settings.topic(f"{service}.commands"), envelope
                    )
                except BrokerError as exc:
                    outcome = "unavailable"
                    raise UnavailableError(
                        f"bus unavailable: {exc}", retry_after_s=_BUS_RETRY_AFTER_S
                    ) from exc
                await pending.event.wait()
            if not pending.event.is_set():
                outcome = "deadline"
                raise DeadlineExceededError(
                    f"no reply from {service} within {left_ms} ms",
                )
            if pending.error is not None:
                raise pending.error
            reply = pending.reply
            assert reply is not None  # set together with the event
            try:
                result = self._decode(codec, reply)
            except DomainError as exc:
                outcome = exc.kind
                raise
            outcome = "ok"
            return result
        finally:
            self._forget(envelope.id, pending)
            self._requests_metric.inc(service=service, outcome=outcome)
            self._latency_metric.observe(time.perf_counter() - started, service=service)

    def _forget(self, request_id: str, pending: _Pending) -> None:
        # Runs on success, error, timeout and cancellation alike, so the map never leaks.
        self._pending.pop(request_id, None)
        if self._by_correlation.get(pending.correlation_id) == request_id:
            del self._by_correlation[pending.correlation_id]

    @staticmethod
    def _decode(codec: Codec[R], reply: Envelope) -> R:
        if reply.type == ERROR_REPLY_TYPE:
            try:
                error = _error_decoder.decode(reply.body)
            except msgspec.DecodeError as exc:
                raise InternalError(f"undecodable error reply: {exc}") from exc
            raise error_from_reply(error)
        try:
            return codec.decode(reply.type, reply.body)
        except DecodeError as exc:
            raise InternalError(f"unexpected reply {reply.type!r}: {exc}") from exc
