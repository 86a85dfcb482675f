"""The gateway's client of billing's gRPC API: typed calls, deadlines, retries, and billing's refusals
translated into the gateway's errors in one place (:func:`translate`, applied by :meth:`BillingClient._call`).

Billing sends Google's rich error model (``imagegen_common.rpc_errors``); the translation switches on
the ``ErrorReason`` of its ``ErrorInfo``, never on a status code's overloaded meaning or message text.
Only transport failures that carry no reason (UNAVAILABLE, DEADLINE_EXCEEDED) are read by status code.
Billing's messages are mapped to the gateway's domain types here (via ``wire``); no proto leaves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import SecretStr

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc, resources_pb2
from imagegen_common import rpc_errors, timestamps
from imagegen_common.rpc_errors import ErrorReason, RpcError
from imagegen_common.service_auth import Caller, CallerCredentials
from imagegen_gateway import wire
from imagegen_gateway.authentication import Principal
from imagegen_gateway.domain import (
    Account,
    HeldBatch,
    JobResult,
    ModelListing,
    ReleaseReason,
    Reservation,
    ReservationRequest,
    Settlement,
    WebhookAttempt,
    WebhookSettings,
)
from imagegen_gateway.errors import (
    AlreadySettledError,
    GatewayError,
    InsufficientCreditsError,
    InvalidInputError,
    InvalidTokenError,
    ReservationNotFoundError,
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
log = logging.getLogger(__name__)
UNAVAILABLE_MESSAGE = "billing is unavailable; please try again shortly"
#: First and longest pause between attempts to reach billing again, in milliseconds.
RECONNECT_BACKOFF_MS = (250, 2000)
#: Field names of billing's requests as the gateway's callers know them (a BadRequest's violations).
_FIELDS = {"page_token": "cursor"}

Request = TypeVar("Request")
Reply = TypeVar("Reply")


def _invalid(error: RpcError) -> GatewayError:
    if error.violations:
        first = error.violations[0]
        return InvalidInputError(first.description, field=_FIELDS.get(first.field, first.field))
    return InvalidInputError(error.message or "the request is invalid")


def _insufficient(error: RpcError) -> GatewayError:
    return InsufficientCreditsError(
        required=error.number(rpc_errors.REQUIRED_CREDITS),
        available=error.number(rpc_errors.AVAILABLE_CREDITS),
    )


_BY_REASON: dict[ErrorReason.ValueType, Callable[[RpcError], GatewayError]] = {
    ErrorReason.ERROR_REASON_INVALID_TOKEN: lambda _: InvalidTokenError("invalid or revoked API token"),
    ErrorReason.ERROR_REASON_INSUFFICIENT_CREDITS: _insufficient,
    ErrorReason.ERROR_REASON_ALREADY_SETTLED: lambda _: AlreadySettledError(
        "the reservation was already settled"
    ),
    ErrorReason.ERROR_REASON_RESERVATION_NOT_FOUND: lambda _: ReservationNotFoundError("no such image"),
    ErrorReason.ERROR_REASON_JOB_ID_REUSED: lambda _: InvalidInputError(
        "this idempotency key was already used for a different request; use a new key",
        field="idempotency_key",
    ),
    ErrorReason.ERROR_REASON_MODEL_NOT_FOUND: lambda _: InvalidInputError("unknown model", field="model"),
    ErrorReason.ERROR_REASON_ACCOUNT_NOT_FOUND: _invalid,
    ErrorReason.ERROR_REASON_INVALID_ARGUMENT: _invalid,
}
#: Failures of the transport itself, which carry no reason: the only ones read by status code.
#: CANCELLED is one of them: a call this side cancels raises CancelledError, not an RpcError, so a
#: CANCELLED answer means billing's gRPC server shed the call (more calls waiting to be taken than
#: IMAGEGEN_BILLING_MAX_PENDING_RPCS) or the connection broke under it.
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


def translate(error: RpcError) -> GatewayError:
    """A refusal of billing (rich error) as the gateway's error."""
    by_reason = _BY_REASON.get(error.reason)
    if by_reason is not None:
        return by_reason(error)
    if error.reason == ErrorReason.ERROR_REASON_UNSPECIFIED and error.code in _UNREACHABLE:
        return ServiceUnavailableError(UNAVAILABLE_MESSAGE)
    return GatewayError("billing failed to answer")


#: The largest answer the gateway takes from billing.
MAX_REPLY_BYTES = 16 * 1024 * 1024


