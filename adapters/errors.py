"""Which errors of each client are transient (worth retrying, and a sign of an unhealthy
dependency) and which are the caller's problem (a constraint violation, a missing key).

Each adapter passes its classifier to its :class:`~runtime.resilience.ResiliencePolicy` as both
``transient`` and ``is_failure``: an error worth retrying is exactly one that says the dependency
is unwell, so it also counts against the breaker; a unique violation or a 404 is a healthy answer.
Client modules are imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import Final

__all__ = ["postgres_transient", "redis_transient", "s3_transient"]

# SQLSTATE classes/codes worth retrying: the server could not serve this attempt, but another may.
_PG_TRANSIENT_CODES: Final = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "53300",  # too_many_connections
        "53400",  # configuration_limit_exceeded
        "57P01",  # admin_shutdown
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, recovery)
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout): the server was too slow this time
    }
)
# Class 08 is "connection exception"; the whole class is transient.
_PG_TRANSIENT_CLASSES: Final = frozenset({"08"})


def postgres_transient(exc: BaseException) -> bool:
    """True for asyncpg/network errors another attempt may not meet: lost or refused connections,
    pool/connect timeouts, too many connections, serialization failures and deadlocks. False for
    everything the statement itself caused (constraint violations, syntax, permissions)."""
    import asyncpg

    if isinstance(exc, asyncpg.PostgresError):
        code = getattr(exc, "sqlstate", None) or ""
        return code in _PG_TRANSIENT_CODES or code[:2] in _PG_TRANSIENT_CLASSES
    # Lost connections surface as ConnectionDoesNotExistError (SQLSTATE 08003, above) or as the
    # socket's own OSError; a connect or pool-acquire timeout as TimeoutError. InterfaceError
    # ("another operation is in progress") is a bug in the caller, not a flaky server.
    return isinstance(exc, OSError | TimeoutError)


def redis_transient(exc: BaseException) -> bool:
    """True for connection errors, timeouts, BUSY/LOADING/TRYAGAIN replies and failovers; False for
    NOPERM, WRONGTYPE and other errors the command itself caused."""
    from redis import exceptions as rex

    if isinstance(exc, rex.NoPermissionError | rex.AuthenticationError | rex.ResponseError):
        # ResponseError covers WRONGTYPE and bad arguments; but a few of its subclasses say
        # "try again shortly" and are transient.
        return isinstance(exc, rex.BusyLoadingError | rex.TryAgainError | rex.ReadOnlyError)
    return isinstance(exc, rex.ConnectionError | rex.TimeoutError | OSError | TimeoutError)


_S3_TRANSIENT_CODES: Final = frozenset(
    {
        "InternalError",
        "ServiceUnavailable",
        "SlowDown",
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "Throttling",
        "ThrottlingException",
        "500",
        "502",
        "503",
        "504",
    }
)


def s3_transient(exc: BaseException) -> bool:
    """True for connection failures, read/connect timeouts and 5xx/throttling answers; False for
    AccessDenied, NoSuchKey, NoSuchBucket and other 4xx answers."""
    from botocore import exceptions as bex

    if isinstance(exc, bex.ClientError):
        error = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error.get("Code", "") in _S3_TRANSIENT_CODES or status >= 500
    return isinstance(
        exc,
        bex.ConnectionError
        | bex.HTTPClientError
        | bex.ReadTimeoutError
        | bex.ConnectTimeoutError
        | OSError
        | TimeoutError,
    )
