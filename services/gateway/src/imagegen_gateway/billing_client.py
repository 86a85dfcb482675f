"""The gateway's client of billing's gRPC API: typed calls, deadlines, retries and error mapping."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc, resources_pb2
from imagegen_common import timestamps
from imagegen_common.billing_errors import AVAILABLE_CREDITS, REQUIRED_CREDITS
from imagegen_gateway.errors import (
    GatewayError,
    InsufficientCreditsError,
    InvalidInputError,
    InvalidTokenError,
    ServiceUnavailableError,
)

# gRPC retries UNAVAILABLE itself (every BillingService call is idempotent: reservations are keyed
# by job id), with exponential backoff; we never loop by hand.
_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "imagegen.billing.v1.BillingService"}],
                "retryPolicy": {
                    "maxAttempts": 4,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 3,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account behind a valid API token."""

    account_id: str
    email: str
    token_id: str


@dataclass(frozen=True, slots=True)
class ReservationRequest:
    job_id: str
    amount: int
    model: str
    width: int
    height: int
    fingerprint: str = ""
    webhook_url: str = ""


def translate(error: grpc.aio.AioRpcError) -> GatewayError:
    """Billing's status codes as the gateway's errors."""
    code, details = error.code(), error.details() or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return InvalidTokenError("invalid or revoked API token")
    trailing = cast("Sequence[tuple[str, str | bytes]]", error.trailing_metadata() or ())
    numbers = {key: str(value) for key, value in trailing}
    if code == grpc.StatusCode.FAILED_PRECONDITION and REQUIRED_CREDITS in numbers:
        return InsufficientCreditsError(
            required=int(numbers[REQUIRED_CREDITS]), available=int(numbers[AVAILABLE_CREDITS])
        )
    if code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
    ):
        return InvalidInputError(details)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return ServiceUnavailableError("billing is unavailable; please try again shortly")
    return GatewayError("billing failed to answer")


class BillingClient:
    def __init__(self, address: str, timeout: float) -> None:
        self.timeout = timeout
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1)],
        )
        self.stub = billing_service_pb2_grpc.BillingServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def serving(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def authenticate(self, token: str) -> Principal:
        try:
            reply = await self.stub.Authenticate(pb.AuthenticateRequest(token=token), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc
        return Principal(account_id=reply.account.id, email=reply.account.email, token_id=reply.token_id)

    async def list_models(self) -> pb.ListModelsResponse:
        try:
            return await self.stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    async def reserve(
        self, account_id: str, requests: Sequence[ReservationRequest], expire_time: datetime
    ) -> pb.ReserveBatchResponse:
        """Holds credits for every request, or for none (InsufficientCreditsError names the total)."""
        batch = pb.ReserveBatchRequest(
            requests=[
                pb.ReserveRequest(
                    account_id=account_id,
                    job_id=r.job_id,
                    amount=r.amount,
                    expire_time=timestamps.from_datetime(expire_time),
                    details=resources_pb2.JobDetails(
                        model=r.model,
                        width=r.width,
                        height=r.height,
                        request_fingerprint=r.fingerprint,
                        webhook_url=r.webhook_url,
                    ),
                )
                for r in requests
            ]
        )
        try:
            return await self.stub.ReserveBatch(batch, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            error = translate(exc)
            if isinstance(error, InsufficientCreditsError):
                raise InsufficientCreditsError(error.required, error.available, images=len(requests)) from exc
            raise error from exc

    async def release(
        self, job_id: str, reason: str, result: resources_pb2.JobResult | None = None
    ) -> resources_pb2.Reservation | None:
        """Frees a held reservation; returns its state (CAPTURED if the image was already made), or
        None when the job has no reservation."""
        request = pb.ReleaseRequest(job_id=job_id, reason=reason, result=result)
        try:
            reply = await self.stub.Release(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return await self.reservation(job_id)
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise translate(exc) from exc
        return reply.reservation

    async def reservation(self, job_id: str) -> resources_pb2.Reservation:
        try:
            reply = await self.stub.GetReservation(
                pb.GetReservationRequest(job_id=job_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc
        return reply.reservation

    async def find_reservation(self, job_id: str) -> resources_pb2.Reservation | None:
        """The reservation of a job, or None when there is none."""
        try:
            reply = await self.stub.GetReservation(
                pb.GetReservationRequest(job_id=job_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise translate(exc) from exc
        return reply.reservation

    async def capture(self, job_id: str, result: resources_pb2.JobResult) -> resources_pb2.Reservation:
        """Settles a held reservation as spent; returns its state (RELEASED if it was released first)."""
        try:
            reply = await self.stub.Capture(
                pb.CaptureRequest(job_id=job_id, result=result), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                return await self.reservation(job_id)
            raise translate(exc) from exc
        return reply.reservation

    async def list_reservations(
        self, account_id: str, page_size: int, page_token: str
    ) -> pb.ListReservationsResponse:
        """A page of the account's reservations, newest first; a bad page token is InvalidInputError."""
        request = pb.ListReservationsRequest(
            account_id=account_id, page_size=page_size, page_token=page_token
        )
        try:
            return await self.stub.ListReservations(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    async def account(self, account_id: str) -> pb.GetAccountResponse:
        """The account with its tokens (prefixes only)."""
        try:
            return await self.stub.GetAccount(
                pb.GetAccountRequest(account_id=account_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    async def webhook_settings(self, account_id: str) -> pb.GetWebhookSettingsResponse:
        """The account's default webhook URL and signing secret."""
        try:
            return await self.stub.GetWebhookSettings(
                pb.GetWebhookSettingsRequest(account_id=account_id), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc

    async def record_webhook_attempt(
        self, attempt: resources_pb2.WebhookAttempt, final: bool
    ) -> resources_pb2.WebhookDelivery:
        try:
            reply = await self.stub.RecordWebhookAttempt(
                pb.RecordWebhookAttemptRequest(attempt=attempt, final=final), timeout=self.timeout
            )
        except grpc.aio.AioRpcError as exc:
            raise translate(exc) from exc
        return reply.delivery
