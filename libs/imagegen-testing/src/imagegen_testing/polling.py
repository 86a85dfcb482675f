"""The one polling helper of imagegen's tests: wait until something holds, bounded, with a sleep
between tries, never asserting on how long it took."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator

#: Pause between two tries: short enough not to slow a test, long enough not to spin a core.
INTERVAL_SECONDS = 0.05


def _tries(timeout: float, what: str, detail: Callable[[], str] | None) -> Iterator[float]:
    """Yields the pause before each next try; raises AssertionError once ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"{what} did not happen within {timeout:g}s{extra}")
        yield min(INTERVAL_SECONDS, left)


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 30.0,
    what: str = "the condition",
    detail: Callable[[], str] | None = None,
) -> None:
    """Returns once ``check()`` (a plain or an async predicate) is true; raises AssertionError
    naming ``what`` (and ``detail()``, logs say) after ``timeout`` seconds."""
    for pause in _tries(timeout, what, detail):
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(pause)


def eventually_blocking(
    check: Callable[[], bool],
    *,
    timeout: float = 30.0,
    what: str = "the condition",
    detail: Callable[[], str] | None = None,
) -> None:
    """``eventually`` for a test without an event loop (the e2e tests that drive processes over HTTP)."""
    for pause in _tries(timeout, what, detail):
        if check():
            return
        time.sleep(pause)
