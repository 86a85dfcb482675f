"""Billing's PostgreSQL misbehaves while calls wait: its connections are terminated
(``pg_terminate_backend``), or its tables are locked so that every query stalls. Calls are answered
from the reply subject, never with an error for an image that was made, and the books hold."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from imagegen_testing.fake_replicate import FakeReplicate
from imagegen_testing.faults import calls_with_the_provider, check_books
from imagegen_testing.postgres import TemporaryDatabase
from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLS = 4


async def test_terminated_database_connections_cost_no_client_an_image_or_a_charge(
    stack: RunningStack, fake: FakeReplicate, database: TemporaryDatabase
) -> None:
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    admin = await asyncpg.connect(database.url)
    try:
        terminated = await admin.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND pid <> pg_backend_pid()",
            database.name,
        )
        assert terminated, "billing had no connection to terminate"
        answered = await asyncio.gather(*calls)
    finally:
        await admin.close()
    assert all(c.ok is not None for c in answered), answered
    check_books(stack, account, answered, stack.gateway_url)


async def test_a_database_stalled_by_locks_never_turns_a_made_image_into_an_error(
    stack: RunningStack, fake: FakeReplicate, database: TemporaryDatabase
) -> None:
    account = stack.create_account(credits=100)
    calls = await calls_with_the_provider(stack.gateway_url, fake, account, CALLS)
    locker = await asyncpg.connect(database.url)
    try:
        async with locker.transaction():
            # Every query of billing on these tables now waits, status checks included: held until
            # every client has its answer.
            await locker.execute("LOCK TABLE accounts, reservations, ledger_entries IN ACCESS EXCLUSIVE MODE")
            answered = await asyncio.gather(*calls)
    finally:
        await locker.close()
    assert [c.ok for c in answered] == [True] * CALLS, answered
    check_books(stack, account, answered, stack.gateway_url)
    assert stack.credits(account.account_id) == 100 - CALLS * 2
