"""Billing's ledger throughput: reserve+settle pairs per second (settle: the image's capture, as the
SettleJob RPC and the settlement consumer do it), on SQLite and on PostgreSQL.

Beside each number, a baseline measured in the same run on the same database and engine: a bare
one-row ``UPDATE accounts SET credits = credits - 1 WHERE id = ?``, one statement per transaction.
A pair is two transactions (reserve, settle) of three statements each, so a ratio near 0.5 means
the ledger adds little beyond its commits. The two are measured in three interleaved rounds (medians
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


async def rate(operation: Operation, limits: Limits, concurrency: int) -> float:
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

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


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
            bases, pairs, ratios = [], [], []
            for _ in range(ROUNDS):
                run = next(runs)
                base = await rate(baseline, per_round, concurrency)
                paired = await rate(functools.partial(pair, run=run), per_round, concurrency)
                bases.append(base)
                pairs.append(paired)
                ratios.append(paired / base)
            print(
                f"{name:<9} concurrency {concurrency:>3}: {median(pairs):7.0f} reserve+settle pairs/s    "
                f"baseline {median(bases):7.0f} updates/s   ratio {median(ratios):.2f}"
            )
    finally:
        await db.close()


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