class BillingClient:
    """Billing's API as one service identity: ``caller`` and its ``secret`` go with every call (one
    client interceptor, ``service_auth.CallerCredentials``); billing refuses a call without them."""

    def __init__(
        self,
        address: str,
        timeout: float,
        caller: Caller | None = None,
        secret: SecretStr | str = "",
        reserve_timeout: float | None = None,
    ) -> None:
        self.timeout = timeout
        #: A reservation's deadline: billing queues a burst's writes, so it may take longer than a read.
        self.reserve_timeout = reserve_timeout or timeout
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        self.channel = grpc.aio.insecure_channel(
            address,
            options=[
                ("grpc.service_config", _SERVICE_CONFIG),
                ("grpc.enable_retries", 1),
                # gRPC's reconnect backoff grows to 120 s by default: after a billing outage of half
                # a minute the gateway would refuse calls for another half minute with billing back.
                ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
                ("grpc.min_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
                ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
                # A page of 1000 reservations (ListReservations, BatchGetReservations) carries up to
                # 1000 prompts of 1024 characters, up to 4 UTF-8 bytes each: past gRPC's 4 MiB default.
                ("grpc.max_receive_message_length", MAX_REPLY_BYTES),
            ],
            # grpc-stubs want a cast: their interceptor type is a placeholder
            interceptors=cast("Any", [CallerCredentials(caller, value)]) if caller is not None else None,
        )
        self.stub = billing_service_pb2_grpc.BillingServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(grace=None)

    async def _call(
        self, rpc: Callable[..., Awaitable[Reply]], request: Any, timeout: float | None = None
    ) -> Reply:
        """Every call of billing goes through here: its deadline and the one error translation."""
        try:
            return await rpc(request, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as exc:
            error = translate(rpc_errors.from_error(exc))
            if type(error) is GatewayError:  # neither a refusal nor billing away: say what it was
                log.warning(
                    "billing failed to answer",
                    extra={
                        "request": type(request).__name__,
                        "code": exc.code().name,
                        "detail": exc.details(),
                    },
                )
            raise error from exc

    async def serving(self) -> bool:
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=self.timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def authenticate(self, token: str) -> Principal:
        reply = await self._call(self.stub.Authenticate, pb.AuthenticateRequest(token=token))
        return Principal(account_id=reply.account.id, email=reply.account.email, token_id=reply.token_id)

    async def list_models(self) -> ModelListing:
        return wire.model_listing(await self._call(self.stub.ListModels, pb.ListModelsRequest()))

    async def reserve(
        self, account_id: str, requests: Sequence[ReservationRequest], expire_time: datetime
    ) -> HeldBatch:
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
                        prompt=r.prompt,
                    ),
                )
                for r in requests
            ]
        )
        try:
            reply = await self._call(self.stub.ReserveBatch, batch, self.reserve_timeout)
        except InsufficientCreditsError as exc:  # the same error, worded for the number of images
            raise InsufficientCreditsError(exc.required, exc.available, images=len(requests)) from exc
        return HeldBatch(
            reservations=tuple(wire.reservation(r) for r in reply.reservations),
            credits=reply.credits,
            created_job_ids=frozenset(reply.created_job_ids),
        )

    async def release(self, job_id: str, reason: ReleaseReason, detail: str = "") -> Reservation | None:
        """Frees a held reservation; returns its state (CAPTURED if the image was already made), or
        None when the job has no reservation."""
        request = pb.ReleaseRequest(job_id=job_id, reason=wire.release_reason_number(reason), detail=detail)
        try:
            reply = await self._call(self.stub.Release, request)
        except AlreadySettledError:
            return await self.reservation(job_id)
        except ReservationNotFoundError:
            return None
        return wire.reservation(reply.reservation)

    async def settle(self, job_id: str, result: JobResult) -> Settlement:
        """Tells billing what a job produced; billing captures or releases its credits (idempotent)."""
        request = pb.SettleJobRequest(job_id=job_id, result=wire.job_result_message(result))
        reply = await self._call(self.stub.SettleJob, request)
        return Settlement(wire.reservation(reply.reservation), wire.settle_outcome(reply.outcome))

    async def reservation(self, job_id: str) -> Reservation:
        reply = await self._call(self.stub.GetReservation, pb.GetReservationRequest(job_id=job_id))
        return wire.reservation(reply.reservation)

    async def reservations(self, job_ids: Sequence[str]) -> list[Reservation]:
        """The reservations of those jobs that have one, in the order asked; unknown ids are left
        out. At most 1000 ids a call (``status_watch.MAX_BATCH``; billing refuses more)."""
        request = pb.BatchGetReservationsRequest(job_ids=job_ids)
        reply = await self._call(self.stub.BatchGetReservations, request)
        return [wire.reservation(r) for r in reply.reservations]

    async def find_reservation(self, job_id: str) -> Reservation | None:
        """The reservation of a job, or None when there is none."""
        try:
            return await self.reservation(job_id)
        except ReservationNotFoundError:
            return None

    async def list_reservations(
        self, account_id: str, page_size: int, page_token: str
    ) -> tuple[list[Reservation], str]:
        """A page of the account's reservations, newest first, and the next page's token ("" at the
        end); a bad page token is InvalidInputError."""
        request = pb.ListReservationsRequest(
            account_id=account_id, page_size=page_size, page_token=page_token
        )
        reply = await self._call(self.stub.ListReservations, request)
        return [wire.reservation(r) for r in reply.reservations], reply.next_page_token

    async def account(self, account_id: str) -> Account:
        """The account with its tokens (prefixes only)."""
        reply = await self._call(self.stub.GetAccount, pb.GetAccountRequest(account_id=account_id))
        return wire.account(reply)

    async def webhook_settings(self, account_id: str) -> WebhookSettings:
        """The account's default webhook URL and signing secret."""
        reply = await self._call(
            self.stub.GetWebhookSettings, pb.GetWebhookSettingsRequest(account_id=account_id)
        )
        return wire.webhook_settings(reply)

    async def record_webhook_attempt(self, attempt: WebhookAttempt, final: bool) -> None:
        message = resources_pb2.WebhookAttempt(
            job_id=attempt.job_id,
            attempt=attempt.attempt,
            status_code=attempt.status_code,
            error=attempt.error,
            attempt_time=timestamps.from_datetime(attempt.attempt_time),
        )
        await self._call(
            self.stub.RecordWebhookAttempt, pb.RecordWebhookAttemptRequest(attempt=message, final=final)
        )
