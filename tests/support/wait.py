"""Bounded waiting for state another task owns (the test fails, never hangs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio


async def eventually(predicate: Callable[[], bool], *, within: float = 10.0) -> None:
    """Return once ``predicate()`` is true; fail with TimeoutError after ``within`` seconds."""
    with anyio.fail_after(within):
        # Polling on purpose: the state belongs to the code under test, which exposes no event.
        while not predicate():  # noqa: ASYNC110
            await anyio.sleep(0.002)


async def eventually_async(
    check: Callable[[], Awaitable[bool]], *, within: float = 10.0, interval: float = 0.05
) -> None:
    """As :func:`eventually`, for a check that must await (another process's state)."""
    with anyio.fail_after(within):
        while not await check():  # noqa: ASYNC110 - the state lives in another process
            await anyio.sleep(interval)
