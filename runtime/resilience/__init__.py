"""Resilience for calls to dependencies: deadlines, retry, circuit breaker, bulkhead, timeout.

Adapters make every call through a :class:`ResiliencePolicy` built per actor and dependency from a
:class:`PolicyConfig` (DESIGN.md, resilience policies). The parts are usable on their own.
"""

from runtime.resilience.breaker import (
    BreakerConfig,
    BreakerPermit,
    BreakerSnapshot,
    BreakerState,
    CircuitBreaker,
    CircuitOpenError,
)
from runtime.resilience.bulkhead import Bulkhead, BulkheadConfig, BulkheadFullError
from runtime.resilience.deadline import (
    current_deadline,
    deadline_after,
    deadline_scope,
    raise_if_expired,
    remaining,
)
from runtime.resilience.policy import (
    PolicyConfig,
    PolicySnapshot,
    ResiliencePolicy,
    transient_network_error,
)
from runtime.resilience.retry import Classifier, Retry, RetryConfig
from runtime.resilience.timeout import CallTimeout, CallTimeoutError

__all__ = [
    "BreakerConfig",
    "BreakerPermit",
    "BreakerSnapshot",
    "BreakerState",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadFullError",
    "CallTimeout",
    "CallTimeoutError",
    "CircuitBreaker",
    "CircuitOpenError",
    "Classifier",
    "PolicyConfig",
    "PolicySnapshot",
    "ResiliencePolicy",
    "Retry",
    "RetryConfig",
    "current_deadline",
    "deadline_after",
    "deadline_scope",
    "raise_if_expired",
    "remaining",
    "transient_network_error",
]
