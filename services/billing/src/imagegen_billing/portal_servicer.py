"""``imagegen.portal.v1.PortalService``: the account portal's sign-in, sessions and self-service.

Calls for a person carry the session's secret and act on that session's account only; ``Admin…`` calls
need the admin role; ``CreateLoginLink`` and ``SetAccountRole`` need the operators' admin token.
"""

from __future__ import annotations

import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_billing import convert
from imagegen_billing.accounts import Accounts
from imagegen_billing.config import BillingSettings
from imagegen_billing.db import Database
from imagegen_billing.domain import NotFoundError
from imagegen_billing.ledger import Ledger
from imagegen_billing.people import PermissionDeniedError, PortalAccount, RateLimitedError, Role, Session
from imagegen_billing.portal import Portal
from imagegen_billing.revocations import RevocationPublisher
from imagegen_common.revocations import Revocation

if TYPE_CHECKING:  # grpc's classes are not generic at run time
    Context = grpc.aio.ServicerContext[object, object]

log = logging.getLogger(__name__)

PORTAL_SERVICE = "imagegen.portal.v1.PortalService"
ADMIN_LEDGER_ENTRIES = 20
_ROLES = {Role.USER: pb.ROLE_USER, Role.ADMIN: pb.ROLE_ADMIN}
_ROLES_BACK = {pb.ROLE_USER: Role.USER, pb.ROLE_ADMIN: Role.ADMIN}

Reply = TypeVar("Reply")


def portal_account(value: PortalAccount) -> pb.PortalAccount:
    return pb.PortalAccount(
        account=convert.account(value.account), role=_ROLES[value.role], disabled=value.disabled
    )


def session_message(value: Session) -> pb.Session:
    return pb.Session(
        id=value.id,
        account=portal_account(value.account),
        create_time=convert.timestamp(value.create_time),
        expire_time=convert.timestamp(value.expire_time),
        idle_expire_time=convert.timestamp(value.idle_expire_time),
    )


def _portal_errors(
    method: Callable[[Any, Any, Context], Awaitable[Reply]],
) -> Callable[[Any, Any, Context], Awaitable[Reply]]:
    """The portal's own errors as their status codes (the interceptor maps the shared ones)."""

    @functools.wraps(method)
    async def wrapped(self: Any, request: Any, context: Context) -> Reply:
        try:
            return await method(self, request, context)
        except RateLimitedError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except PermissionDeniedError as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        raise AssertionError("abort raises")  # pragma: no cover

    return wrapped


