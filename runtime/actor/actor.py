"""The :class:`Actor` base class and its handler table, built once per subclass.

A service subclasses :class:`Actor`, declares its name and inbox (a union of tagged contracts) and
writes one ``async`` method per contract, annotated with that contract::

    class Orders(Actor):
        name = "orders"
        inbox = PlaceOrder | CancelOrder

        async def place(self, msg: PlaceOrder, ctx: Context) -> OrderPlaced: ...
        async def cancel(self, msg: CancelOrder, ctx: Context) -> None: ...

The table from envelope type to method is built in ``__init_subclass__``, so a missing or
misdirected handler is a ``TypeError`` at import time, not a dead-lettered message at run time.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import msgspec

from runtime.codec import Codec, contract_tag, contract_types

if TYPE_CHECKING:
    from runtime.node import Node
    from runtime.supervision import ChildSpec

if typing.TYPE_CHECKING:
    from runtime.actor.context import Context, NodeContext
    from runtime.config import Settings

__all__ = ["Actor", "HandlerSpec"]

_HOOKS = frozenset({"on_start", "on_stop"})


class HandlerSpec(NamedTuple):
    """How to call the handler of one contract: method name and whether it takes a context."""

    method: str
    takes_context: bool


def _resolve(annotation: Any, func: Callable[..., Any], cls: type) -> Any:
    # Annotations are strings under `from __future__ import annotations`; resolve only the message
    # parameter's, so a `ctx: Context` imported under TYPE_CHECKING does not break resolution.
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={"message": annotation})
    localns = dict(vars(cls))
    return typing.get_type_hints(
        holder, globalns=getattr(func, "__globals__", {}), localns=localns
    )["message"]


def _message_types(annotation: Any) -> tuple[type[msgspec.Struct], ...]:
    members = getattr(annotation, "__args__", None) or (annotation,)
    out = []
    for member in members:
        if isinstance(member, type) and issubclass(member, msgspec.Struct):
            out.append(member)
        else:
            return ()
    return tuple(out)


def _build_handlers(cls: type[Actor]) -> dict[str, HandlerSpec]:
    inbox_types = contract_types(cls.inbox)
    inbox_tags = {contract_tag(t): t for t in inbox_types}
    handlers: dict[str, HandlerSpec] = {}
    for attr in dir(cls):
        if attr.startswith("_") or attr in _HOOKS:
            continue
        func = getattr(cls, attr)
        if not inspect.iscoroutinefunction(func):
            continue
        params = list(inspect.signature(func).parameters.values())[1:]  # drop self
        if not params or params[0].annotation is inspect.Parameter.empty:
            continue
        handled = _message_types(_resolve(params[0].annotation, func, cls))
        if not handled:
            continue
        for contract in handled:
            tag = contract_tag(contract)
            if tag not in inbox_tags:
                raise TypeError(
                    f"{cls.__qualname__}.{attr} handles {contract.__qualname__}, "
                    f"which is not in {cls.__qualname__}.inbox"
                )
            if tag in handlers and handlers[tag].method != attr:
                raise TypeError(
                    f"{cls.__qualname__} has two handlers for {contract.__qualname__}: "
                    f"{handlers[tag].method} and {attr}"
                )
            handlers[tag] = HandlerSpec(attr, takes_context=len(params) >= 2)
    missing = [t.__qualname__ for tag, t in inbox_tags.items() if tag not in handlers]
    if missing:
        raise TypeError(
            f"{cls.__qualname__} has no handler for {', '.join(missing)}: add "
            f"`async def <name>(self, msg: <Contract>, ctx: Context)` for each"
        )
    return handlers


class Actor:
    """Base class of every service actor. Subclass it; never instantiate it directly.

    Class attributes a subclass declares:

    * ``name``: the service name; its topics are ``<name>.commands``, ``<name>.events`` and
      ``<name>.dlq`` (each through ``Settings.topic`` so test runs can prefix them).
    * ``inbox``: the union of tagged contracts it accepts, one handler method per member.
    * ``subscribes``: other services' topics it also consumes (``("orders.events",)``); their
      contracts must be in ``inbox`` too.
    * ``group``: the consumer group (default: ``name``).
    * ``concurrency``: how many keys are handled at once (messages of one key are always in order).
    * ``mailbox_size``: deliveries held in memory before the consumer pauses fetching.
    * ``retry_attempts``: handler runs before a failing message goes to the DLQ (at least 1).
    * ``retry_backoff_s`` / ``retry_backoff_max_s``: exponential backoff base and cap, full jitter.
    * ``makes_requests``: the node starts a requester (its own reply topic) so handlers can use
      ``ctx.request``; off by default, as it costs a consumer group per node.

    A subclass without ``inbox`` is abstract (a shared base for several actors) and is not checked.

    Raises:
        TypeError: at class creation, when an inbox member has no handler, a handler's contract
            is not in the inbox, two handlers claim one contract, or a setting is out of range.
    """

    name: ClassVar[str]
    inbox: ClassVar[Any]
    subscribes: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[str] = ""
    concurrency: ClassVar[int] = 16
    mailbox_size: ClassVar[int] = 1_000
    retry_attempts: ClassVar[int] = 3
    retry_backoff_s: ClassVar[float] = 0.05
    retry_backoff_max_s: ClassVar[float] = 5.0
    makes_requests: ClassVar[bool] = False

    # Filled in by __init_subclass__: envelope type -> handler, and the decoder for the inbox.
    handlers: ClassVar[dict[str, HandlerSpec]]
    codec: ClassVar[Codec[Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "inbox" not in vars(cls) and not hasattr(cls, "handlers"):
            return  # an abstract base shared by several actors
        if not isinstance(getattr(cls, "name", None), str) or not cls.name:
            raise TypeError(f"{cls.__qualname__} must set `name` (the service name)")
        if cls.concurrency < 1 or cls.mailbox_size < 1 or cls.retry_attempts < 1:
            raise TypeError(
                f"{cls.__qualname__}: concurrency, mailbox_size and retry_attempts must be >= 1"
            )
        cls.handlers = _build_handlers(cls)
        cls.codec = Codec(cls.inbox)

    # --- topics, through the deployment's prefix

    @classmethod
    def commands_topic(cls, settings: Settings) -> str:
        """``<name>.commands`` with the deployment's topic prefix."""
        return settings.topic(f"{cls.name}.commands")

    @classmethod
    def events_topic(cls, settings: Settings) -> str:
        """``<name>.events`` with the deployment's topic prefix."""
        return settings.topic(f"{cls.name}.events")

    @classmethod
    def dlq_topic(cls, settings: Settings) -> str:
        """``<name>.dlq`` with the deployment's topic prefix."""
        return settings.topic(f"{cls.name}.dlq")

    @classmethod
    def consumer_group(cls, settings: Settings) -> str:
        """The consumer group (``group`` or ``name``) with the deployment's topic prefix."""
        return settings.topic(cls.group or cls.name)

    @classmethod
    def source_topics(cls, settings: Settings) -> list[str]:
        """Every topic the actor consumes: its commands, then what it subscribes to."""
        return [cls.commands_topic(settings), *(settings.topic(t) for t in cls.subscribes)]

    # --- lifecycle hooks

    async def on_start(self, ctx: NodeContext) -> None:
        """Called once before the first message; open pools here and put them in ctx.resources."""

    async def on_stop(self, ctx: NodeContext) -> None:
        """Called once after the last message was handled (also after a failed start)."""

    def supervised_children(self, node: Node) -> Sequence[ChildSpec]:
        """Children this actor adds to its node's supervision tree, after the consumer.

        Called when the node builds its tree (after :meth:`on_start`). An adapter layer uses it
        to run, e.g., an outbox relay beside the consumer. The default adds none.
        """
        return ()

    # --- dispatch

    def handler_for(self, type_tag: str) -> Callable[[Any, Context], Awaitable[Any]]:
        """A callable ``(message, ctx) -> result`` for ``type_tag``. Raises KeyError if none."""
        spec = self.handlers[type_tag]
        method = getattr(self, spec.method)
        if spec.takes_context:
            return typing.cast(Callable[[Any, "Context"], Awaitable[Any]], method)

        async def without_context(message: Any, _ctx: Context) -> Any:
            return await method(message)

        return without_context
