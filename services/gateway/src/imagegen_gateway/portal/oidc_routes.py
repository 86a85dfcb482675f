"""The portal's OpenID Connect sign-in: ``/signin/oidc`` sends the browser to the provider,
``/signin/oidc/callback`` brings it back signed in (see ``oidc``)."""

from __future__ import annotations

import hmac
import logging

from fastapi import APIRouter, Request
from starlette.responses import RedirectResponse, Response

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_common.redirects import safe_next_path
from imagegen_gateway.portal.client import NotSignedIn
from imagegen_gateway.portal.context import portal_of
from imagegen_gateway.portal.oidc import FLOW_COOKIE, FLOW_SECONDS, Flow, OidcError
from imagegen_gateway.portal.routes import signed_in

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)
FLOW_PATH = "/signin/oidc"


@router.get("/signin/oidc")
async def start_oidc(request: Request, next: str = "") -> Response:  # noqa: A002 - the query's name
    portal = portal_of(request)
    if portal.oidc is None:
        return portal.message(request, "Not available", "Single sign-on is not set up here.", 404)
    flow = Flow.new(safe_next_path(next))
    try:
        url = await portal.oidc.authorization_url(flow)
    except Exception as exc:  # the provider is down or misconfigured: say so, never a stack trace
        log.warning("oidc discovery failed", extra={"error": type(exc).__name__})
        return portal.message(request, "Please try again", "The sign-in provider is not answering.", 503)
    response = RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        FLOW_COOKIE,
        flow.encode(),
        max_age=FLOW_SECONDS,
        path=FLOW_PATH,
        httponly=True,
        samesite="lax",
        secure=portal.cookies.secure,
    )
    return response


@router.get("/signin/oidc/callback")
async def oidc_callback(request: Request, state: str = "", code: str = "", error: str = "") -> Response:
    portal = portal_of(request)
    flow = Flow.decode(request.cookies.get(FLOW_COOKIE, ""))
    if portal.oidc is None or flow is None or not hmac.compare_digest(state.encode(), flow.state.encode()):
        return portal.message(
            request, "Sign-in expired", "This sign-in did not start here or took too long. Try again.", 400
        )
    if error or not code:
        return portal.message(request, "Not signed in", "The provider did not sign you in.", 400)
    try:
        identity = await portal.oidc.identity(flow, code)
        reply = await portal.client.call(
            lambda s: s.CompleteOidcSignIn,
            pb.CompleteOidcSignInRequest(
                issuer=identity.issuer,
                subject=identity.subject,
                email=identity.email,
                email_verified=identity.email_verified,
            ),
        )
    except OidcError as exc:
        log.warning("oidc sign-in failed", extra={"error": str(exc)})
        return portal.message(request, "Not signed in", str(exc), 400)
    except NotSignedIn:
        return portal.message(
            request, "Not signed in", "This account may not sign in here. Ask the operator for access.", 403
        )
    response = signed_in(request, reply.session_token, reply.session, flow.next_path)
    response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH, httponly=True, samesite="lax")
    return response
