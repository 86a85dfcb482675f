"""The portal's pages: landing and sign-in, the account's tokens, Connect, Usage and Buy credits.

Thin handlers: billing (PortalService) holds the state and decides, ``views`` shapes what is shown,
the templates draw it.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import Response

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_common.redirects import safe_next_path
from imagegen_gateway.portal import security, views
from imagegen_gateway.portal.client import BadInput, NotFound, NotSignedIn, RateLimited
from imagegen_gateway.portal.context import LINK_MINUTES, portal_of, see_other

router = APIRouter(include_in_schema=False)

LEDGER_PAGE = 20
IMAGES_PAGE = 12
CsrfField = Annotated[str, Form(alias=security.CSRF_FIELD)]


class SignInRequired(Exception):
    """The page needs a session; the handler sends the person to sign in and back."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class CsrfRefused(Exception):
    """A state-changing form came without a valid CSRF token."""


async def require_session(request: Request) -> pb.Session:
    """The live session of the request, or SignInRequired (back to this page after signing in)."""
    try:
        return await portal_of(request).client.session(security.session_secret(request))
    except NotSignedIn:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise SignInRequired(safe_next_path(target)) from None


async def _optional_session(request: Request) -> pb.Session | None:
    secret = security.session_secret(request)
    if not secret:
        return None
    try:
        return await portal_of(request).client.session(secret)
    except NotSignedIn:
        return None


def check_csrf(request: Request, token: str) -> None:
    if not security.csrf_valid(request, token):
        raise CsrfRefused


# Sign-in


@router.get("/")
async def landing(request: Request, next: str = "") -> Response:  # noqa: A002 - the query's name
    portal = portal_of(request)
    session = await _optional_session(request)
    return portal.render(request, "landing.html", session, next_path=safe_next_path(next), email="")


@router.post("/signin/email")
async def start_email_sign_in(
    request: Request,
    csrf: CsrfField = "",
    email: Annotated[str, Form(max_length=254)] = "",
    next: Annotated[str, Form()] = "",  # noqa: A002
) -> Response:
    check_csrf(request, csrf)
    portal = portal_of(request)
    next_path = safe_next_path(next)
    try:
        reply = await portal.client.call(
            lambda s: s.StartEmailSignIn,
            pb.StartEmailSignInRequest(
                email=email, client_address=security.client_address(request), next_path=next_path
            ),
        )
    except RateLimited:
        return portal.render(
            request,
            "landing.html",
            status_code=429,
            error="Too many sign-in requests. Please wait a few minutes and try again.",
            email=email,
            next_path=next_path,
        )
    except BadInput as exc:
        return portal.render(
            request, "landing.html", status_code=400, error=str(exc), email=email, next_path=next_path
        )
    if reply.link_token:
        portal.mailer.send_sign_in_link(reply.email, portal.link_url(reply.link_token), LINK_MINUTES)
    # The same answer whether or not the address may sign in.
    return portal.render(request, "signin_sent.html", email=email.strip())


@router.get("/signin/link")
async def sign_in_link(request: Request, token: str = "") -> Response:
    """Shows a button that signs in: a mail scanner that fetches the link does not use it up."""
    response = portal_of(request).render(request, "signin_link.html", token=token)
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@router.post("/signin/link")
async def complete_sign_in(
    request: Request, csrf: CsrfField = "", token: Annotated[str, Form()] = ""
) -> Response:
    check_csrf(request, csrf)
    portal = portal_of(request)
    try:
        reply = await portal.client.call(
            lambda s: s.CompleteEmailSignIn, pb.CompleteEmailSignInRequest(link_token=token)
        )
    except NotSignedIn:
        response = portal.render(
            request,
            "signin_link.html",
            status_code=400,
            error="This sign-in link is invalid, already used or expired.",
        )
        response.headers["Referrer-Policy"] = "no-referrer"
        return response
    return signed_in(request, reply.session_token, reply.session, reply.next_path)


def signed_in(request: Request, secret: str, session: pb.Session, next_path: str) -> Response:
    """A new session cookie (never the one the browser had: no session fixation) and on to the page."""
    portal = portal_of(request)
    response = see_other(safe_next_path(next_path) or "/account/tokens")
    max_age = session.expire_time.seconds - session.create_time.seconds
    portal.cookies.set_session(response, secret, max_age)
    return response


@router.post("/signout")
async def sign_out(request: Request, csrf: CsrfField = "") -> Response:
    check_csrf(request, csrf)
    portal = portal_of(request)
    secret = security.session_secret(request)
    if secret:
        await portal.client.call(lambda s: s.EndSession, pb.EndSessionRequest(session_token=secret))
    response = see_other("/")
    portal.cookies.clear_session(response)
    return response


# The account


