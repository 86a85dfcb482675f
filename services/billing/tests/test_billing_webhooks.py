"""What the REST API needs from billing, on a real database (SQLite and PostgreSQL) and through the gRPC
API: an account's history a page at a time, accounts' webhook settings and secrets, and the record of
webhook delivery attempts with its summary on the reservation."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from sqlalchemy import text

from imagegen.admin.v1 import admin_service_pb2 as admin_pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc, resources_pb2
from imagegen_billing.accounts import Accounts
from imagegen_billing.db import Database
from imagegen_billing.domain import (
    FailedPreconditionError,
    InvalidArgumentError,
    JobDetails,
    NotFoundError,
    ReserveRequest,
    WebhookAttempt,
    WebhookState,
    webhook_state_after,
)
from imagegen_billing.ledger import Ledger
from imagegen_billing.webhooks import Webhooks

if TYPE_CHECKING:  # the async stub classes exist only in the type stubs
    BillingStub = billing_service_pb2_grpc.BillingServiceAsyncStub
    AdminStub = admin_service_pb2_grpc.AdminServiceAsyncStub
Metadata = list[tuple[str, str]]
ConsistencyCheck = Callable[[Database], Awaitable[None]]
PENDING = resources_pb2.WebhookDelivery.STATE_PENDING
DELIVERED = resources_pb2.WebhookDelivery.STATE_DELIVERED
FAILED = resources_pb2.WebhookDelivery.STATE_FAILED


def _attempt(job_id: str, n: int, status: int, error: str = "") -> WebhookAttempt:
    return WebhookAttempt(job_id, n, status, error, datetime.now(UTC))


async def test_history_pages_newest_first_with_a_stable_cursor(
    db: Database, accounts_repo: Accounts, ledger: Ledger
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 100)
    other, _, _ = await accounts_repo.create("bob@example.test", 100)
    for n in range(5):
        await ledger.reserve(ReserveRequest(account.id, f"img_single_{n}", 1))
    batch = await ledger.reserve_batch([ReserveRequest(account.id, f"img_batch_{n}", 1) for n in range(3)])
    await ledger.reserve(ReserveRequest(other.id, "img_other", 1))

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page, token = await ledger.reservations_page(account.id, 3, token)
        pages += 1
        seen.extend(r.job_id for r in page)
        if not token:
            break
    assert pages == 3 and len(seen) == len(set(seen)) == 8
    # the batch (one create time, the newest) first, then the single ones newest first
    assert set(seen[:3]) == {r.job_id for r in batch.reservations}
    assert seen[3:] == [f"img_single_{n}" for n in reversed(range(5))]
    everything, last = await ledger.reservations_page(account.id)
    assert [r.job_id for r in everything] == seen and last == ""
    assert (await ledger.reservations_page("acc_nobody"))[0] == []


@pytest.mark.parametrize(
    "token", ["not base64 !", "bm90IGEgdGltZQ", base64.urlsafe_b64encode(b"2026|").decode()]
)
async def test_a_bad_history_cursor_is_refused(
    db: Database, accounts_repo: Accounts, ledger: Ledger, token: str
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    with pytest.raises(InvalidArgumentError, match="invalid page_token"):
        await ledger.reservations_page(account.id, 10, token)


async def test_the_history_query_uses_the_account_time_index(db: Database) -> None:
    if db.sqlite:
        async with db.read() as conn:
            plan = await conn.execute(
                text(
                    "EXPLAIN QUERY PLAN SELECT * FROM reservations WHERE account_id = 'a' "
                    "ORDER BY create_time DESC, job_id DESC LIMIT 51"
                )
            )
            details = " ".join(str(row[-1]) for row in plan)
        assert "ix_reservations_account_id_create_time" in details
        assert "TEMP B-TREE" not in details  # no sort: the index gives the order


async def test_account_webhook_settings_and_secrets(db: Database, accounts_repo: Accounts) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 0)
    webhooks = Webhooks(db)
    assert await webhooks.signing(account.id) == (await webhooks.settings(account.id), "")
    assert not (await webhooks.settings(account.id)).has_secret

    settings, secret = await webhooks.set_url("ada@example.test", " https://hooks.example.test/imagegen ")
    assert settings.url == "https://hooks.example.test/imagegen" and settings.has_secret
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    again, no_new_secret = await webhooks.set_url(account.id, "https://hooks.example.test/v2")
    assert again.url == "https://hooks.example.test/v2" and no_new_secret == ""
    assert (await webhooks.signing(account.id))[1] == secret

    rotated_settings, rotated = await webhooks.rotate_secret(account.id)
    assert rotated != secret and rotated_settings.url == "https://hooks.example.test/v2"
    assert (await webhooks.signing(account.id))[1] == rotated
    cleared = await webhooks.clear_url(account.id)
    assert cleared.url == "" and cleared.has_secret
    assert (await webhooks.signing(account.id))[1] == rotated

    for bad in ("ftp://x.test/a", "not a url", "http://", "https://user:pw@x.test/", "http://x.test:99999/"):
        with pytest.raises(InvalidArgumentError):
            await webhooks.set_url(account.id, bad)
    with pytest.raises(NotFoundError):
        await webhooks.set_url("acc_missing", "https://x.test/")


async def test_webhook_attempts_are_recorded_once_and_summarised(
    db: Database, accounts_repo: Accounts, ledger: Ledger
) -> None:
    account, _, _ = await accounts_repo.create("ada@example.test", 10)
    webhooks = Webhooks(db)
    details = JobDetails(model="flux-1", width=512, height=512, webhook_url="https://hooks.example.test/a")
    held = await ledger.reserve(ReserveRequest(account.id, "img_hook", 2, details=details))
    assert held.reservation.webhook is not None
    assert (held.reservation.webhook.state, held.reservation.webhook.url) == (
        WebhookState.PENDING,
        "https://hooks.example.test/a",
    )
    assert held.reservation.details.webhook_url == "https://hooks.example.test/a"

    first = await webhooks.record_attempt(_attempt("img_hook", 1, 500), final=False)
    assert (first.state, first.attempt_count, first.last_status_code) == (WebhookState.PENDING, 1, 500)
    repeat = await webhooks.record_attempt(_attempt("img_hook", 1, 200), final=False)
    assert repeat == first  # the same attempt again changes nothing
    second = await webhooks.record_attempt(_attempt("img_hook", 2, 0, "timeout"), final=False)
    assert (second.attempt_count, second.last_status_code, second.last_error) == (2, 0, "timeout")
    delivered = await webhooks.record_attempt(_attempt("img_hook", 3, 204), final=False)
    assert (delivered.state, delivered.attempt_count) == (WebhookState.DELIVERED, 3)
    assert (await ledger.reservation("img_hook")).webhook == delivered
    attempts = await webhooks.attempts("img_hook")
    assert [(a.attempt, a.status_code, a.error) for a in attempts] == [
        (1, 500, ""),
        (2, 0, "timeout"),
        (3, 204, ""),
    ]

    await ledger.reserve(ReserveRequest(account.id, "img_plain", 2))
    assert (await ledger.reservation("img_plain")).webhook is None
    with pytest.raises(FailedPreconditionError, match="has no webhook"):
        await webhooks.record_attempt(_attempt("img_plain", 1, 200), final=True)
    with pytest.raises(NotFoundError):
        await webhooks.record_attempt(_attempt("img_missing", 1, 200), final=True)
    with pytest.raises(InvalidArgumentError):
        await webhooks.record_attempt(_attempt("img_hook", 0, 200), final=True)


def test_the_delivery_state_rule() -> None:
    pending, delivered, failed = WebhookState.PENDING, WebhookState.DELIVERED, WebhookState.FAILED
    assert webhook_state_after(pending, 1, 0, 200, final=False) is delivered
    assert webhook_state_after(pending, 1, 0, 500, final=False) is pending
    assert webhook_state_after(pending, 8, 7, 0, final=True) is failed
    assert webhook_state_after(delivered, 9, 8, 500, final=True) is delivered  # delivered for good
    assert webhook_state_after(pending, 2, 5, 500, final=True) is pending  # a late report of attempt 2


async def test_history_and_webhooks_through_grpc(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    created = await admin_stub.CreateAccount(
        admin_pb.CreateAccountRequest(email="ada@example.test", credits=20), metadata=admin_metadata
    )
    account_id = created.account.id
    expire = datetime.now(UTC) + timedelta(minutes=5)
    for n in range(3):
        request = pb.ReserveRequest(
            account_id=account_id,
            job_id=f"img_{n}",
            amount=2,
            details=resources_pb2.JobDetails(
                model="flux-1", width=512, height=512, webhook_url="https://hooks.example.test/" if n else ""
            ),
        )
        request.expire_time.FromDatetime(expire)
        await billing_stub.Reserve(request)

    first = await billing_stub.ListReservations(
        pb.ListReservationsRequest(account_id=account_id, page_size=2)
    )
    assert [r.job_id for r in first.reservations] == ["img_2", "img_1"] and first.next_page_token
    rest = await billing_stub.ListReservations(
        pb.ListReservationsRequest(account_id=account_id, page_size=2, page_token=first.next_page_token)
    )
    assert [r.job_id for r in rest.reservations] == ["img_0"] and rest.next_page_token == ""
    assert first.reservations[0].webhook.state == PENDING
    assert first.reservations[0].details.webhook_url == "https://hooks.example.test/"
    assert not rest.reservations[0].HasField("webhook")

    settings = await billing_stub.GetWebhookSettings(pb.GetWebhookSettingsRequest(account_id=account_id))
    assert settings.signing_secret == "" and not settings.settings.has_secret
    set_reply = await admin_stub.SetWebhook(
        admin_pb.SetWebhookRequest(account="ada@example.test", url="https://hooks.example.test/default"),
        metadata=admin_metadata,
    )
    assert set_reply.signing_secret.startswith("whsec_") and set_reply.settings.has_secret
    settings = await billing_stub.GetWebhookSettings(pb.GetWebhookSettingsRequest(account_id=account_id))
    assert settings.signing_secret == set_reply.signing_secret
    assert settings.settings.url == "https://hooks.example.test/default"
    shown = await admin_stub.GetWebhook(
        admin_pb.GetWebhookRequest(account=account_id), metadata=admin_metadata
    )
    assert shown.settings.url == "https://hooks.example.test/default" and shown.settings.has_secret
    rotated = await admin_stub.RotateWebhookSecret(
        admin_pb.RotateWebhookSecretRequest(account=account_id), metadata=admin_metadata
    )
    assert rotated.signing_secret not in ("", set_reply.signing_secret)
    cleared = await admin_stub.ClearWebhook(
        admin_pb.ClearWebhookRequest(account=account_id), metadata=admin_metadata
    )
    assert cleared.settings.url == "" and cleared.settings.has_secret

    attempt = resources_pb2.WebhookAttempt(job_id="img_1", attempt=1, status_code=503)
    recorded = await billing_stub.RecordWebhookAttempt(
        pb.RecordWebhookAttemptRequest(attempt=attempt, final=True)
    )
    assert (recorded.delivery.state, recorded.delivery.attempt_count) == (FAILED, 1)
    assert recorded.delivery.HasField("last_attempt_time")
    ok = resources_pb2.WebhookAttempt(job_id="img_2", attempt=1, status_code=200)
    recorded = await billing_stub.RecordWebhookAttempt(pb.RecordWebhookAttemptRequest(attempt=ok))
    assert recorded.delivery.state == DELIVERED
    attempts = await billing_stub.ListWebhookAttempts(pb.ListWebhookAttemptsRequest(job_id="img_1"))
    assert [(a.attempt, a.status_code) for a in attempts.attempts] == [(1, 503)]
    reservation = await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_1"))
    assert reservation.reservation.webhook.last_status_code == 503

    errors: list[tuple[Awaitable[object], grpc.StatusCode]] = [
        (billing_stub.ListReservations(pb.ListReservationsRequest()), grpc.StatusCode.INVALID_ARGUMENT),
        (
            billing_stub.ListReservations(pb.ListReservationsRequest(account_id=account_id, page_token="!!")),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            billing_stub.RecordWebhookAttempt(
                pb.RecordWebhookAttemptRequest(
                    attempt=resources_pb2.WebhookAttempt(job_id="img_0", attempt=1)
                )
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
        (
            billing_stub.GetWebhookSettings(pb.GetWebhookSettingsRequest(account_id="acc_missing")),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            admin_stub.SetWebhook(
                admin_pb.SetWebhookRequest(account=account_id, url="gopher://x"), metadata=admin_metadata
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            billing_stub.Reserve(
                pb.ReserveRequest(
                    account_id=account_id,
                    job_id="img_bad_hook",
                    amount=1,
                    details=resources_pb2.JobDetails(webhook_url="javascript:alert(1)"),
                )
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for call, code in errors:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == code, caught.value.details()
