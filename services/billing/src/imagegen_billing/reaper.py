"""The reaper: releases reservations still held after their expire time (nobody settled them)."""

from __future__ import annotations

import asyncio
import logging

from imagegen_billing import metrics
from imagegen_billing.domain import AlreadySettledError, NotFoundError, ReleaseReason
from imagegen_billing.ledger import Ledger
from imagegen_billing.store import now

log = logging.getLogger(__name__)

BATCH = 100


async def reap_once(ledger: Ledger) -> int:
    """Releases every expired held reservation; returns how many it released."""
    released = 0
    while True:
        job_ids = await ledger.expired_job_ids(now(), limit=BATCH)
        for job_id in job_ids:
            try:
                result = await ledger.release(job_id, ReleaseReason.EXPIRED)
            except (AlreadySettledError, NotFoundError):
                continue  # settled a moment ago by its outcome
            if result.changed:
                released += 1
                log.info(
                    "reservation expired",
                    extra={"job_id": job_id, "account_id": result.reservation.account_id},
                )
        if len(job_ids) < BATCH:
            break
    metrics.RESERVATIONS_OPEN.set(await ledger.open_reservations())
    return released


async def run_reaper(ledger: Ledger, interval_seconds: float) -> None:
    """Reaps every ``interval_seconds`` until cancelled; a failed pass is logged and retried."""
    while True:
        try:
            await reap_once(ledger)
        except Exception:  # the database may be down for a while; the next pass tries again
            log.exception("reaper pass failed")
        await asyncio.sleep(interval_seconds)
