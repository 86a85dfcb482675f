"""The account portal: server-rendered pages on the gateway's origin (sign-in, API tokens, Connect,
Usage, Buy credits), with every piece of state in billing's PortalService.

``install_portal(app, settings)`` is the one hook into the gateway's app.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_gateway.portal import admin_routes, oidc_routes, routes, security, try_routes, views
from imagegen_gateway.portal.client import (
    BadInput,
    Forbidden,
    NotFound,
    NotSignedIn,
    PortalError,
    Unavailable,
)
from imagegen_gateway.portal.context import HERE, PortalContext, portal_of, see_other

if TYPE_CHECKING:  # config imports this package's settings
    from imagegen_gateway.config import GatewaySettings

log = logging.getLogger(__name__)

__all__ = ["install_portal"]


def install_portal(app: FastAPI, settings: GatewaySettings) -> None:
    """Adds the portal's pages, static files and error pages to the gateway's app."""
    app.state.portal = PortalContext.build(settings)
    app.include_router(routes.router)
    app.include_router(admin_routes.router)
    app.include_router(oidc_routes.router)
    app.include_router(try_routes.router)
    app.mount("/portal/static", StaticFiles(directory=HERE / "static"), name="portal-static")
    app.add_exception_handler(routes.SignInRequired, _sign_in_required)
    app.add_exception_handler(routes.CsrfRefused, _csrf_refused)
    app.add_exception_handler(PortalError, _portal_error)


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, routes.SignInRequired)
    response = see_other(views.page_link("/", next=exc.next_path))
    if security.session_secret(request):
        portal_of(request).cookies.clear_session(response)
    return response


async def _optional_session(request: Request) -> pb.Session | None:
    """The session for an error page's header; None when there is none (or billing is away)."""
    secret = security.session_secret(request)
    if not secret:
        return None
    try:
        return await portal_of(request).client.session(secret)
    except PortalError:
        return None


async def _csrf_refused(request: Request, exc: Exception) -> Response:
    return portal_of(request).message(
        request,
        "This form has expired",
        "The page was open too long or came from somewhere else. Go back, reload it and try again.",
        403,
        await _optional_session(request),
    )


async def _portal_error(request: Request, exc: Exception) -> Response:
    portal = portal_of(request)
    if isinstance(exc, NotSignedIn):
        return see_other("/")
    if isinstance(exc, NotFound):
        session = await _optional_session(request)
        return portal.message(request, "Not found", "There is nothing here.", 404, session)
    if isinstance(exc, Forbidden):
        session = await _optional_session(request)
        return portal.message(request, "Not allowed", "Your account may not open this page.", 403, session)
    if isinstance(exc, BadInput):
        session = await _optional_session(request)
        return portal.message(request, "That did not work", str(exc), 400, session)
    if isinstance(exc, Unavailable):
        return portal.message(request, "Please try again", "The service is busy; try again in a moment.", 503)
    log.warning("portal call failed", extra={"error": type(exc).__name__})
    return portal.message(request, "Something went wrong", "Please try again in a moment.", 500)
