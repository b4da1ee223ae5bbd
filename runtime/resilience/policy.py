"""One dependency's resilience policy: bulkhead, breaker, timeout and retry, composed once.

Order, outermost first, and why::

    retry( bulkhead( breaker( timeout( fn ) ) ) )

- **retry outermost**: every attempt goes through the breaker again, so once the breaker opens the
  next attempt fails fast with :class:`CircuitOpenError`, which is never retried; and a backoff
  sleep holds no bulkhead slot and no half-open trial.
- **bulkhead outside the breaker**: time spent queueing for a slot is local congestion, not the
  dependency's latency, so it must not count as a slow call; and a call that waits for a slot does
  not hold one of the breaker's few half-open trials while it waits.
- **timeout innermost**: it limits one attempt (capped by the deadline), and the breaker sees the
  timeout as a failure and its duration as a slow call.

Errors the policy adds are typed: :class:`CircuitOpenError`, :class:`BulkheadFullError` and
:class:`CallTimeoutError` are :class:`~runtime.errors.UnavailableError` (503 with Retry-After at the
edge); :class:`~runtime.errors.DeadlineExceededError` when the caller's budget ran out.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Final, ParamSpec, TypeVar, final

import anyio
import msgspec

from runtime.errors import DeadlineExceededError
from runtime.metrics import registry
from runtime.resilience.breaker import (
    BreakerConfig,
    BreakerSnapshot,
    CircuitBreaker,
    CircuitOpenError,
)
from runtime.resilience.bulkhead import Bulkhead, BulkheadConfig, BulkheadFullError
from runtime.resilience.deadline import Clock, wall_clock
from runtime.resilience.retry import Classifier, Retry, RetryConfig, Sleep
from runtime.resilience.timeout import CallTimeout, CallTimeoutError

__all__ = ["PolicyConfig", "PolicySnapshot", "ResiliencePolicy", "transient_network_error"]

P = ParamSpec("P")
T = TypeVar("T")

_calls: Final = registry.counter(
    "greenroom_dependency_calls_total", "Calls through a resilience policy, by outcome"
)
_latency: Final = registry.histogram(
    "greenroom_dependency_call_seconds", "Duration of calls through a policy, retries included"
)


def transient_network_error(exc: BaseException) -> bool:
    """A conservative default classifier: connection-level failures and timeouts are transient.

    Adapters pass their own, which know their client's error types (e.g. a serialization failure in
    Postgres is transient, a unique violation is not).
    """
    return isinstance(exc, OSError | TimeoutError)


class PolicyConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Declared per actor and dependency in configuration; the defaults are safe for a network call.

    ``timeout_s`` limits each attempt (``None``: only the deadline does).
    """

    timeout_s: float | None = 5.0
    retry_on_timeout: bool = True
    retry: RetryConfig = msgspec.field(default_factory=RetryConfig)
    breaker: BreakerConfig = msgspec.field(default_factory=BreakerConfig)
    bulkhead: BulkheadConfig = msgspec.field(default_factory=BulkheadConfig)

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError("timeout_s must be positive or None")


class PolicySnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What the status page shows for one dependency."""

    name: str
    breaker: BreakerSnapshot
    bulkhead_in_flight: int
    bulkhead_capacity: int


def _outcome(exc: BaseException | None) -> str:
    if exc is None:
        return "ok"
    if isinstance(exc, CircuitOpenError | BulkheadFullError):
        return "rejected"
    if isinstance(exc, CallTimeoutError):
        return "timeout"
    if isinstance(exc, DeadlineExceededError):
        return "deadline"
    if isinstance(exc, Exception):
        return "error"
    return "cancelled"


@final
class ResiliencePolicy:
    """Calls to one dependency (``name``, e.g. ``"orders.postgres"``) go through :meth:`call`."""

    def __init__(
        self,
        name: str,
        config: PolicyConfig | None = None,
        *,
        transient: Classifier = transient_network_error,
        is_failure: Classifier | None = None,
        clock: Clock = wall_clock,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        """``transient`` says which errors are worth retrying; ``is_failure`` which count against
        the dependency's health (default: the transient ones). ``clock`` (epoch seconds, for
        deadlines), ``monotonic`` (for the breaker) and ``sleep`` are injectable for tests."""
        self.name = name
        self.config = config or PolicyConfig()
        self._transient = transient
        self._is_failure = is_failure or transient
        self._monotonic = monotonic
        self.breaker = CircuitBreaker(
            name, self.config.breaker, is_failure=self._counts_as_failure, clock=monotonic
        )
        self.bulkhead = Bulkhead(name, self.config.bulkhead, clock=clock)
        self._timeout = CallTimeout(name, self.config.timeout_s, clock=clock)
        self._retry = Retry(name, self.config.retry, self._worth_retrying, clock=clock, sleep=sleep)

    def _worth_retrying(self, exc: BaseException) -> bool:
        if isinstance(exc, CircuitOpenError | BulkheadFullError | DeadlineExceededError):
            # Refused locally or out of budget: retrying would only add load or overrun.
            return False
        if isinstance(exc, CallTimeoutError):
            return self.config.retry_on_timeout
        return self._transient(exc)

    def _counts_as_failure(self, exc: BaseException) -> bool:
        if isinstance(exc, CallTimeoutError):
            return True
        if isinstance(exc, DeadlineExceededError):
            # The caller's budget ran out, which may say more about the caller than about the
            # dependency; the call's duration still feeds the slow-call rate.
            return False
        return self._is_failure(exc)

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``fn(*args, **kwargs)`` under the policy and return its result.

        Raises:
            CircuitOpenError: the breaker is open (no attempt was made, or retrying stopped).
            BulkheadFullError: too many calls in flight to this dependency.
            CallTimeoutError: the last attempt exceeded ``timeout_s``.
            DeadlineExceededError: the current deadline passed.
            Exception: the last error ``fn`` raised (non-transient, or attempts ran out).
        """

        async def attempt() -> T:
            async with self.bulkhead.slot():
                return await self.breaker.call(self._timeout.call, fn, *args, **kwargs)

        started = self._monotonic()
        error: BaseException | None = None
        try:
            return await self._retry.call(attempt)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _latency.observe(self._monotonic() - started, dependency=self.name)
            _calls.inc(dependency=self.name, outcome=_outcome(error))

    def decorate(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """``fn`` with every call made through this policy (use as ``@policy.decorate``)."""

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> T:
            return await self.call(fn, *args, **kwargs)

        return guarded

    def snapshot(self) -> PolicySnapshot:
        """Breaker and bulkhead state, for the status page."""
        return PolicySnapshot(
            name=self.name,
            breaker=self.breaker.snapshot(),
            bulkhead_in_flight=self.bulkhead.in_flight,
            bulkhead_capacity=self.bulkhead.config.max_concurrent,
        )
