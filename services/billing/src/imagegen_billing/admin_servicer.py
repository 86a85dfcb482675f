"""``imagegen.admin.v1.AdminService``: accounts, tokens and credits. The admin token is checked by
``AdminAuthInterceptor`` before any of these runs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import grpc

from imagegen.admin.v1 import admin_service_pb2 as pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen_billing import convert
from imagegen_billing.accounts import Accounts
from imagegen_billing.ledger import Ledger
from imagegen_billing.revocations import RevocationPublisher
from imagegen_billing.webhooks import Webhooks
from imagegen_common.revocations import Revocation

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    Context = grpc.aio.ServicerContext[object, object]

log = logging.getLogger(__name__)


class AdminServicer(admin_service_pb2_grpc.AdminServiceServicer):
    def __init__(
        self,
        accounts: Accounts,
        ledger: Ledger,
        webhooks: Webhooks,
        revocations: RevocationPublisher | None = None,
    ) -> None:
        self.accounts = accounts
        self.ledger = ledger
        self.webhooks = webhooks
        self.revocations = revocations

    async def CreateAccount(
        self, request: pb.CreateAccountRequest, context: Context
    ) -> pb.CreateAccountResponse:
        account, token, secret = await self.accounts.create(
            request.email, request.credits, request.token_label
        )
        log.info("account created", extra={"account_id": account.id, "credits": account.credits})
        return pb.CreateAccountResponse(
            account=convert.account(account), token=convert.api_token(token), token_secret=secret
        )

    async def GetAccount(self, request: pb.GetAccountRequest, context: Context) -> pb.GetAccountResponse:
        account, tokens = await self.accounts.find_with_tokens(request.account)
        return pb.GetAccountResponse(
            account=convert.account(account), tokens=[convert.api_token(t) for t in tokens]
        )

    async def ListAccounts(
        self, request: pb.ListAccountsRequest, context: Context
    ) -> pb.ListAccountsResponse:
        accounts, next_token = await self.accounts.list_page(request.page_size, request.page_token)
        return pb.ListAccountsResponse(
            accounts=[convert.account(a) for a in accounts], next_page_token=next_token
        )

    async def IssueToken(self, request: pb.IssueTokenRequest, context: Context) -> pb.IssueTokenResponse:
        token, secret = await self.accounts.issue_token(request.account, request.label)
        log.info("token issued", extra={"account_id": token.account_id, "token_id": token.id})
        return pb.IssueTokenResponse(token=convert.api_token(token), token_secret=secret)

    async def ListTokens(self, request: pb.ListTokensRequest, context: Context) -> pb.ListTokensResponse:
        _, tokens = await self.accounts.find_with_tokens(request.account)
        return pb.ListTokensResponse(tokens=[convert.api_token(t) for t in tokens])

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.RevokeTokenResponse:
        token = await self.accounts.revoke_token(request.token_id)
        log.info("token revoked", extra={"account_id": token.account_id, "token_id": token.id})
        if self.revocations is not None:  # every gateway drops it now, not when its cache expires
            await self.revocations.publish(Revocation(account_id=token.account_id, token_id=token.id))
        return pb.RevokeTokenResponse(token=convert.api_token(token))

    async def GrantCredits(
        self, request: pb.GrantCreditsRequest, context: Context
    ) -> pb.GrantCreditsResponse:
        account, entry = await self.ledger.grant(request.account, request.amount, request.note)
        log.info(
            "credits granted",
            extra={"account_id": account.id, "amount": entry.amount, "credits": account.credits},
        )
        return pb.GrantCreditsResponse(account=convert.account(account), entry=convert.ledger_entry(entry))

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        entries, next_token = await self.ledger.entries(
            request.account, request.page_size, request.page_token
        )
        return pb.ListLedgerEntriesResponse(
            entries=[convert.ledger_entry(e) for e in entries], next_page_token=next_token
        )

    async def SetWebhook(self, request: pb.SetWebhookRequest, context: Context) -> pb.SetWebhookResponse:
        settings, secret = await self.webhooks.set_url(request.account, request.url)
        log.info("webhook set", extra={"account_id": settings.account_id, "secret_created": bool(secret)})
        return pb.SetWebhookResponse(settings=convert.webhook_settings(settings), signing_secret=secret)

    async def GetWebhook(self, request: pb.GetWebhookRequest, context: Context) -> pb.GetWebhookResponse:
        settings = await self.webhooks.settings(request.account)
        return pb.GetWebhookResponse(settings=convert.webhook_settings(settings))

    async def ClearWebhook(
        self, request: pb.ClearWebhookRequest, context: Context
    ) -> pb.ClearWebhookResponse:
        settings = await self.webhooks.clear_url(request.account)
        log.info("webhook cleared", extra={"account_id": settings.account_id})
        return pb.ClearWebhookResponse(settings=convert.webhook_settings(settings))

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Context
    ) -> pb.RotateWebhookSecretResponse:
        settings, secret = await self.webhooks.rotate_secret(request.account)
        log.info("webhook secret rotated", extra={"account_id": settings.account_id})
        return pb.RotateWebhookSecretResponse(
            settings=convert.webhook_settings(settings), signing_secret=secret
        )
