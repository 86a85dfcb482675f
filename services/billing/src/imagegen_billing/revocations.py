"""Billing tells every gateway at once that a credential stopped working (a revoked token), on the
core NATS subject ``nats_names.REVOCATIONS_SUBJECT``; gateways drop it from their auth cache.

The database is the truth and is written first; the broadcast only shortens how long a gateway keeps
trusting what it checked a moment ago. Core NATS delivers at most once, so a gateway that misses the
message (NATS away, the gateway reconnecting) still stops within its cache time: that bound stays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client

from imagegen_common import nats_names
from imagegen_common.revocations import Revocation

log = logging.getLogger(__name__)

#: How long a revocation waits for the server to take the message before it answers anyway.
FLUSH_TIMEOUT_SECONDS = 2


class RevocationPublisher:
    def __init__(
        self, connection: Callable[[], Client | None], flush_timeout: int = FLUSH_TIMEOUT_SECONDS
    ) -> None:
        # The settlement consumer's connection, looked up per call: billing starts without NATS.
        self._connection = connection
        self._flush_timeout = flush_timeout

    async def publish(self, revocation: Revocation) -> bool:
        """Broadcasts a revocation; returns whether the server took it (flushed), so that gateways
        hear of it before the revoking call returns. Never raises: the cache bound is the fallback."""
        connection = self._connection()
        if connection is None or not connection.is_connected:
            log.warning(
                "revocation not broadcast: NATS unavailable", extra={"account_id": revocation.account_id}
            )
            return False
        try:
            await connection.publish(nats_names.REVOCATIONS_SUBJECT, revocation.encode())
            await connection.flush(timeout=self._flush_timeout)
        except (nats.errors.Error, TimeoutError) as error:
            log.warning(
                "revocation not broadcast",
                extra={"account_id": revocation.account_id, "error": repr(error)},
            )
            return False
        return True
