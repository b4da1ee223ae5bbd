"""The Actor API: handler table built at class creation, clear errors, reply helpers, backoff."""

from __future__ import annotations

import msgspec
import pytest

from runtime.actor import (
    INTERNAL_ERROR_MESSAGE,
    Actor,
    Context,
    backoff_delay,
    reply_envelope,
)
from runtime.config import Settings
from runtime.errors import ERROR_REPLY_TYPE, ErrorReply, NotFoundError
from runtime.messages import Envelope
from tests.support.demo import Demo, Echo, Echoed


class Ping(msgspec.Struct, frozen=True, kw_only=True, tag="t.Ping"):
    n: int


class Pong(msgspec.Struct, frozen=True, kw_only=True, tag="t.Pong"):
    n: int


class Untagged(msgspec.Struct, frozen=True, kw_only=True):
    n: int


def test_handlers_are_chosen_by_annotated_contract() -> None:
    class Svc(Actor):
        name = "svc"
        inbox = Ping | Pong

        async def ping(self, msg: Ping, ctx: Context) -> None: ...

        async def pong(self, msg: Pong) -> None: ...

        async def helper(self, value: int) -> int:  # not a contract: not a handler
            return value

    assert Svc.handlers["t.Ping"].method == "ping"
    assert Svc.handlers["t.Ping"].takes_context
    assert Svc.handlers["t.Pong"].method == "pong"
    assert not Svc.handlers["t.Pong"].takes_context
    assert set(Svc.codec.tags()) == {"t.Ping", "t.Pong"}


def test_a_union_annotation_handles_each_member() -> None:
    class Svc(Actor):
        name = "svc"
        inbox = Ping | Pong

        async def either(self, msg: Ping | Pong, ctx: Context) -> None: ...

    assert {spec.method for spec in Svc.handlers.values()} == {"either"}


def test_missing_handler_is_a_type_error_naming_the_contract() -> None:
    with pytest.raises(TypeError, match="no handler for Pong"):

        class Svc(Actor):
            name = "svc"
            inbox = Ping | Pong

            async def ping(self, msg: Ping, ctx: Context) -> None: ...


def test_handler_for_a_contract_outside_the_inbox_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"handles Pong, which is not in .*Svc\.inbox"):

        class Svc(Actor):
            name = "svc"
            inbox = Ping

            async def ping(self, msg: Ping, ctx: Context) -> None: ...

            async def pong(self, msg: Pong, ctx: Context) -> None: ...


def test_two_handlers_for_one_contract_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="two handlers"):

        class Svc(Actor):
            name = "svc"
            inbox = Ping

            async def a(self, msg: Ping, ctx: Context) -> None: ...

            async def b(self, msg: Ping, ctx: Context) -> None: ...


def test_untagged_inbox_member_and_missing_name_are_type_errors() -> None:
    with pytest.raises(TypeError, match="not a tagged"):

        class Bad(Actor):
            name = "bad"
            inbox = Untagged

    with pytest.raises(TypeError, match="must set `name`"):

        class Nameless(Actor):
            inbox = Ping

            async def ping(self, msg: Ping, ctx: Context) -> None: ...


def test_an_abstract_base_without_inbox_is_not_checked_and_subclasses_inherit_handlers() -> None:
    class Base(Actor):
        async def ping(self, msg: Ping, ctx: Context) -> None: ...

    class Concrete(Base):
        name = "concrete"
        inbox = Ping

    assert Concrete.handlers["t.Ping"].method == "ping"


def test_topics_and_group_go_through_the_prefix() -> None:
    settings = Settings(topic_prefix="run1.")
    assert Demo.commands_topic(settings) == "run1.demo.commands"
    assert Demo.events_topic(settings) == "run1.demo.events"
    assert Demo.dlq_topic(settings) == "run1.demo.dlq"
    assert Demo.consumer_group(settings) == "run1.demo"
    assert Demo.source_topics(settings) == ["run1.demo.commands"]


def test_reply_envelope_answers_the_request() -> None:
    request = Envelope.new(
        "demo.Echo",
        b"{}",
        key="k1",
        reply_to="replies.abc",
        deadline=123,
        headers={"traceparent": "00-x-y-01", "other": "no"},
    )
    reply = reply_envelope(request, Echoed(text="hi"))
    assert reply.type == "demo.Echoed"
    assert reply.key == "k1"
    assert reply.correlation_id == request.correlation_id
    assert reply.causation_id == request.id
    assert reply.reply_to == ""
    assert reply.headers == {"traceparent": "00-x-y-01"}
    assert msgspec.json.decode(reply.body, type=Echoed) == Echoed(text="hi")

    error = reply_envelope(request, NotFoundError("gone").to_reply())
    assert error.type == ERROR_REPLY_TYPE
    assert msgspec.json.decode(error.body, type=ErrorReply).kind == "not_found"


def test_reply_envelope_refuses_a_message_that_is_not_a_request() -> None:
    with pytest.raises(ValueError, match="not a request"):
        reply_envelope(Envelope.new("demo.Echo", b"{}"), Echo(text="x"))
    assert INTERNAL_ERROR_MESSAGE == "internal error"


@pytest.mark.parametrize("retry", [1, 2, 5, 20])
def test_backoff_is_full_jitter_under_an_exponential_cap(retry: int) -> None:
    bound = min(2.0, 0.1 * 2 ** (retry - 1))
    assert backoff_delay(retry, 0.1, 2.0, rand=lambda: 0.0) == 0.0
    assert backoff_delay(retry, 0.1, 2.0, rand=lambda: 0.999999) == pytest.approx(bound, rel=1e-5)
    for _ in range(100):
        assert 0.0 <= backoff_delay(retry, 0.1, 2.0) < bound
