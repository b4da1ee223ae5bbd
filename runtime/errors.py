"""Typed domain errors that cross the bus as error replies, and their wire form.

A handler raises one of these; the responder turns it into an :class:`ErrorReply` (envelope type
:data:`ERROR_REPLY_TYPE`); the requester raises the matching error again on the calling side; the
edge maps each ``kind`` to an HTTP status (DESIGN.md, request/reply and the edge).
"""

from __future__ import annotations

from typing import ClassVar, Final, Literal

import msgspec

__all__ = [
    "ERROR_REPLY_TYPE",
    "ConflictError",
    "DeadlineExceededError",
    "DomainError",
    "ErrorKind",
    "ErrorReply",
    "ForbiddenError",
    "InternalError",
    "InvalidError",
    "NotFoundError",
    "UnauthorizedError",
    "UnavailableError",
    "error_from_reply",
]

ERROR_REPLY_TYPE: Final = "greenroom.ErrorReply"

ErrorKind = Literal[
    "invalid",
    "unauthorized",
    "forbidden",
    "not_found",
    "conflict",
    "unavailable",
    "deadline",
    "internal",
]


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True, tag=ERROR_REPLY_TYPE):
    """A typed failure answering a request. ``field`` is a JSON path for ``invalid`` errors.

    ``retry_after_s`` is set for ``unavailable`` (circuit open, overloaded) so the edge can send
    ``Retry-After``. ``message`` never carries a stack trace; ``internal`` errors say only that
    something failed, and the correlation id lets an operator find the logged details.
    """

    kind: ErrorKind
    message: str
    field: str = ""
    retry_after_s: float = 0.0


class DomainError(Exception):
    """Base of errors a handler raises on purpose; each maps to one :data:`ErrorKind`."""

    kind: ClassVar[ErrorKind] = "internal"

    def __init__(self, message: str, *, field: str = "", retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s

    def to_reply(self) -> ErrorReply:
        return ErrorReply(
            kind=self.kind, message=self.message, field=self.field, retry_after_s=self.retry_after_s
        )


class InvalidError(DomainError):
    """The request is well-formed but its content is not acceptable (HTTP 422)."""

    kind = "invalid"


class UnauthorizedError(DomainError):
    """Credentials are missing or wrong (HTTP 401)."""

    kind = "unauthorized"


class ForbiddenError(DomainError):
    """The caller is known but may not do this (HTTP 403)."""

    kind = "forbidden"


class NotFoundError(DomainError):
    """The entity does not exist, or the caller may not know that it does (HTTP 404)."""

    kind = "not_found"


class ConflictError(DomainError):
    """The request conflicts with current state, e.g. not enough stock (HTTP 409)."""

    kind = "conflict"


class UnavailableError(DomainError):
    """A dependency is down or a circuit is open; try again after ``retry_after_s`` (HTTP 503)."""

    kind = "unavailable"


class DeadlineExceededError(DomainError):
    """The request's deadline passed before an answer arrived (HTTP 504)."""

    kind = "deadline"


class InternalError(DomainError):
    """Anything else; the client sees only the correlation id (HTTP 500)."""

    kind = "internal"


_BY_KIND: dict[str, type[DomainError]] = {
    cls.kind: cls
    for cls in (
        InvalidError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        ConflictError,
        UnavailableError,
        DeadlineExceededError,
        InternalError,
    )
}


def error_from_reply(reply: ErrorReply) -> DomainError:
    """The :class:`DomainError` subclass instance that ``reply`` describes."""
    return _BY_KIND.get(reply.kind, InternalError)(
        reply.message, field=reply.field, retry_after_s=reply.retry_after_s
    )
