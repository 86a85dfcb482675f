"""``imagegen.billing.v1.BillingService``: a thin adapter from gRPC to accounts, catalog and ledger.

Domain errors (``BillingError``, ``CatalogError``) are turned into rich gRPC errors by the interceptor.
Ids from the request are checked here, at the edge, before anything quotes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc
from imagegen_billing import convert
from imagegen_billing.accounts import Accounts
from imagegen_billing.domain import (
    InvalidArgumentError,
    ReservationNotFoundError,
    SettleOutcome,
    check_account_id,
    check_job_id,
)
from imagegen_billing.ledger import Ledger
from imagegen_billing.webhooks import Webhooks
from imagegen_common.catalog import Catalog

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    Context = grpc.aio.ServicerContext[object, object]


class BillingServicer(billing_service_pb2_grpc.BillingServiceServicer):
    def __init__(self, accounts: Accounts, ledger: Ledger, catalog: Catalog, webhooks: Webhooks) -> None:
        self.accounts = accounts
        self.ledger = ledger
        self.catalog = catalog
        self.webhooks = webhooks

    async def Authenticate(
        self, request: pb.AuthenticateRequest, context: Context
    ) -> pb.AuthenticateResponse:
        account, token_id = await self.accounts.authenticate(request.token)
        return pb.AuthenticateResponse(account=convert.account(account), token_id=token_id)

    async def ListModels(self, request: pb.ListModelsRequest, context: Context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[convert.model(model, self.catalog) for model in self.catalog],
            default_model=self.catalog.default_model,
        )

    async def Quote(self, request: pb.QuoteRequest, context: Context) -> pb.QuoteResponse:
        _check_model(request.model)
        model, credits = self.catalog.quote(request.model or None, request.width, request.height)
        if request.input_image_count < 0:
            raise InvalidArgumentError("input_image_count must not be negative", field="input_image_count")
        model.check_inputs(request.input_image_count)
        return pb.QuoteResponse(model=model.key, width=request.width, height=request.height, credits=credits)

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.ReserveResponse:
        _check_model(request.details.model, field="details.model")
        result = await self.ledger.reserve(convert.reserve_request(request))
        return pb.ReserveResponse(reservation=convert.reservation(result.reservation), credits=result.credits)

    async def ReserveBatch(
        self, request: pb.ReserveBatchRequest, context: Context
    ) -> pb.ReserveBatchResponse:
        for r in request.requests:
            _check_model(r.details.model, field="requests.details.model")
        result = await self.ledger.reserve_batch([convert.reserve_request(r) for r in request.requests])
        return pb.ReserveBatchResponse(
            reservations=[convert.reservation(r) for r in result.reservations],
            credits=result.credits,
            created_job_ids=[r.job_id for r in result.created],
        )

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        check_job_id(request.job_id)
        result = await self.ledger.release(
            request.job_id,
            convert.release_reason(request.reason),
            request.detail,
            convert.job_result(request.result) if request.HasField("result") else None,
        )
        return pb.ReleaseResponse(reservation=convert.reservation(result.reservation), credits=result.credits)

    async def SettleJob(self, request: pb.SettleJobRequest, context: Context) -> pb.SettleJobResponse:
        check_job_id(request.job_id)
        if not request.HasField("result"):
            raise InvalidArgumentError("result is required", field="result")
        settled = await self.ledger.settle(request.job_id, convert.job_result(request.result))
        if settled.outcome is SettleOutcome.UNKNOWN_JOB:
            raise ReservationNotFoundError(request.job_id)
        return convert.job_settlement(settled)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.GetAccountResponse:
        check_account_id(request.account_id)
        account = await self.accounts.get(request.account_id)
        tokens = await self.accounts.tokens_of(account.id)
        return pb.GetAccountResponse(
            account=convert.account(account), tokens=[convert.api_token(t) for t in tokens]
        )

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.GetReservationResponse:
        check_job_id(request.job_id)
        return pb.GetReservationResponse(
            reservation=convert.reservation(await self.ledger.reservation(request.job_id))
        )

    async def BatchGetReservations(
        self, request: pb.BatchGetReservationsRequest, context: Context
    ) -> pb.BatchGetReservationsResponse:
        found = await self.ledger.reservations(list(request.job_ids))
        return pb.BatchGetReservationsResponse(reservations=[convert.reservation(r) for r in found])

    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: Context
    ) -> pb.ListReservationsResponse:
        page, next_token = await self.ledger.reservations_page(
            request.account_id, request.page_size, request.page_token
        )
        return pb.ListReservationsResponse(
            reservations=[convert.reservation(r) for r in page], next_page_token=next_token
        )

    async def GetWebhookSettings(
        self, request: pb.GetWebhookSettingsRequest, context: Context
    ) -> pb.GetWebhookSettingsResponse:
        check_account_id(request.account_id)
        settings, secret = await self.webhooks.signing(request.account_id)
        return pb.GetWebhookSettingsResponse(
            settings=convert.webhook_settings(settings), signing_secret=secret
        )

    async def RecordWebhookAttempt(
        self, request: pb.RecordWebhookAttemptRequest, context: Context
    ) -> pb.RecordWebhookAttemptResponse:
        delivery = await self.webhooks.record_attempt(
            convert.webhook_attempt_request(request.attempt), request.final
        )
        return pb.RecordWebhookAttemptResponse(delivery=convert.webhook_delivery(delivery))

    async def ListWebhookAttempts(
        self, request: pb.ListWebhookAttemptsRequest, context: Context
    ) -> pb.ListWebhookAttemptsResponse:
        check_job_id(request.job_id)
        attempts = await self.webhooks.attempts(request.job_id)
        return pb.ListWebhookAttemptsResponse(attempts=[convert.webhook_attempt(a) for a in attempts])


#: Longest model key (the reservations.model column).
MAX_MODEL_CHARS = 128


def _check_model(key: str, field: str = "model") -> None:
    # The catalog quotes an unknown key in its message; a key longer than any model's is refused first.
    if len(key) > MAX_MODEL_CHARS:
        raise InvalidArgumentError(f"{field} is longer than {MAX_MODEL_CHARS} characters", field=field)
