"""Webhooks in the database: each account's default URL and signing secret, and the record of every
attempt to deliver a job's outcome (with the summary kept on the job's reservation)."""

from __future__ import annotations

import base64
import secrets

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from imagegen_billing.accounts import account_by_alias
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    MAX_MESSAGE_CHARS,
    FailedPreconditionError,
    InvalidArgumentError,
    ReservationNotFoundError,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSettings,
    check_job_id,
    check_webhook_url,
    shown,
    webhook_state_after,
)
from imagegen_billing.models import account_webhooks, reservations, webhook_attempts
from imagegen_billing.store import AnyRow, now, to_webhook_attempt, to_webhook_delivery

#: Standard Webhooks: "whsec_" and the base64 of 24 to 64 random bytes.
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_signing_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def _settings(account_id: str, row: AnyRow | None) -> WebhookSettings:
    if row is None:
        return WebhookSettings(account_id=account_id, url="", has_secret=False, update_time=None)
    return WebhookSettings(
        account_id=account_id, url=row.url, has_secret=bool(row.secret), update_time=row.update_time
    )


class Webhooks:
    """Accounts' webhook settings and the delivery records of jobs' webhooks."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def settings(self, alias: str) -> WebhookSettings:
        """The settings of an account (by id or email), never its secret."""
        async with self.db.read() as conn:
            account = await account_by_alias(conn, alias)
            return _settings(account.id, await _row(conn, account.id))

    async def signing(self, account_id: str) -> tuple[WebhookSettings, str]:
        """The settings of an account and its signing secret ("" when it has none)."""
        async with self.db.read() as conn:
            account = await account_by_alias(conn, account_id)
            row = await _row(conn, account.id)
        return _settings(account.id, row), (row.secret if row is not None else "")

    async def set_url(self, alias: str, url: str) -> tuple[WebhookSettings, str]:
        """Sets the default URL; returns the signing secret when this call made it, "" otherwise."""
        url = check_webhook_url(url)
        at = now()
        async with self.db.write() as conn:
            account = await account_by_alias(conn, alias)
            row = await _row(conn, account.id)
            if row is None:
                secret = new_signing_secret()
                await conn.execute(
                    insert(account_webhooks).values(
                        account_id=account.id, url=url, secret=secret, create_time=at, update_time=at
                    )
                )
            else:
                secret = "" if row.secret else new_signing_secret()
                values: dict[str, object] = {"url": url, "update_time": at}
                if secret:
                    values["secret"] = secret
                await conn.execute(
                    update(account_webhooks).where(account_webhooks.c.account_id == account.id).values(values)
                )
            return _settings(account.id, await _row(conn, account.id)), secret

    async def clear_url(self, alias: str) -> WebhookSettings:
        """Removes the default URL; the secret stays, for the webhooks that requests name."""
        async with self.db.write() as conn:
            account = await account_by_alias(conn, alias)
            await conn.execute(
                update(account_webhooks)
                .where(account_webhooks.c.account_id == account.id)
                .values(url="", update_time=now())
            )
            return _settings(account.id, await _row(conn, account.id))

    async def rotate_secret(self, alias: str) -> tuple[WebhookSettings, str]:
        """A new signing secret for the account (the old one stops signing at once)."""
        secret = new_signing_secret()
        at = now()
        async with self.db.write() as conn:
            account = await account_by_alias(conn, alias)
            if await _row(conn, account.id) is None:
                await conn.execute(
                    insert(account_webhooks).values(
                        account_id=account.id, url="", secret=secret, create_time=at, update_time=at
                    )
                )
            else:
                await conn.execute(
                    update(account_webhooks)
                    .where(account_webhooks.c.account_id == account.id)
                    .values(secret=secret, update_time=at)
                )
            return _settings(account.id, await _row(conn, account.id)), secret

    async def record_attempt(self, attempt: WebhookAttempt, final: bool) -> WebhookDelivery:
        """Records an attempt and returns the job's delivery summary after it; a repeat of an attempt
        already recorded changes nothing.

        Raises NotFoundError for an unknown job, FailedPreconditionError for a job without webhook.
        """
        _check_attempt(attempt)
        try:
            async with self.db.write() as conn:
                delivery = await _delivery(conn, attempt.job_id)
                recorded = await conn.scalar(
                    select(webhook_attempts.c.id).where(
                        webhook_attempts.c.job_id == attempt.job_id,
                        webhook_attempts.c.attempt == attempt.attempt,
                    )
                )
                if recorded is not None:
                    return delivery
                await conn.execute(
                    insert(webhook_attempts).values(
                        job_id=attempt.job_id,
                        attempt=attempt.attempt,
                        status_code=attempt.status_code,
                        error=attempt.error[:MAX_MESSAGE_CHARS],
                        attempt_time=attempt.attempt_time,
                    )
                )
                state = webhook_state_after(
                    delivery.state, attempt.attempt, delivery.attempt_count, attempt.status_code, final
                )
                values: dict[str, object] = {"webhook_state": state.value}
                if attempt.attempt > delivery.attempt_count:
                    values.update(
                        webhook_attempt_count=attempt.attempt,
                        webhook_last_status_code=attempt.status_code,
                        webhook_last_error=attempt.error[:MAX_MESSAGE_CHARS],
                        webhook_last_attempt_time=attempt.attempt_time,
                    )
                row = (
                    await conn.execute(
                        update(reservations)
                        .where(reservations.c.job_id == attempt.job_id)
                        .values(values)
                        .returning(reservations)
                    )
                ).one()
        except IntegrityError:
            # The same attempt was recorded a moment ago by another call: it is a repeat.
            async with self.db.read() as conn:
                return await _delivery(conn, attempt.job_id)
        recorded_delivery = to_webhook_delivery(row)
        assert recorded_delivery is not None  # the job has a webhook, checked above
        return recorded_delivery

    async def attempts(self, job_id: str) -> list[WebhookAttempt]:
        """Every recorded attempt of a job's webhook, oldest first."""
        check_job_id(job_id)
        query = (
            select(webhook_attempts)
            .where(webhook_attempts.c.job_id == job_id)
            .order_by(webhook_attempts.c.attempt)
        )
        async with self.db.read() as conn:
            return [to_webhook_attempt(row) for row in (await conn.execute(query)).all()]


def _check_attempt(attempt: WebhookAttempt) -> None:
    check_job_id(attempt.job_id, field="attempt.job_id")
    if attempt.attempt < 1:
        raise InvalidArgumentError(
            f"attempt must be at least 1, not {attempt.attempt}", field="attempt.attempt"
        )
    if not 0 <= attempt.status_code <= 599:
        raise InvalidArgumentError(
            f"status_code must be an HTTP status or 0, not {attempt.status_code}",
            field="attempt.status_code",
        )


async def _row(conn: AsyncConnection, account_id: str) -> AnyRow | None:
    query = select(account_webhooks).where(account_webhooks.c.account_id == account_id)
    return (await conn.execute(query)).first()


async def _delivery(conn: AsyncConnection, job_id: str) -> WebhookDelivery:
    row = (await conn.execute(select(reservations).where(reservations.c.job_id == job_id))).first()
    if row is None:
        raise ReservationNotFoundError(job_id)
    delivery = to_webhook_delivery(row)
    if delivery is None:
        raise FailedPreconditionError(f"job {shown(job_id)} has no webhook")
    return delivery
