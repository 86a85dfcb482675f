"""The portal's long-lived parts, built once per app, and how a page is rendered."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi.templating import Jinja2Templates
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen_gateway.portal import security, views
from imagegen_gateway.portal.client import PortalClient
from imagegen_gateway.portal.mail import Mailer
from imagegen_gateway.portal.oidc import CALLBACK_PATH, OidcProvider

if TYPE_CHECKING:  # config imports this package's settings
    from imagegen_gateway.config import GatewaySettings

HERE = Path(__file__).parent
LINK_MINUTES = 15


@dataclass
class PortalContext:
    settings: GatewaySettings
    client: PortalClient
    mailer: Mailer
    cookies: security.CookiePolicy
    oidc: OidcProvider | None = None
    templates: Jinja2Templates = field(default_factory=lambda: Jinja2Templates(directory=HERE / "templates"))

    @classmethod
    def build(cls, settings: GatewaySettings) -> PortalContext:
        return cls(
            settings=settings,
            client=PortalClient(
                settings.billing_address,
                settings.billing_timeout_seconds,
                settings.billing_gateway_secret.get_secret_value(),
            ),
            mailer=Mailer(settings),
            cookies=security.CookiePolicy.for_public_url(settings.public_base_url),
            oidc=OidcProvider(
                settings.oidc_issuer,
                settings.oidc_client_id,
                settings.oidc_client_secret.get_secret_value(),
                redirect_uri=settings.public_base_url.rstrip("/") + CALLBACK_PATH,
            )
            if settings.oidc_issuer
            else None,
        )

    @property
    def public_url(self) -> str:
        return self.settings.public_base_url.rstrip("/")

    @property
    def mcp_url(self) -> str:
        return f"{self.public_url}/api/mcp"

    def link_url(self, token: str) -> str:
        return f"{self.public_url}{views.page_link('/signin/link', token=token)}"

    def render(
        self,
        request: Request,
        template: str,
        session: pb.Session | None = None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        """A page with the header, a CSRF token for its forms and the security headers."""
        key, fresh = security.csrf_key(request)
        values = {
            "header": views.header(session) if session is not None else None,
            "csrf_token": security.csrf_token_for(key),
            "mcp_url": self.mcp_url,
            "oidc_name": self.settings.oidc_name if self.settings.oidc_issuer else "",
            "active": "",
            **context,
        }
        response = self.templates.TemplateResponse(
            request, template, values, status_code=status_code, headers=security.PAGE_HEADERS
        )
        if fresh:
            self.cookies.set_csrf(response, key)
        return response

    def message(
        self,
        request: Request,
        heading: str,
        message: str,
        status_code: int,
        session: pb.Session | None = None,
    ) -> HTMLResponse:
        return self.render(
            request, "message.html", session, status_code=status_code, heading=heading, message=message
        )


def portal_of(request: Request) -> PortalContext:
    context: PortalContext = request.app.state.portal
    return context


def see_other(path: str) -> Response:
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})
