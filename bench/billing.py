"""Billing's ledger throughput: reserve+settle pairs per second (settle: the image's capture, as the
SettleJob RPC and the settlement consumer do it), on SQLite and on PostgreSQL.

Beside each number, a baseline measured in the same run on the same database and engine: a bare
one-row ``UPDATE accounts SET credits = credits - 1 WHERE id = ?``, one statement per transaction.
A lone pair is two transactions (reserve, settle) of five statements each (two locking reads, three
writes), so a ratio near 0.5 means the ledger adds little beyond its commits; concurrent callers share
transactions (group commit) whose statements do not grow with the number of calls in them, so there
the ratio can pass 1. The two are measured in three interleaved rounds (medians
are printed); each side stops after ``--count`` operations or ``--seconds``, whichever comes first.

    python bench/billing.py [--count 2000] [--seconds 5] [--concurrency 1 16]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from sqlalchemy import text

from imagegen_billing import migrate
from imagegen_billing.accounts import Accounts
from imagegen_billing.db import Database
from imagegen_billing.domain import JobResult, ReserveRequest
from imagegen_billing.ledger import Ledger
from imagegen_testing import postgres

Operation = Callable[[int], Awaitable[None]]
ROUNDS = 3
IMAGE = JobResult(image_url="http://bench/images/img.png", mime_type="image/png")


@dataclass(frozen=True)
class Limits:
    count: int
    seconds: float


@dataclass(frozen=True)
class Rate:
    per_second: float
    #: CPU of this process (its event loop and the database driver's threads) per operation: unlike
    #: the rate it hardly moves when the machine is busy with something else.
    cpu_ms: float


async def rate(operation: Operation, limits: Limits, concurrency: int) -> Rate:
    """Operations per second of ``concurrency`` workers sharing one bounded budget."""
    numbers = itertools.count()
    deadline = time.perf_counter() + limits.seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            n = next(numbers)
            if n >= limits.count:
                return
            await operation(n)
            done += 1

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Rate(done / (time.perf_counter() - started), 1000 * (time.process_time() - cpu) / max(done, 1))


async def bench_database(name: str, url: str, limits: Limits, concurrencies: list[int]) -> None:
    await migrate.upgrade_async(url)
    db = Database.from_url(url, pool_size=max(concurrencies))
    try:
        accounts, ledger = Accounts(db), Ledger(db)
        account, _, _ = await accounts.create("bench@example.test", 10**15)
        update = text("UPDATE accounts SET credits = credits - 1 WHERE id = :id")
        runs = itertools.count()
        per_round = Limits(limits.count // ROUNDS, limits.seconds / ROUNDS)

        async def baseline(_: int) -> None:
            async with db.write() as conn:
                await conn.execute(update, {"id": account.id})

        async def pair(n: int, run: int = 0) -> None:
            job_id = f"bench_{run}_{n}"
            await ledger.reserve(ReserveRequest(account.id, job_id, 1))
            await ledger.settle(job_id, IMAGE)

        await rate(baseline, Limits(50, limits.seconds), 1)  # warm the pool and the caches
        for concurrency in concurrencies:
            # Interleaved rounds, so that a noisy neighbour slows both sides alike; medians reported.
            bases, pairs, ratios, cpu_pairs, cpu_bases = [], [], [], [], []
            transactions, units = ledger.group.transactions, ledger.group.units
            for _ in range(ROUNDS):
                run = next(runs)
                base = await rate(baseline, per_round, concurrency)
                paired = await rate(functools.partial(pair, run=run), per_round, concurrency)
                bases.append(base.per_second)
                pairs.append(paired.per_second)
                ratios.append(paired.per_second / base.per_second)
                cpu_pairs.append(paired.cpu_ms)
                cpu_bases.append(base.cpu_ms)
            grouped = (ledger.group.units - units) / max(ledger.group.transactions - transactions, 1)
            print(
                f"{name:<9} concurrency {concurrency:>3}: {median(pairs):7.0f} reserve+settle pairs/s    "
                f"baseline {median(bases):7.0f} updates/s   ratio {median(ratios):.2f}\n"
                f"{'':<25}CPU ms per pair {median(cpu_pairs):.2f}, per baseline update "
                f"{median(cpu_bases):.2f}; {grouped:.1f} ledger writes per transaction"
            )
            await check_no_overdraw(db, account.id)
    finally:
        await ledger.aclose()
        await db.close()


async def check_no_overdraw(db: Database, account_id: str) -> None:
    """The balance equals the sum of the ledger and nothing is held: every pair was settled."""
    async with db.read() as conn:
        credits, held = (
            await conn.execute(
                text("SELECT credits, reserved_credits FROM accounts WHERE id = :id"), {"id": account_id}
            )
        ).one()
        total = await conn.scalar(
            text("SELECT COALESCE(SUM(amount), 0) FROM ledger_entries WHERE account_id = :id"),
            {"id": account_id},
        )
    # The baseline's bare UPDATEs write no ledger entries: they are what the two differ by.
    if held != 0 or credits > total:
        raise SystemExit(f"inconsistent: {credits} credits, {held} held, ledger sum {total}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000, help="most operations per measurement")
    parser.add_argument("--seconds", type=float, default=5.0, help="longest time per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16], help="concurrent callers")
    args = parser.parse_args()
    limits = Limits(args.count, args.seconds)

    with tempfile.TemporaryDirectory(prefix="imagegen-bench-") as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'billing.db'}"
        asyncio.run(bench_database("sqlite", url, limits, args.concurrency))

    why_not = postgres.reachable()
    if why_not is not None:
        print(f"postgres   skipped: {postgres.server_url()} is unreachable ({why_not})")
        return
    with postgres.TemporaryDatabase() as database:
        asyncio.run(bench_database("postgres", database.sqlalchemy_url, limits, args.concurrency))


if __name__ == "__main__":
    main()
