"""Billing's gRPC API through a real server on a socket: statuses, messages, health, reflection, metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from imagegen.admin.v1 import admin_service_pb2 as admin_pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc, resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_billing.config import BillingSettings
from imagegen_billing.server import BillingServer
from imagegen_common import rpc_errors
from imagegen_common.catalog import load_catalog
from imagegen_common.service_auth import Caller
from imagegen_testing import eventually
from imagegen_testing.billing_callers import AsServices

if TYPE_CHECKING:  # the async stub classes exist only in the type stubs
    BillingStub = billing_service_pb2_grpc.BillingServiceAsyncStub
    AdminStub = admin_service_pb2_grpc.AdminServiceAsyncStub
Metadata = list[tuple[str, str]]
HELD = resources_pb2.Reservation.STATE_HELD
CAPTURED = resources_pb2.Reservation.STATE_CAPTURED
RELEASED = resources_pb2.Reservation.STATE_RELEASED
Reason = pb.ErrorReason
IMAGE = resources_pb2.JobResult(image_url="http://x/images/img.png", mime_type="image/png")
FAILURE = resources_pb2.JobResult(error=jobs_pb2.ERROR_CODE_CONTENT_REJECTED, error_message="refused")


async def rpc_error(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def create_account(
    admin_stub: AdminStub, metadata: Metadata, credits: int, email: str = "ada@example.test"
) -> admin_pb.CreateAccountResponse:
    return await admin_stub.CreateAccount(
        admin_pb.CreateAccountRequest(email=email, credits=credits), metadata=metadata
    )


def reserve(account_id: str, job_id: str, amount: int, expire: datetime | None = None) -> pb.ReserveRequest:
    request = pb.ReserveRequest(account_id=account_id, job_id=job_id, amount=amount)
    if expire is not None:
        request.expire_time.FromDatetime(expire)
    return request


def counter(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_health_serves_and_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)

    async def serving() -> bool:
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="imagegen.billing.v1.BillingService")
        )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    await eventually(serving)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
    names = {s.name async for reply in replies for s in reply.list_services_response.service}
    assert {
        "imagegen.billing.v1.BillingService",
        "imagegen.admin.v1.AdminService",
        "grpc.health.v1.Health",
    } <= names


async def test_tokens_authenticate_until_revoked(
    billing_stub: BillingStub,
    admin_stub: AdminStub,
    admin_metadata: Metadata,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    created = await create_account(admin_stub, admin_metadata, 50)
    secret = created.token_secret
    assert secret.startswith("igk_") and created.token.prefix == secret[:8]
    assert created.account.credits == 50 and created.account.id.startswith("acc_")

    reply = await billing_stub.Authenticate(pb.AuthenticateRequest(token=secret))
    assert (reply.account.id, reply.account.credits, reply.token_id) == (
        created.account.id,
        50,
        created.token.id,
    )
    account = await billing_stub.GetAccount(pb.GetAccountRequest(account_id=created.account.id))
    assert account.tokens[0].HasField("last_used_time")

    second = await admin_stub.IssueToken(
        admin_pb.IssueTokenRequest(account="ADA@example.test", label="ci"), metadata=admin_metadata
    )
    assert second.token.label == "ci"
    await admin_stub.RevokeToken(
        admin_pb.RevokeTokenRequest(token_id=created.token.id), metadata=admin_metadata
    )
    for bad in (secret, "", "igk_not-a-token", "Bearer " + secret, "x" * 300):
        error = await rpc_error(billing_stub.Authenticate(pb.AuthenticateRequest(token=bad)))
        assert (error.code(), error.details()) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "invalid or revoked API token",
        )
    assert (await billing_stub.Authenticate(pb.AuthenticateRequest(token=second.token_secret))).token_id == (
        second.token.id
    )
    assert secret not in caplog.text and second.token_secret not in caplog.text


async def test_the_admin_api_needs_the_admin_token(
    admin_stub: AdminStub, billing_server: BillingServer, admin_metadata: Metadata
) -> None:
    before = counter(
        "imagegen_billing_rpc_requests_total",
        service="imagegen.admin.v1.AdminService",
        method="ListAccounts",
        code="UNAUTHENTICATED",
    )
    token = billing_server.settings.admin_token.get_secret_value()
    for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", token)]):
        error = await rpc_error(admin_stub.ListAccounts(admin_pb.ListAccountsRequest(), metadata=metadata))
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED
        assert rpc_errors.from_error(error).reason == Reason.ERROR_REASON_INVALID_TOKEN
    after = counter(
        "imagegen_billing_rpc_requests_total",
        service="imagegen.admin.v1.AdminService",
        method="ListAccounts",
        code="UNAUTHENTICATED",
    )
    assert after - before == 3
    assert (
        await admin_stub.ListAccounts(admin_pb.ListAccountsRequest(), metadata=admin_metadata)
    ).accounts == []


async def test_admin_errors_are_clear(admin_stub: AdminStub, admin_metadata: Metadata) -> None:
    await create_account(admin_stub, admin_metadata, 0)
    md = admin_metadata
    cases: list[tuple[Awaitable[object], grpc.StatusCode, str]] = [
        (
            admin_stub.CreateAccount(admin_pb.CreateAccountRequest(email="ada@example.test"), metadata=md),
            grpc.StatusCode.ALREADY_EXISTS,
            "an account with email ada@example.test already exists",
        ),
        (
            admin_stub.CreateAccount(admin_pb.CreateAccountRequest(email="not-an-email"), metadata=md),
            grpc.StatusCode.INVALID_ARGUMENT,
            "'not-an-email' is not an email address",
        ),
        (
            admin_stub.CreateAccount(
                admin_pb.CreateAccountRequest(email="b@example.test", credits=-1), metadata=md
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "initial credits must not be negative, not -1",
        ),
        (
            admin_stub.GetAccount(admin_pb.GetAccountRequest(account="acc_missing"), metadata=md),
            grpc.StatusCode.NOT_FOUND,
            "no account 'acc_missing'",
        ),
        (
            admin_stub.RevokeToken(admin_pb.RevokeTokenRequest(token_id="tok_missing"), metadata=md),
            grpc.StatusCode.NOT_FOUND,
            "no token 'tok_missing'",
        ),
        (
            admin_stub.GrantCredits(
                admin_pb.GrantCreditsRequest(account="ada@example.test", amount=-1), metadata=md
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "cannot remove 1 credits: the account has 0",
        ),
    ]
    for call, code, message in cases:
        error = await rpc_error(call)
        assert (error.code(), error.details()) == (code, message)


async def test_models_and_quotes_come_from_the_catalog(billing_stub: BillingStub) -> None:
    catalog = load_catalog()
    models = await billing_stub.ListModels(pb.ListModelsRequest())
    assert models.default_model == catalog.default_model
    assert [m.key for m in models.models] == [m.key for m in catalog]

    quote = await billing_stub.Quote(pb.QuoteRequest(width=1024, height=1024))
    assert (quote.model, quote.credits) == (catalog.default_model, catalog.get(None).default_cost)
    quote = await billing_stub.Quote(pb.QuoteRequest(model="flux-1.1-pro", width=2048, height=1024))
    assert quote.credits == 16

    unknown = await rpc_error(billing_stub.Quote(pb.QuoteRequest(model="dall-e", width=1024, height=1024)))
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    assert (
        unknown.details() == f"unknown model 'dall-e'; available models: {', '.join(sorted(catalog.models))}"
    )
    size = await rpc_error(billing_stub.Quote(pb.QuoteRequest(model="sdxl", width=4096, height=1024)))
    assert (size.code(), size.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "width 4096 is out of range for sdxl: it must be between 512 and 2048 pixels",
    )
    inputs = await rpc_error(
        billing_stub.Quote(pb.QuoteRequest(model="imagen-4", width=1024, height=1024, input_image_count=1))
    )
    assert inputs.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "imagen-4 does not support image-to-image" in (inputs.details() or "")


async def test_reservations_over_grpc(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 20)).account.id
    held = await billing_stub.Reserve(reserve(account_id, "img_a", 8))
    assert (held.credits, held.reservation.state) == (12, HELD)
    expires = held.reservation.expire_time.ToDatetime(tzinfo=UTC)
    assert timedelta(minutes=14) < expires - datetime.now(UTC) <= timedelta(minutes=15)
    assert (await billing_stub.Reserve(reserve(account_id, "img_a", 8))).reservation == held.reservation

    result = resources_pb2.JobResult(image_url="http://x/images/img_a.png", mime_type="image/png")
    captured = await billing_stub.SettleJob(pb.SettleJobRequest(job_id="img_a", result=result))
    assert (captured.credits, captured.reservation.state, captured.outcome) == (
        12,
        CAPTURED,
        pb.SETTLE_OUTCOME_CAPTURED,
    )
    assert captured.reservation.result.image_url == result.image_url
    fetched = await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_a"))
    assert fetched.reservation == captured.reservation

    await billing_stub.Reserve(reserve(account_id, "img_b", 5))
    released = await billing_stub.Release(
        pb.ReleaseRequest(job_id="img_b", reason=resources_pb2.RELEASE_REASON_CANCELLED, detail="gone")
    )
    assert (
        released.credits,
        released.reservation.state,
        released.reservation.release_reason,
        released.reservation.release_detail,
    ) == (12, RELEASED, resources_pb2.RELEASE_REASON_CANCELLED, "gone")
    cancel = pb.ReleaseRequest(job_id="img_missing", reason=resources_pb2.RELEASE_REASON_CANCELLED)
    account = (await billing_stub.GetAccount(pb.GetAccountRequest(account_id=account_id))).account
    assert (account.credits, account.reserved_credits) == (12, 0)

    cases: list[tuple[Awaitable[object], grpc.StatusCode, str]] = [
        (
            billing_stub.Reserve(reserve(account_id, "img_c", 13)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "insufficient credits: need 13, have 12",
        ),
        (
            billing_stub.Reserve(reserve(account_id, "img_c", -5)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount must be positive, not -5",
        ),
        (
            billing_stub.Reserve(reserve(account_id, "img_c", 0)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "amount must be positive, not 0",
        ),
        (
            billing_stub.Reserve(reserve("acc_missing", "img_c", 1)),
            grpc.StatusCode.NOT_FOUND,
            "no account 'acc_missing'",
        ),
        (
            billing_stub.SettleJob(pb.SettleJobRequest(job_id="img_missing", result=IMAGE)),
            grpc.StatusCode.NOT_FOUND,
            "no reservation for job img_missing",
        ),
        (
            billing_stub.Release(cancel),
            grpc.StatusCode.NOT_FOUND,
            "no reservation for job img_missing",
        ),
        (
            billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_missing")),
            grpc.StatusCode.NOT_FOUND,
            "no reservation for job img_missing",
        ),
        (
            billing_stub.Release(
                pb.ReleaseRequest(job_id="img_a", reason=resources_pb2.RELEASE_REASON_TIMEOUT)
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "reservation for job img_a was already captured",
        ),
        (
            billing_stub.Reserve(reserve(account_id, "img_a", 9)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "job img_a already has a reservation for a different request (8 credits); use a new job id",
        ),
        (
            billing_stub.GetAccount(pb.GetAccountRequest(account_id="acc_missing")),
            grpc.StatusCode.NOT_FOUND,
            "no account 'acc_missing'",
        ),
    ]
    for call, code, message in cases:
        error = await rpc_error(call)
        assert (error.code(), error.details()) == (code, message)


async def test_a_batch_over_grpc_is_all_or_nothing(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 10)).account.id
    expire = datetime.now(UTC) + timedelta(minutes=3)
    batch = pb.ReserveBatchRequest(requests=[reserve(account_id, f"img_{i}", 4, expire) for i in range(3)])
    error = await rpc_error(billing_stub.ReserveBatch(batch))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "insufficient credits: need 12, have 10",
    )
    # the numbers also travel in the ErrorInfo, so that clients need not parse the sentence
    rich = rpc_errors.from_error(error)
    assert rich.reason == Reason.ERROR_REASON_INSUFFICIENT_CREDITS
    assert (rich.number(rpc_errors.REQUIRED_CREDITS), rich.number(rpc_errors.AVAILABLE_CREDITS)) == (12, 10)
    del batch.requests[2]
    held = await billing_stub.ReserveBatch(batch)
    assert held.credits == 2 and [r.job_id for r in held.reservations] == ["img_0", "img_1"]
    assert list(held.created_job_ids) == ["img_0", "img_1"]
    assert held.reservations[0].expire_time.ToDatetime(tzinfo=UTC) == expire
    repeat = await billing_stub.ReserveBatch(batch)
    assert repeat.reservations == held.reservations
    assert list(repeat.created_job_ids) == []  # a repeat creates nothing
    mixed = pb.ReserveBatchRequest(
        requests=[reserve(account_id, "img_x", 1), reserve("acc_other", "img_y", 1)]
    )
    error = await rpc_error(billing_stub.ReserveBatch(mixed))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "every request of a batch must name the same account",
    )


async def test_concurrent_reservations_over_grpc_never_overdraw(
    database_url: str,
    make_settings: Callable[..., BillingSettings],
    start_billing: Callable[[BillingSettings], Awaitable[BillingServer]],
    caller_secrets: dict[Caller, str],
) -> None:
    server = await start_billing(make_settings(database_url))
    metadata = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]
    async with grpc.aio.insecure_channel(
        server.settings.billing_listen, interceptors=AsServices.channel_list(caller_secrets)
    ) as channel:
        billing_stub: BillingStub = billing_service_pb2_grpc.BillingServiceStub(channel)
        admin_stub: AdminStub = admin_service_pb2_grpc.AdminServiceStub(channel)
        account_id = (await create_account(admin_stub, metadata, 1000)).account.id

        async def one(n: int) -> str:
            try:
                await billing_stub.Reserve(reserve(account_id, f"img_{n}", 7))
            except grpc.aio.AioRpcError as error:
                return f"{error.code().name}: {error.details()}"
            return "ok"

        answers = await asyncio.gather(*(one(n) for n in range(300)))
        assert answers.count("ok") == 142
        assert set(answers) == {"ok", "FAILED_PRECONDITION: insufficient credits: need 7, have 6"}
        account = (await billing_stub.GetAccount(pb.GetAccountRequest(account_id=account_id))).account
        assert (account.credits, account.reserved_credits) == (6, 994)
        entries = await admin_stub.ListLedgerEntries(
            admin_pb.ListLedgerEntriesRequest(account=account_id, page_size=1000), metadata=metadata
        )
        assert len(entries.entries) == 143
        assert sum(e.amount for e in entries.entries) == account.credits


async def test_the_reaper_releases_what_nobody_settled(
    sqlite_url: str,
    make_settings: Callable[..., BillingSettings],
    start_billing: Callable[[BillingSettings], Awaitable[BillingServer]],
    caller_secrets: dict[Caller, str],
) -> None:
    server = await start_billing(make_settings(sqlite_url, billing_reaper_interval_seconds=0.05))
    metadata = [("authorization", f"Bearer {server.settings.admin_token.get_secret_value()}")]
    async with grpc.aio.insecure_channel(
        server.settings.billing_listen, interceptors=AsServices.channel_list(caller_secrets)
    ) as channel:
        billing_stub: BillingStub = billing_service_pb2_grpc.BillingServiceStub(channel)
        admin_stub: AdminStub = admin_service_pb2_grpc.AdminServiceStub(channel)
        account_id = (await create_account(admin_stub, metadata, 10)).account.id
        await billing_stub.Reserve(
            reserve(account_id, "img_late", 4, datetime.now(UTC) - timedelta(seconds=1))
        )

        async def released() -> bool:
            reply = await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_late"))
            return bool(reply.reservation.state == RELEASED)

        await eventually(released)
        reservation = (
            await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_late"))
        ).reservation
        assert reservation.release_reason == resources_pb2.RELEASE_REASON_EXPIRED
        assert (
            await billing_stub.GetAccount(pb.GetAccountRequest(account_id=account_id))
        ).account.credits == 10


async def test_unexpected_errors_are_internal_without_details(
    billing_stub: BillingStub, billing_server: BillingServer
) -> None:
    async with billing_server.db.write() as conn:
        await conn.exec_driver_sql("DROP TABLE reservations")
    error = await rpc_error(billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_x")))
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL, "internal error")


async def test_refusals_carry_their_reason_metadata_and_bad_fields(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    """What a client switches on arrives through a real server: the ErrorInfo reason, its metadata,
    and a BadRequest naming the field."""
    account_id = (await create_account(admin_stub, admin_metadata, 10)).account.id
    await billing_stub.Reserve(reserve(account_id, "img_a", 4))
    await billing_stub.SettleJob(pb.SettleJobRequest(job_id="img_a", result=IMAGE))
    release = pb.ReleaseRequest(job_id="img_a", reason=resources_pb2.RELEASE_REASON_CANCELLED)
    cases: list[tuple[Awaitable[object], int, dict[str, str], tuple[str, ...]]] = [
        (
            billing_stub.Reserve(reserve(account_id, "img_b", 11)),
            Reason.ERROR_REASON_INSUFFICIENT_CREDITS,
            {"required_credits": "11", "available_credits": "6"},
            (),
        ),
        (billing_stub.Release(release), Reason.ERROR_REASON_ALREADY_SETTLED, {"state": "captured"}, ()),
        (billing_stub.Reserve(reserve(account_id, "img_a", 5)), Reason.ERROR_REASON_JOB_ID_REUSED, {}, ()),
        (
            billing_stub.GetAccount(pb.GetAccountRequest(account_id="acc_missing")),
            Reason.ERROR_REASON_ACCOUNT_NOT_FOUND,
            {},
            (),
        ),
        (
            billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_missing")),
            Reason.ERROR_REASON_RESERVATION_NOT_FOUND,
            {},
            (),
        ),
        (
            billing_stub.Quote(pb.QuoteRequest(model="dall-e", width=1024, height=1024)),
            Reason.ERROR_REASON_MODEL_NOT_FOUND,
            {},
            ("model",),
        ),
        (
            billing_stub.Quote(pb.QuoteRequest(model="sdxl", width=4096, height=1024)),
            Reason.ERROR_REASON_INVALID_ARGUMENT,
            {},
            ("width",),
        ),
        (
            billing_stub.Reserve(reserve(account_id, "img_c", -1)),
            Reason.ERROR_REASON_INVALID_ARGUMENT,
            {},
            ("amount",),
        ),
        (
            billing_stub.Authenticate(pb.AuthenticateRequest(token="igk_" + "x" * 32)),
            Reason.ERROR_REASON_INVALID_TOKEN,
            {},
            (),
        ),
        (
            admin_stub.RevokeToken(
                admin_pb.RevokeTokenRequest(token_id="tok_missing"), metadata=admin_metadata
            ),
            Reason.ERROR_REASON_TOKEN_NOT_FOUND,
            {},
            (),
        ),
        (
            admin_stub.CreateAccount(
                admin_pb.CreateAccountRequest(email="ada@example.test"), metadata=admin_metadata
            ),
            Reason.ERROR_REASON_ALREADY_EXISTS,
            {},
            (),
        ),
    ]
    for call, reason, metadata, fields in cases:
        error = rpc_errors.from_error(await rpc_error(call))
        assert (error.reason, dict(error.metadata), tuple(v.field for v in error.violations)) == (
            reason,
            metadata,
            fields,
        ), error.message


async def test_settle_job_captures_releases_and_tells_repeats_from_conflicts(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 10)).account.id
    for job_id in ("img_ok", "img_fail"):
        await billing_stub.Reserve(reserve(account_id, job_id, 3))

    async def settle(job_id: str, result: resources_pb2.JobResult) -> pb.SettleJobResponse:
        return await billing_stub.SettleJob(pb.SettleJobRequest(job_id=job_id, result=result))

    captured = await settle("img_ok", IMAGE)
    assert (captured.outcome, captured.credits) == (pb.SETTLE_OUTCOME_CAPTURED, 4)
    released = await settle("img_fail", FAILURE)
    assert (released.outcome, released.credits) == (pb.SETTLE_OUTCOME_RELEASED, 7)
    failed = released.reservation
    assert (failed.state, failed.release_reason, failed.release_detail) == (
        RELEASED,
        resources_pb2.RELEASE_REASON_FAILED,
        "refused",
    )
    assert (failed.result.error, failed.result.error_message) == (
        jobs_pb2.ERROR_CODE_CONTENT_REJECTED,
        "refused",
    )
    assert (await settle("img_ok", IMAGE)).outcome == pb.SETTLE_OUTCOME_DUPLICATE
    assert (await settle("img_fail", FAILURE)).outcome == pb.SETTLE_OUTCOME_DUPLICATE
    conflict = await settle("img_ok", FAILURE)
    assert (conflict.outcome, conflict.reservation.state, conflict.credits) == (
        pb.SETTLE_OUTCOME_CONFLICT,
        CAPTURED,
        7,
    )
    assert (await settle("img_fail", IMAGE)).outcome == pb.SETTLE_OUTCOME_CONFLICT
    empty = rpc_errors.from_error(await rpc_error(settle("img_ok", resources_pb2.JobResult())))
    assert (empty.code, [v.field for v in empty.violations]) == (grpc.StatusCode.INVALID_ARGUMENT, ["result"])


async def test_release_refuses_failed_and_unspecified_reasons(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 10)).account.id
    await billing_stub.Reserve(reserve(account_id, "img_a", 3))
    for reason in (resources_pb2.RELEASE_REASON_FAILED, resources_pb2.RELEASE_REASON_UNSPECIFIED):
        error = rpc_errors.from_error(
            await rpc_error(
                billing_stub.Release(pb.ReleaseRequest(job_id="img_a", reason=reason, result=FAILURE))
            )
        )
        assert (error.code, error.reason, [v.field for v in error.violations]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            Reason.ERROR_REASON_INVALID_ARGUMENT,
            ["reason"],
        )
    reservation = (await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_a"))).reservation
    assert reservation.state == HELD


async def test_released_credits_are_counted_by_reason(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 100)).account.id
    name = "imagegen_billing_credits_released_total"
    labels = ("failed", "cancelled", "timeout", "expired", "not_queued", "operator")
    before = {label: counter(name, reason=label) for label in labels}
    await billing_stub.Reserve(reserve(account_id, "img_f", 2))
    await billing_stub.SettleJob(pb.SettleJobRequest(job_id="img_f", result=FAILURE))
    for n, reason in enumerate(
        (
            resources_pb2.RELEASE_REASON_CANCELLED,
            resources_pb2.RELEASE_REASON_TIMEOUT,
            resources_pb2.RELEASE_REASON_NOT_QUEUED,
            resources_pb2.RELEASE_REASON_OPERATOR,
        ),
        start=3,
    ):
        await billing_stub.Reserve(reserve(account_id, f"img_{n}", n))
        await billing_stub.Release(
            pb.ReleaseRequest(job_id=f"img_{n}", reason=reason, detail="not queued: x")
        )
    after = {label: counter(name, reason=label) - before[label] for label in labels}
    assert after == {"failed": 2, "cancelled": 3, "timeout": 4, "expired": 0, "not_queued": 5, "operator": 6}
    assert counter(name, reason="requested") == 0  # the old catch-all label is gone


async def test_a_long_id_is_refused_and_never_echoed(billing_stub: BillingStub) -> None:
    """A 20,000-character job id once came back in a NOT_FOUND message and overflowed the trailer."""
    long_id = "img_" + "x" * 20_000
    calls: list[Awaitable[object]] = [
        billing_stub.GetReservation(pb.GetReservationRequest(job_id=long_id)),
        billing_stub.SettleJob(pb.SettleJobRequest(job_id=long_id, result=IMAGE)),
        billing_stub.Release(
            pb.ReleaseRequest(job_id=long_id, reason=resources_pb2.RELEASE_REASON_CANCELLED)
        ),
        billing_stub.ListWebhookAttempts(pb.ListWebhookAttemptsRequest(job_id=long_id)),
        billing_stub.GetAccount(pb.GetAccountRequest(account_id="acc_" + "x" * 20_000)),
        billing_stub.Quote(pb.QuoteRequest(model="m" * 20_000, width=1024, height=1024)),
    ]
    for call in calls:
        error = rpc_errors.from_error(await rpc_error(call))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert len(error.message) < 200 and "xxxxxxxxxx" not in error.message
        assert len(error.violations) == 1


async def test_a_reservation_keeps_its_prompt_bounded_for_the_accounts_history(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 20)).account.id
    batch = pb.ReserveBatchRequest(
        requests=[reserve(account_id, "img_p1", 2), reserve(account_id, "img_p2", 2)]
    )
    batch.requests[0].details.prompt = "a lighthouse at dusk"
    batch.requests[1].details.prompt = "x" * 5000
    await billing_stub.ReserveBatch(batch)
    first = await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_p1"))
    second = await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_p2"))
    assert first.reservation.details.prompt == "a lighthouse at dusk"
    assert second.reservation.details.prompt == "x" * 1024
    listed = await billing_stub.ListReservations(pb.ListReservationsRequest(account_id=account_id))
    assert {r.details.prompt for r in listed.reservations} == {"a lighthouse at dusk", "x" * 1024}


async def test_batch_get_reservations_returns_those_that_exist_in_request_order(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    account_id = (await create_account(admin_stub, admin_metadata, 20)).account.id
    for job_id in ("img_a", "img_b", "img_c"):
        await billing_stub.Reserve(reserve(account_id, job_id, 2))
    await billing_stub.SettleJob(pb.SettleJobRequest(job_id="img_b", result=IMAGE))

    asked = ["img_c", "img_missing", "img_a", "img_b", "img_c"]
    reply = await billing_stub.BatchGetReservations(pb.BatchGetReservationsRequest(job_ids=asked))
    # unknown ids are left out, a repeated one comes once, the rest in the order asked
    assert [r.job_id for r in reply.reservations] == ["img_c", "img_a", "img_b"]
    assert [r.state for r in reply.reservations] == [HELD, HELD, CAPTURED]
    single = await billing_stub.GetReservation(pb.GetReservationRequest(job_id="img_b"))
    assert reply.reservations[2] == single.reservation  # the same mapping as GetReservation

    nothing = await billing_stub.BatchGetReservations(pb.BatchGetReservationsRequest(job_ids=[]))
    assert list(nothing.reservations) == []
    unknown = pb.BatchGetReservationsRequest(job_ids=["img_x", "img_y"])
    assert list((await billing_stub.BatchGetReservations(unknown)).reservations) == []


async def test_batch_get_reservations_refuses_too_many_ids_or_a_bad_one(billing_stub: BillingStub) -> None:
    as_many_as_allowed = pb.BatchGetReservationsRequest(job_ids=[f"img_{i}" for i in range(1000)])
    assert list((await billing_stub.BatchGetReservations(as_many_as_allowed)).reservations) == []

    too_many = pb.BatchGetReservationsRequest(job_ids=[f"img_{i}" for i in range(1001)])
    bad = pb.BatchGetReservationsRequest(job_ids=["img_a", ""])
    for request, message in (
        (too_many, "a batch names at most 1000 job ids, not 1001"),
        (bad, None),
    ):
        raised = await rpc_error(billing_stub.BatchGetReservations(request))
        error = rpc_errors.from_error(raised)
        assert raised.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.reason == Reason.ERROR_REASON_INVALID_ARGUMENT
        assert [v.field for v in error.violations] == ["job_ids"]
        if message is not None:
            assert raised.details() == message


async def test_a_burst_of_reservations_queues_instead_of_being_shed(
    billing_stub: BillingStub, admin_stub: AdminStub, admin_metadata: Metadata
) -> None:
    """More calls at once than gRPC's own server keeps waiting (it sheds them with CANCELLED at
    random past 1,000 and all past 3,000): billing takes them all, and the group commit absorbs them."""
    burst = 3500
    account = (await create_account(admin_stub, admin_metadata, burst)).account
    calls = [
        billing_stub.ReserveBatch(pb.ReserveBatchRequest(requests=[reserve(account.id, f"img_{n}", 1)]))
        for n in range(burst)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == []
    left = await admin_stub.GetAccount(
        admin_pb.GetAccountRequest(account=account.id), metadata=admin_metadata
    )
    assert left.account.credits == 0