@router.get("/account")
async def account_home(request: Request) -> Response:
    await require_session(request)
    return see_other("/account/tokens")


async def _tokens_page(
    request: Request,
    session: pb.Session,
    created: pb.CreateTokenResponse | None = None,
    revoked: str = "",
) -> Response:
    portal = portal_of(request)
    secret = security.session_secret(request)
    listed = await portal.client.call(lambda s: s.ListTokens, pb.ListTokensRequest(session_token=secret))
    return portal.render(
        request,
        "tokens.html",
        session,
        active="tokens",
        tokens=views.token_rows(list(listed.tokens)),
        created=created.token if created else None,
        created_secret=created.token_secret if created else "",
        snippets=views.connect_snippets(portal.mcp_url, created.token_secret) if created else [],
        revoked=revoked,
    )


@router.get("/account/tokens")
async def tokens(request: Request) -> Response:
    return await _tokens_page(request, await require_session(request))


async def _create_token(request: Request, label: str) -> pb.CreateTokenResponse:
    return await portal_of(request).client.call(
        lambda s: s.CreateToken,
        pb.CreateTokenRequest(session_token=security.session_secret(request), label=label),
    )


@router.post("/account/tokens")
async def create_token(
    request: Request, csrf: CsrfField = "", label: Annotated[str, Form(max_length=100)] = ""
) -> Response:
    session = await require_session(request)
    check_csrf(request, csrf)
    created = await _create_token(request, label)
    return await _tokens_page(request, session, created=created)


async def _own_token(request: Request, token_id: str) -> views.TokenRow:
    listed = await portal_of(request).client.call(
        lambda s: s.ListTokens, pb.ListTokensRequest(session_token=security.session_secret(request))
    )
    for row in views.token_rows(list(listed.tokens)):
        if row.id == token_id:
            return row
    raise NotFound("no such token")


@router.get("/account/tokens/{token_id}/revoke")
async def confirm_revoke(request: Request, token_id: str) -> Response:
    session = await require_session(request)
    token = await _own_token(request, token_id)
    if token.revoked:
        return see_other("/account/tokens")
    return portal_of(request).render(request, "token_revoke.html", session, active="tokens", token=token)


@router.post("/account/tokens/{token_id}/revoke")
async def revoke_token(request: Request, token_id: str, csrf: CsrfField = "") -> Response:
    session = await require_session(request)
    check_csrf(request, csrf)
    reply = await portal_of(request).client.call(
        lambda s: s.RevokeToken,
        pb.RevokeTokenRequest(session_token=security.session_secret(request), token_id=token_id),
    )
    return await _tokens_page(request, session, revoked=reply.token.label)


@router.get("/account/connect")
async def connect(request: Request) -> Response:
    session = await require_session(request)
    portal = portal_of(request)
    return portal.render(
        request, "connect.html", session, active="connect", snippets=views.connect_snippets(portal.mcp_url)
    )


@router.post("/account/connect")
async def connect_with_new_token(
    request: Request, csrf: CsrfField = "", label: Annotated[str, Form(max_length=100)] = ""
) -> Response:
    session = await require_session(request)
    check_csrf(request, csrf)
    portal = portal_of(request)
    created = await _create_token(request, label or "MCP client")
    return portal.render(
        request,
        "connect.html",
        session,
        active="connect",
        token=created.token_secret,
        label=created.token.label,
        snippets=views.connect_snippets(portal.mcp_url, created.token_secret),
    )


@router.get("/account/usage")
async def usage(
    request: Request,
    ledger: Annotated[str, Query(max_length=200)] = "",
    images: Annotated[str, Query(max_length=500)] = "",
) -> Response:
    session = await require_session(request)
    portal = portal_of(request)
    secret = security.session_secret(request)
    entries = await portal.client.call(
        lambda s: s.ListLedgerEntries,
        pb.ListLedgerEntriesRequest(session_token=secret, page_size=LEDGER_PAGE, page_token=ledger),
    )
    made = await portal.client.call(
        lambda s: s.ListImages,
        pb.ListImagesRequest(session_token=secret, page_size=IMAGES_PAGE, page_token=images),
    )
    account = session.account.account
    return portal.render(
        request,
        "usage.html",
        session,
        active="usage",
        credits=account.credits,
        reserved=account.reserved_credits,
        ledger=views.ledger_rows(list(entries.entries)),
        ledger_next=views.page_link("/account/usage", ledger=entries.next_page_token, images=images)
        if entries.next_page_token
        else "",
        ledger_first=views.page_link("/account/usage", images=images) if ledger else "",
        images=views.image_cards(list(made.images)),
        images_next=views.page_link("/account/usage", ledger=ledger, images=made.next_page_token)
        if made.next_page_token
        else "",
    )


# Buy credits: imagegen_gateway.payments (issue 13).
