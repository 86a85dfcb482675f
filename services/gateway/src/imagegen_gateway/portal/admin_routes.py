"""The portal's Admin pages (accounts with the admin role): find accounts, see balance, ledger and
tokens, grant credits, revoke tokens, disable or enable an account. Billing checks the role on every
call; these pages only draw what it answers."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from starlette.responses import Response

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_gateway.portal import security, views
from imagegen_gateway.portal.client import Forbidden
from imagegen_gateway.portal.context import portal_of, see_other
from imagegen_gateway.portal.routes import CsrfField, check_csrf, require_session

router = APIRouter(include_in_schema=False)

_NOTICES = {
    "granted": "Credits granted.",
    "revoked": "Token revoked.",
    "disabled": "Account disabled: its tokens and sessions no longer work.",
    "enabled": "Account enabled.",
}


async def _admin_session(request: Request) -> pb.Session:
    session = await require_session(request)
    if session.account.role != pb.ROLE_ADMIN:
        raise Forbidden("admin role needed")
    return session


@router.get("/admin")
async def admin_home(request: Request, q: Annotated[str, Query(max_length=254)] = "") -> Response:
    session = await _admin_session(request)
    portal = portal_of(request)
    found = await portal.client.call(
        lambda s: s.AdminSearchAccounts,
        pb.AdminSearchAccountsRequest(session_token=security.session_secret(request), query=q, page_size=50),
    )
    return portal.render(
        request,
        "admin.html",
        session,
        active="admin",
        query=q,
        accounts=[views.admin_row(a) for a in found.accounts],
    )


@router.get("/admin/accounts/{account_id}")
async def admin_account(request: Request, account_id: str, done: str = "") -> Response:
    session = await _admin_session(request)
    portal = portal_of(request)
    reply = await portal.client.call(
        lambda s: s.AdminGetAccount,
        pb.AdminGetAccountRequest(session_token=security.session_secret(request), account=account_id),
    )
    return portal.render(
        request,
        "admin_account.html",
        session,
        active="admin",
        account=views.admin_row(reply.account),
        tokens=views.token_rows(list(reply.tokens)),
        ledger=views.ledger_rows(list(reply.entries)),
        notice=_NOTICES.get(done, ""),
    )


@router.post("/admin/accounts/{account_id}/grant")
async def admin_grant(
    request: Request,
    account_id: str,
    csrf: CsrfField = "",
    amount: Annotated[int, Form()] = 0,
    note: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    await _admin_session(request)
    check_csrf(request, csrf)
    await portal_of(request).client.call(
        lambda s: s.AdminGrantCredits,
        pb.AdminGrantCreditsRequest(
            session_token=security.session_secret(request), account=account_id, amount=amount, note=note
        ),
    )
    return see_other(views.page_link(f"/admin/accounts/{account_id}", done="granted"))


@router.post("/admin/accounts/{account_id}/disabled")
async def admin_set_disabled(
    request: Request, account_id: str, csrf: CsrfField = "", disabled: Annotated[str, Form()] = ""
) -> Response:
    await _admin_session(request)
    check_csrf(request, csrf)
    await portal_of(request).client.call(
        lambda s: s.AdminSetAccountDisabled,
        pb.AdminSetAccountDisabledRequest(
            session_token=security.session_secret(request), account=account_id, disabled=disabled == "1"
        ),
    )
    return see_other(
        views.page_link(f"/admin/accounts/{account_id}", done="disabled" if disabled == "1" else "enabled")
    )


@router.post("/admin/accounts/{account_id}/tokens/{token_id}/revoke")
async def admin_revoke(request: Request, account_id: str, token_id: str, csrf: CsrfField = "") -> Response:
    await _admin_session(request)
    check_csrf(request, csrf)
    await portal_of(request).client.call(
        lambda s: s.AdminRevokeToken,
        pb.AdminRevokeTokenRequest(session_token=security.session_secret(request), token_id=token_id),
    )
    return see_other(views.page_link(f"/admin/accounts/{account_id}", done="revoked"))
