"""``imagegen.billing.v1.BillingService``: a thin adapter from gRPC to accounts, catalog and ledger.

Domain errors (``BillingError``, ``CatalogError``) are turned into status codes by the interceptor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc
from imagegen_billing import convert
from imagegen_billing.accounts import Accounts
from imagegen_billing.domain import InvalidArgumentError
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
        model, credits = self.catalog.quote(request.model or None, request.width, request.height)
        if request.input_image_count < 0:
            raise InvalidArgumentError("input_image_count must not be negative")
        model.check_inputs(request.input_image_count)
        return pb.QuoteResponse(model=model.key, width=request.width, height=request.height, credits=credits)

    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.ReserveResponse:
        result = await self.ledger.reserve(convert.reserve_request(request))
        return pb.ReserveResponse(reservation=convert.reservation(result.reservation), credits=result.credits)

    async def ReserveBatch(
        self, request: pb.ReserveBatchRequest, context: Context
    ) -> pb.ReserveBatchResponse:
        result = await self.ledger.reserve_batch([convert.reserve_request(r) for r in request.requests])
        return pb.ReserveBatchResponse(
            reservations=[convert.reservation(r) for r in result.reservations],
            credits=result.credits,
            created_job_ids=[r.job_id for r in result.created],
        )

    async def Capture(self, request: pb.CaptureRequest, context: Context) -> pb.CaptureResponse:
        result = await self.ledger.capture(
            request.job_id, convert.job_result(request.result) if request.HasField("result") else None
        )
        return pb.CaptureResponse(reservation=convert.reservation(result.reservation), credits=result.credits)

    async def Release(self, request: pb.ReleaseRequest, context: Context) -> pb.ReleaseResponse:
        result = await self.ledger.release(
            request.job_id,
            request.reason,
            convert.job_result(request.result) if request.HasField("result") else None,
        )
        return pb.ReleaseResponse(reservation=convert.reservation(result.reservation), credits=result.credits)

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.GetAccountResponse:
        account = await self.accounts.get(request.account_id)
        tokens = await self.accounts.tokens_of(account.id)
        return pb.GetAccountResponse(
            account=convert.account(account), tokens=[convert.api_token(t) for t in tokens]
        )

    async def GetReservation(
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.GetReservationResponse:
        return pb.GetReservationResponse(
            reservation=convert.reservation(await self.ledger.reservation(request.job_id))
        )

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
        if not request.account_id:
            raise InvalidArgumentError("account_id is required")
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
        attempts = await self.webhooks.attempts(request.job_id)
        return pb.ListWebhookAttemptsResponse(attempts=[convert.webhook_attempt(a) for a in attempts])
