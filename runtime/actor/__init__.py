"""Actors: the :class:`Actor` base users subclass, the per-message :class:`Context`, the
:class:`Dispatcher` that runs handlers with retries, DLQ and replies, and the reply helpers the
request/reply layer relies on.
"""

from runtime.actor.actor import Actor, HandlerSpec
from runtime.actor.context import Context, NodeContext, TransactionalOutbox, outbox_scope
from runtime.actor.dispatch import Dispatcher, backoff_delay
from runtime.actor.reply import (
    INTERNAL_ERROR_MESSAGE,
    publish_error_reply,
    publish_reply,
    reply_envelope,
)

__all__ = [
    "INTERNAL_ERROR_MESSAGE",
    "Actor",
    "Context",
    "Dispatcher",
    "HandlerSpec",
    "NodeContext",
    "TransactionalOutbox",
    "backoff_delay",
    "outbox_scope",
    "publish_error_reply",
    "publish_reply",
    "reply_envelope",
]
