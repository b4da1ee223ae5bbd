"""A demo actor for runtime tests: ordered work, echo requests, poison and flaky messages.

In-process tests read what it did from the instance (``handled``, ``attempts``, ...). Node
subprocess tests configure it with environment variables and read Redis:

``DEMO_SLEEP_S``       seconds each ``Work`` handler sleeps (default 0)
``DEMO_REDIS_URL``     when set, every handled ``Work`` does ``HINCRBY <DEMO_REDIS_KEY> <id> 1``,
                       so a count above 1 is a duplicate handler run
``DEMO_REDIS_KEY``     the hash to count in (default ``demo:handled``)
``DEMO_MAILBOX_SIZE``, ``DEMO_CONCURRENCY``, ``DEMO_RETRY_ATTEMPTS``: the actor's settings
"""

from __future__ import annotations

import os
from typing import Any

import anyio
import msgspec

from runtime.actor import Actor, Context, NodeContext
from runtime.errors import ConflictError, NotFoundError


class Work(msgspec.Struct, frozen=True, kw_only=True, tag="demo.Work"):
    """A unit of keyed work; ``seq`` increases per key so order can be checked."""

    seq: int
    gate: str = ""  # when set, the handler waits until the test opens this gate
    sleep_s: float = -1.0  # -1: use DEMO_SLEEP_S
    pad: str = ""  # ballast, so a test can make a backlog that would show in memory


class Echo(msgspec.Struct, frozen=True, kw_only=True, tag="demo.Echo"):
    text: str


class Echoed(msgspec.Struct, frozen=True, kw_only=True, tag="demo.Echoed"):
    text: str
    attempt: int = 1


class Poison(msgspec.Struct, frozen=True, kw_only=True, tag="demo.Poison"):
    """Always raises: it must end in the DLQ."""

    note: str = ""


class Flaky(msgspec.Struct, frozen=True, kw_only=True, tag="demo.Flaky"):
    """Raises on its first ``fails`` runs, then echoes."""

    fails: int
    text: str = ""


class Lookup(msgspec.Struct, frozen=True, kw_only=True, tag="demo.Lookup"):
    """Raises a domain error: ``not_found`` for a missing id, ``conflict`` for ``"taken"``."""

    item: str


DemoMessage = Work | Echo | Poison | Flaky | Lookup


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


class Demo(Actor):
    name = "demo"
    inbox = DemoMessage
    concurrency = _env_int("DEMO_CONCURRENCY", 4)
    mailbox_size = _env_int("DEMO_MAILBOX_SIZE", 64)
    retry_attempts = _env_int("DEMO_RETRY_ATTEMPTS", 3)
    retry_backoff_s = 0.001
    retry_backoff_max_s = 0.01

    def __init__(self) -> None:
        self.handled: list[tuple[str, int, str]] = []  # (key, seq, message id)
        self.order_violations: list[tuple[str, int, int]] = []
        self.attempts: dict[str, list[int]] = {}  # message id -> attempts seen
        self.gates: dict[str, anyio.Event] = {}
        self.started_gates: set[str] = set()
        self.running = 0
        self.max_running = 0
        self.running_keys: set[str] = set()
        self.same_key_overlap = 0
        self.stopped = False
        self._last_seq: dict[str, int] = {}
        self._sleep_s = float(os.environ.get("DEMO_SLEEP_S", "0"))

    def gate(self, name: str) -> anyio.Event:
        """The event a ``Work(gate=name)`` handler waits on."""
        return self.gates.setdefault(name, anyio.Event())

    async def on_start(self, ctx: NodeContext) -> None:
        url = os.environ.get("DEMO_REDIS_URL")
        if url:
            import redis.asyncio as redis

            ctx.resources["redis"] = redis.Redis.from_url(url)
            ctx.resources["redis_key"] = os.environ.get("DEMO_REDIS_KEY", "demo:handled")

    async def on_stop(self, ctx: NodeContext) -> None:
        self.stopped = True
        client: Any = ctx.resources.get("redis")
        if client is not None:
            await client.aclose()

    async def work(self, msg: Work, ctx: Context) -> None:
        key = ctx.envelope.key
        if key in self.running_keys:
            self.same_key_overlap += 1
        self.running_keys.add(key)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        try:
            if msg.gate:
                self.started_gates.add(msg.gate)
                await self.gate(msg.gate).wait()
            delay = self._sleep_s if msg.sleep_s < 0 else msg.sleep_s
            if delay > 0:
                await anyio.sleep(delay)
            last = self._last_seq.get(key)
            if last is not None and msg.seq <= last:
                self.order_violations.append((key, last, msg.seq))
            self._last_seq[key] = msg.seq
            self.handled.append((key, msg.seq, ctx.envelope.id))
            client: Any = ctx.resources.get("redis")
            if client is not None:
                await client.hincrby(ctx.resources["redis_key"], ctx.envelope.id, 1)
        finally:
            self.running -= 1
            self.running_keys.discard(key)

    async def echo(self, msg: Echo, ctx: Context) -> Echoed:
        return Echoed(text=msg.text, attempt=ctx.envelope.attempt)

    async def poison(self, msg: Poison, ctx: Context) -> None:
        self.attempts.setdefault(ctx.envelope.id, []).append(ctx.envelope.attempt)
        raise RuntimeError(f"poison message: {msg.note}")

    async def flaky(self, msg: Flaky, ctx: Context) -> Echoed:
        seen = self.attempts.setdefault(ctx.envelope.id, [])
        seen.append(ctx.envelope.attempt)
        if len(seen) <= msg.fails:
            raise ValueError(f"flaky failure {len(seen)} of {msg.fails}")
        return Echoed(text=msg.text, attempt=ctx.envelope.attempt)

    async def lookup(self, msg: Lookup, ctx: Context) -> Echoed:
        if msg.item == "taken":
            raise ConflictError("item is taken", field="$.item")
        raise NotFoundError(f"no item {msg.item!r}")