class PortalServicer(portal_service_pb2_grpc.PortalServiceServicer):
    def __init__(
        self,
        portal: Portal,
        accounts: Accounts,
        ledger: Ledger,
        admin_token: str,
        revocations: RevocationPublisher | None = None,
    ) -> None:
        self.portal = portal
        self.accounts = accounts
        self.ledger = ledger
        self._operator = f"Bearer {admin_token}".encode()
        self.revocations = revocations

    async def _revoked(self, revocation: Revocation) -> None:
        """Every gateway drops the credential now, not when its auth cache expires."""
        if self.revocations is not None:
            await self.revocations.publish(revocation)

    async def _require_operator(self, context: Context) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                presented = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(presented, self._operator):
                    return
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid admin token")

    @_portal_errors
    async def StartEmailSignIn(
        self, request: pb.StartEmailSignInRequest, context: Context
    ) -> pb.StartEmailSignInResponse:
        link = await self.portal.start_email_sign_in(request.email, request.client_address, request.next_path)
        if link is None:
            return pb.StartEmailSignInResponse()
        return pb.StartEmailSignInResponse(
            link_token=link.secret, expire_time=convert.timestamp(link.expire_time), email=link.email
        )

    async def CompleteEmailSignIn(
        self, request: pb.CompleteEmailSignInRequest, context: Context
    ) -> pb.CompleteEmailSignInResponse:
        secret, session, next_path = await self.portal.complete_email_sign_in(request.link_token)
        log.info("signed in", extra={"account_id": session.account.account.id, "method": "email"})
        return pb.CompleteEmailSignInResponse(
            session_token=secret, session=session_message(session), next_path=next_path
        )

    async def CompleteOidcSignIn(
        self, request: pb.CompleteOidcSignInRequest, context: Context
    ) -> pb.CompleteOidcSignInResponse:
        secret, session = await self.portal.complete_oidc_sign_in(
            request.issuer, request.subject, request.email, request.email_verified
        )
        log.info("signed in", extra={"account_id": session.account.account.id, "method": "oidc"})
        return pb.CompleteOidcSignInResponse(session_token=secret, session=session_message(session))

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> pb.GetSessionResponse:
        return pb.GetSessionResponse(
            session=session_message(await self.portal.session(request.session_token))
        )

    async def EndSession(self, request: pb.EndSessionRequest, context: Context) -> pb.EndSessionResponse:
        await self.portal.end_session(request.session_token)
        return pb.EndSessionResponse()

    async def ListTokens(self, request: pb.ListTokensRequest, context: Context) -> pb.ListTokensResponse:
        session = await self.portal.session(request.session_token)
        tokens = await self.accounts.tokens_of(session.account.account.id)
        return pb.ListTokensResponse(tokens=[convert.api_token(t) for t in tokens])

    async def CreateToken(self, request: pb.CreateTokenRequest, context: Context) -> pb.CreateTokenResponse:
        session = await self.portal.session(request.session_token)
        token, secret = await self.accounts.issue_token(session.account.account.id, request.label)
        log.info("token issued", extra={"account_id": token.account_id, "token_id": token.id, "by": "portal"})
        return pb.CreateTokenResponse(token=convert.api_token(token), token_secret=secret)

    async def RevokeToken(self, request: pb.RevokeTokenRequest, context: Context) -> pb.RevokeTokenResponse:
        session = await self.portal.session(request.session_token)
        token = await self.portal.revoke_own_token(session.account.account.id, request.token_id)
        await self._revoked(Revocation(account_id=token.account_id, token_id=token.id))
        log.info(
            "token revoked", extra={"account_id": token.account_id, "token_id": token.id, "by": "portal"}
        )
        return pb.RevokeTokenResponse(token=convert.api_token(token))

    async def ListLedgerEntries(
        self, request: pb.ListLedgerEntriesRequest, context: Context
    ) -> pb.ListLedgerEntriesResponse:
        session = await self.portal.session(request.session_token)
        entries, next_token = await self.ledger.entries(
            session.account.account.id, request.page_size, request.page_token
        )
        return pb.ListLedgerEntriesResponse(
            entries=[convert.ledger_entry(e) for e in entries], next_page_token=next_token
        )

    async def ListImages(self, request: pb.ListImagesRequest, context: Context) -> pb.ListImagesResponse:
        session = await self.portal.session(request.session_token)
        page, next_token = await self.ledger.reservations_page(
            session.account.account.id, request.page_size, request.page_token
        )
        return pb.ListImagesResponse(
            images=[convert.reservation(r) for r in page], next_page_token=next_token
        )

    async def GetImage(self, request: pb.GetImageRequest, context: Context) -> pb.GetImageResponse:
        session = await self.portal.session(request.session_token)
        account_id = session.account.account.id
        try:
            image = await self.ledger.reservation(request.image_id)
        except NotFoundError:
            image = None
        if image is None or image.account_id != account_id:
            raise NotFoundError("no such image")  # another account's image is no image at all
        account = await self.accounts.get(account_id)
        return pb.GetImageResponse(image=convert.reservation(image), account=convert.account(account))

    @_portal_errors
    async def AdminSearchAccounts(
        self, request: pb.AdminSearchAccountsRequest, context: Context
    ) -> pb.AdminSearchAccountsResponse:
        await self.portal.admin_session(request.session_token)
        found = await self.portal.search(request.query, request.page_size)
        return pb.AdminSearchAccountsResponse(accounts=[portal_account(a) for a in found])

    @_portal_errors
    async def AdminGetAccount(
        self, request: pb.AdminGetAccountRequest, context: Context
    ) -> pb.AdminGetAccountResponse:
        await self.portal.admin_session(request.session_token)
        account = await self.portal.account(request.account)
        tokens = await self.accounts.tokens_of(account.account.id)
        entries, _ = await self.ledger.entries(account.account.id, ADMIN_LEDGER_ENTRIES)
        return pb.AdminGetAccountResponse(
            account=portal_account(account),
            tokens=[convert.api_token(t) for t in tokens],
            entries=[convert.ledger_entry(e) for e in entries],
        )

    @_portal_errors
    async def AdminGrantCredits(
        self, request: pb.AdminGrantCreditsRequest, context: Context
    ) -> pb.AdminGrantCreditsResponse:
        session = await self.portal.admin_session(request.session_token)
        account, entry = await self.ledger.grant(request.account, request.amount, request.note)
        log.info(
            "credits granted",
            extra={"account_id": account.id, "amount": entry.amount, "by": session.account.account.id},
        )
        return pb.AdminGrantCreditsResponse(
            account=convert.account(account), entry=convert.ledger_entry(entry)
        )

    @_portal_errors
    async def AdminRevokeToken(
        self, request: pb.AdminRevokeTokenRequest, context: Context
    ) -> pb.AdminRevokeTokenResponse:
        session = await self.portal.admin_session(request.session_token)
        token = await self.accounts.revoke_token(request.token_id)
        await self._revoked(Revocation(account_id=token.account_id, token_id=token.id))
        log.info(
            "token revoked",
            extra={"account_id": token.account_id, "token_id": token.id, "by": session.account.account.id},
        )
        return pb.AdminRevokeTokenResponse(token=convert.api_token(token))

    @_portal_errors
    async def AdminSetAccountDisabled(
        self, request: pb.AdminSetAccountDisabledRequest, context: Context
    ) -> pb.AdminSetAccountDisabledResponse:
        session = await self.portal.admin_session(request.session_token)
        account = await self.portal.set_disabled(request.account, request.disabled)
        if request.disabled:  # all of the account's tokens, on every gateway
            await self._revoked(Revocation(account_id=account.account.id))
        log.info(
            "account disabled" if request.disabled else "account enabled",
            extra={"account_id": account.account.id, "by": session.account.account.id},
        )
        return pb.AdminSetAccountDisabledResponse(account=portal_account(account))

    async def CreateLoginLink(
        self, request: pb.CreateLoginLinkRequest, context: Context
    ) -> pb.CreateLoginLinkResponse:
        await self._require_operator(context)
        link, account = await self.portal.create_login_link(request.account, request.next_path)
        log.info("login link created", extra={"account_id": account.account.id, "by": "operator"})
        return pb.CreateLoginLinkResponse(
            link_token=link.secret,
            expire_time=convert.timestamp(link.expire_time),
            account=portal_account(account),
        )

    async def SetAccountRole(
        self, request: pb.SetAccountRoleRequest, context: Context
    ) -> pb.SetAccountRoleResponse:
        await self._require_operator(context)
        role = _ROLES_BACK.get(request.role)
        if role is None:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "role must be ROLE_USER or ROLE_ADMIN")
            raise AssertionError("abort raises")  # pragma: no cover
        account = await self.portal.set_role(request.account, role)
        log.info("role set", extra={"account_id": account.account.id, "role": role.value})
        return pb.SetAccountRoleResponse(account=portal_account(account))


def make_portal_servicer(
    settings: BillingSettings,
    db: Database,
    accounts: Accounts,
    ledger: Ledger,
    revocations: RevocationPublisher | None = None,
) -> PortalServicer:
    """The portal's servicer on billing's database, configured from billing's settings."""
    portal = Portal(
        db,
        signup=settings.signup_rules(),
        lifetimes=settings.session_lifetimes(),
        link_life=timedelta(seconds=settings.login_link_seconds),
        rate_window=timedelta(seconds=settings.signin_rate_window_seconds),
        rate_per_email=settings.signin_rate_per_email,
        rate_per_address=settings.signin_rate_per_address,
    )
    return PortalServicer(portal, accounts, ledger, settings.admin_token.get_secret_value(), revocations)
