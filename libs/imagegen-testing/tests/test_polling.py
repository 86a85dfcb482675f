"""The one polling helper: plain and async predicates, a bounded wait that names what it waited for."""

from __future__ import annotations

import pytest

from imagegen_testing import eventually, eventually_blocking


async def test_eventually_takes_a_plain_or_an_async_predicate() -> None:
    tries: list[int] = []

    def plain() -> bool:
        tries.append(1)
        return len(tries) >= 3

    async def awaited() -> bool:
        return len(tries) >= 3

    await eventually(plain, timeout=5)
    await eventually(awaited, timeout=5)
    assert len(tries) == 3  # slept between tries, stopped at the first true


async def test_eventually_fails_naming_what_it_waited_for() -> None:
    with pytest.raises(AssertionError, match=r"the moon did not happen within 0\.1s\nstill dark"):
        await eventually(lambda: False, timeout=0.1, what="the moon", detail=lambda: "still dark")


def test_eventually_blocking_is_the_same_without_an_event_loop() -> None:
    tries: list[int] = []

    def second_try() -> bool:
        tries.append(1)
        return len(tries) >= 2

    eventually_blocking(second_try, timeout=5)
    assert len(tries) == 2
    with pytest.raises(AssertionError, match="nothing did not happen"):
        eventually_blocking(lambda: False, timeout=0.1, what="nothing")
