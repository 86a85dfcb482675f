"""The billing client's one error translation, against a real ``grpc.aio`` server on a free port that
refuses with rich errors (``rpc_errors.to_status``), as billing does: the client switches on the reason,
never on the status code or the message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from pydantic import SecretStr

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc, resources_pb2
from imagegen.jobs.v1 import jobs_pb2
from imagegen_common import rpc_errors
from imagegen_common.rpc_errors import ErrorReason, FieldViolation
from imagegen_common.service_auth import Caller
from imagegen_gateway.billing_client import BillingClient
from imagegen_gateway.domain import (
    ErrorCode,
    JobResult,
    ReleaseReason,
    ReservationRequest,
    ReservationState,
    SettleOutcome,
)
from imagegen_gateway.errors import (
    GatewayError,
    InsufficientCreditsError,
    InvalidInputError,
    InvalidTokenError,
    ServiceUnavailableError,
)
from imagegen_testing.net import free_port

Refusal = tuple[grpc.StatusCode, str, ErrorReason.ValueType, dict[str, str], tuple[FieldViolation, ...]]
R = resources_pb2.Reservation
RELEASED = R(job_id="img_a", account_id="acc_1", amount=4, state=R.STATE_RELEASED)


@dataclass
class Billing(billing_service_pb2_grpc.BillingServiceServicer):
    """Refuses each RPC named in ``refusals``; records what it was asked."""

    refusals: dict[str, Refusal] = field(default_factory=dict)
    requests: list[Any] = field(default_factory=list)
    prompt: str = ""
    #: Seconds ReserveBatch takes (a burst queued in billing's group commit).
    reserve_delay: float = 0.0

    async def _refuse(self, name: str, request: Any, context: Any) -> None:
        self.requests.append(request)
        if name in self.refusals:
            code, message, reason, metadata, violations = self.refusals[name]
            await context.abort_with_status(rpc_errors.to_status(code, message, reason, metadata, violations))

    async def Authenticate(self, request: Any, context: Any) -> pb.AuthenticateResponse:  # noqa: N802
        await self._refuse("Authenticate", request, context)
        return pb.AuthenticateResponse()

    async def ReserveBatch(self, request: Any, context: Any) -> pb.ReserveBatchResponse:  # noqa: N802
        await self._refuse("ReserveBatch", request, context)
        await asyncio.sleep(self.reserve_delay)
        return pb.ReserveBatchResponse()

    async def Release(self, request: Any, context: Any) -> pb.ReleaseResponse:  # noqa: N802
        await self._refuse("Release", request, context)
        return pb.ReleaseResponse(reservation=RELEASED)

    async def SettleJob(self, request: Any, context: Any) -> pb.SettleJobResponse:  # noqa: N802
        await self._refuse("SettleJob", request, context)
        settled = R(job_id=request.job_id, state=R.STATE_RELEASED, result=request.result)
        return pb.SettleJobResponse(reservation=settled, outcome=pb.SETTLE_OUTCOME_RELEASED)

    async def GetReservation(self, request: Any, context: Any) -> pb.GetReservationResponse:  # noqa: N802
        await self._refuse("GetReservation", request, context)
        captured = R(
            job_id=request.job_id,
            state=R.STATE_CAPTURED,
            result=resources_pb2.JobResult(image_url="http://x/i.png"),
        )
        return pb.GetReservationResponse(reservation=captured)

    async def BatchGetReservations(  # noqa: N802
        self, request: Any, context: Any
    ) -> pb.BatchGetReservationsResponse:
        await self._refuse("BatchGetReservations", request, context)
        found = [
            R(
                job_id=j,
                state=R.STATE_HELD,
                details=resources_pb2.JobDetails(
                    prompt=self.prompt,
                    webhook_url=f"https://hooks.example.test/{'w' * 200}" if self.prompt else "",
                ),
            )
            for j in request.job_ids
            if j != "img_unknown"
        ]
        return pb.BatchGetReservationsResponse(reservations=found)

    async def ListReservations(self, request: Any, context: Any) -> pb.ListReservationsResponse:  # noqa: N802
        await self._refuse("ListReservations", request, context)
        return pb.ListReservationsResponse()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Billing, BillingClient]]:
    billing = Billing()  # type: ignore[abstract]  # the RPCs these tests do not call are left out
    server = grpc.aio.server()
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(billing, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    client = BillingClient(f"127.0.0.1:{port}", timeout=5.0)
    yield billing, client
    await client.close()
    await server.stop(grace=None)


def _refusal(
    code: grpc.StatusCode,
    reason: ErrorReason.ValueType,
    message: str = "refused",
    metadata: dict[str, str] | None = None,
    violations: tuple[FieldViolation, ...] = (),
) -> Refusal:
    return code, message, reason, metadata or {}, violations


FAILED_PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


async def test_insufficient_credits_carry_billing_s_numbers(served: tuple[Billing, BillingClient]) -> None:
    billing, client = served
    billing.refusals["ReserveBatch"] = _refusal(
        FAILED_PRECONDITION,
        ErrorReason.ERROR_REASON_INSUFFICIENT_CREDITS,
        metadata={rpc_errors.REQUIRED_CREDITS: "8", rpc_errors.AVAILABLE_CREDITS: "3"},
    )
    requests = [ReservationRequest(f"img_{n}", 4, "m", 1024, 1024) for n in range(2)]
    with pytest.raises(InsufficientCreditsError) as raised:
        await client.reserve("acc_1", requests, datetime.now(UTC))
    assert (raised.value.required, raised.value.available) == (8, 3)
    assert "these 2 images cost 8 credits" in raised.value.message


async def test_the_code_alone_means_nothing(served: tuple[Billing, BillingClient]) -> None:
    """FAILED_PRECONDITION whose message reads like a shortage, but without the reason, is no shortage."""
    billing, client = served
    billing.refusals["ReserveBatch"] = _refusal(
        FAILED_PRECONDITION, ErrorReason.ERROR_REASON_UNSPECIFIED, "insufficient credits: need 8, have 3"
    )
    with pytest.raises(GatewayError) as raised:
        await client.reserve("acc_1", [ReservationRequest("img_a", 4, "m", 1024, 1024)], datetime.now(UTC))
    assert type(raised.value) is GatewayError


async def test_an_invalid_token(served: tuple[Billing, BillingClient]) -> None:
    billing, client = served
    billing.refusals["Authenticate"] = _refusal(
        grpc.StatusCode.UNAUTHENTICATED, ErrorReason.ERROR_REASON_INVALID_TOKEN
    )
    with pytest.raises(InvalidTokenError):
        await client.authenticate("igk_x")


async def test_a_release_of_a_settled_reservation_returns_it_as_it_stands(
    served: tuple[Billing, BillingClient],
) -> None:
    billing, client = served
    billing.refusals["Release"] = _refusal(
        FAILED_PRECONDITION, ErrorReason.ERROR_REASON_ALREADY_SETTLED, metadata={"state": "captured"}
    )
    found = await client.release("img_a", ReleaseReason.TIMEOUT, "gave up")
    assert found is not None and found.state is ReservationState.CAPTURED
    release = billing.requests[0]
    assert (release.reason, release.detail) == (resources_pb2.RELEASE_REASON_TIMEOUT, "gave up")


async def test_a_release_of_no_reservation_is_none(served: tuple[Billing, BillingClient]) -> None:
    billing, client = served
    billing.refusals["Release"] = _refusal(
        grpc.StatusCode.NOT_FOUND, ErrorReason.ERROR_REASON_RESERVATION_NOT_FOUND
    )
    assert await client.release("img_a", ReleaseReason.CANCELLED) is None
    billing.refusals["GetReservation"] = billing.refusals["Release"]
    assert await client.find_reservation("img_a") is None


async def test_reservations_are_read_in_one_call_and_refusals_translated(
    served: tuple[Billing, BillingClient],
) -> None:
    billing, client = served
    found = await client.reservations(["img_b", "img_unknown", "img_a"])
    assert [(r.job_id, r.state) for r in found] == [
        ("img_b", ReservationState.HELD),
        ("img_a", ReservationState.HELD),
    ]
    assert list(billing.requests[0].job_ids) == ["img_b", "img_unknown", "img_a"]
    billing.refusals["BatchGetReservations"] = _refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        ErrorReason.ERROR_REASON_INVALID_ARGUMENT,
        violations=(FieldViolation("job_ids", "a batch names at most 1000 job ids, not 1001"),),
    )
    with pytest.raises(InvalidInputError) as raised:
        await client.reservations([f"img_{i}" for i in range(1001)])
    assert raised.value.field == "job_ids"


async def test_a_batch_of_long_prompts_past_grpc_s_default_limit_is_read(
    served: tuple[Billing, BillingClient],
) -> None:
    billing, client = served
    billing.prompt = "\N{FRAME WITH PICTURE}" * 1024  # 4 bytes each in UTF-8
    found = await client.reservations([f"img_{i}" for i in range(1000)])
    assert len(found) == 1000 and found[-1].prompt == billing.prompt


async def test_a_reservation_may_wait_longer_than_a_read() -> None:
    billing = Billing(reserve_delay=0.5)  # type: ignore[abstract]
    server = grpc.aio.server()
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(billing, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    queued = BillingClient(f"127.0.0.1:{port}", timeout=0.2, reserve_timeout=5.0)
    impatient = BillingClient(f"127.0.0.1:{port}", timeout=0.2)
    expires = datetime.now(UTC)
    try:
        held = await queued.reserve("acc_1", [], expires)
        assert held.reservations == ()
        with pytest.raises(ServiceUnavailableError):
            await impatient.reserve("acc_1", [], expires)
    finally:
        await queued.close()
        await impatient.close()
        await server.stop(grace=None)


async def test_a_bad_page_token_names_the_cursor(served: tuple[Billing, BillingClient]) -> None:
    billing, client = served
    billing.refusals["ListReservations"] = _refusal(
        grpc.StatusCode.INVALID_ARGUMENT,
        ErrorReason.ERROR_REASON_INVALID_ARGUMENT,
        violations=(FieldViolation("page_token", "not a page token"),),
    )
    with pytest.raises(InvalidInputError) as raised:
        await client.list_reservations("acc_1", 10, "garbage")
    assert (raised.value.field, raised.value.message) == ("cursor", "not a page token")


async def test_settling_sends_the_error_code_enum(served: tuple[Billing, BillingClient]) -> None:
    billing, client = served
    failure = JobResult(error=ErrorCode.PROVIDER_ERROR, error_message="upstream 500")
    settled = await client.settle("img_a", failure)
    assert billing.requests[0].result.error == jobs_pb2.ERROR_CODE_PROVIDER_ERROR
    assert settled.outcome is SettleOutcome.RELEASED
    assert settled.reservation.result == JobResult(
        error=ErrorCode.PROVIDER_ERROR, error_message="upstream 500"
    )


async def test_a_call_billing_s_server_sheds_is_unavailable(served: tuple[Billing, BillingClient]) -> None:
    """CANCELLED with no reason is gRPC's own answer (a call shed, a connection gone), not a refusal:
    "try again", and the reservation goes the way of any unanswered one (released in the background)."""
    billing, client = served
    billing.refusals["ReserveBatch"] = _refusal(
        grpc.StatusCode.CANCELLED, ErrorReason.ERROR_REASON_UNSPECIFIED, "CANCELLED"
    )
    with pytest.raises(ServiceUnavailableError):
        await client.reserve("acc_1", [ReservationRequest("img_a", 4, "m", 1024, 1024)], datetime.now(UTC))


async def test_an_unreachable_billing_is_unavailable() -> None:
    client = BillingClient(f"127.0.0.1:{free_port()}", timeout=0.5)
    try:
        with pytest.raises(ServiceUnavailableError):
            await client.authenticate("igk_x")
    finally:
        await client.close()


async def test_every_call_carries_the_identity_and_its_secret() -> None:
    seen: list[dict[str, str]] = []

    class Recording(Billing):
        async def ListModels(self, request: Any, context: Any) -> pb.ListModelsResponse:  # noqa: N802
            seen.append(dict(context.invocation_metadata()))
            return pb.ListModelsResponse()

    server = grpc.aio.server()
    billing_service_pb2_grpc.add_BillingServiceServicer_to_server(Recording(), server)  # type: ignore[abstract]
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    client = BillingClient(f"127.0.0.1:{port}", 5.0, Caller.WEBHOOKS, SecretStr("s3cret-of-the-dispatcher"))
    try:
        await client.list_models()
    finally:
        await client.close()
        await server.stop(grace=None)
    assert seen[0]["imagegen-caller"] == "webhooks"
    assert seen[0]["imagegen-caller-secret"] == "s3cret-of-the-dispatcher"
