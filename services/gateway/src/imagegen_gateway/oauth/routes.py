"""The authorization server's endpoints and pages, and the resource side's challenge.

The SDK's handlers do the protocol work (``/authorize`` validation, ``/token``, ``/register``,
``/revoke``); this module adds what they leave out: the metadata we advertise (CIMD, RFC 9207 ``iss``,
public clients), client secrets compared by hash, the authorization code exchange done in billing (one
place checks PKCE, redirect URI, resource and single use), the ``resource`` required at the token
endpoint, the consent page behind the portal's sign-in, Connected apps, and ``resource_metadata`` on
every Bearer challenge of the API.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import unquote, urlsplit

import grpc
from fastapi import APIRouter, FastAPI, Form, Request
from mcp.server.auth.handlers.authorize import AuthorizationHandler
from mcp.server.auth.handlers.register import RegistrationHandler
from mcp.server.auth.handlers.token import TokenErrorResponse, TokenHandler
from mcp.server.auth.middleware.client_auth import AuthenticationError, ClientAuthenticator
from mcp.server.auth.provider import construct_redirect_uri
from mcp.server.auth.routes import cors_middleware
from mcp.server.auth.settings import ClientRegistrationOptions
from mcp.shared.auth import (
    InvalidRedirectUriError,
    OAuthClientInformationFull,
    OAuthMetadata,
    ProtectedResourceMetadata,
)
from pydantic import AnyUrl
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imagegen.oauth.v1 import oauth_service_pb2 as pb
from imagegen_gateway.authentication import ALL_SCOPES, SCOPE_ACCOUNT, SCOPE_GENERATE
from imagegen_gateway.oauth.client import OAuthBilling, OAuthCallError
from imagegen_gateway.oauth.provider import (
    CONSENT_PATH,
    SCOPES_SUPPORTED,
    BillingOAuthProvider,
    PendingAuthorization,
    oauth_token,
    sha256_hex,
)
from imagegen_gateway.portal import security, views
from imagegen_gateway.portal.context import portal_of, see_other
from imagegen_gateway.portal.routes import CsrfField, check_csrf, require_session

if TYPE_CHECKING:  # config imports this package's settings
    from imagegen_gateway.config import GatewaySettings

SCOPE_WORDS = {
    SCOPE_GENERATE: "Generate images on your credits, and see the images it made",
    SCOPE_ACCOUNT: "See your account's email and credit balance",
}
MCP_PATH = "/api/mcp"
PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


@dataclass(frozen=True)
class OAuthContext:
    provider: BillingOAuthProvider
    billing: OAuthBilling
    issuer: str
    resource: str

    @property
    def resource_metadata_url(self) -> str:
        return f"{self.issuer}{PROTECTED_RESOURCE_PATH}{MCP_PATH}"


def oauth_of(request: Request) -> OAuthContext:
    context: OAuthContext = request.app.state.oauth
    return context


def issuer_of(public_base_url: str) -> str:
    """The public origin, with no path (claude.ai falls back to root paths when the issuer has one)."""
    parts = urlsplit(public_base_url)
    return f"{parts.scheme}://{parts.netloc}"


# Client authentication with hashed secrets


class HashedSecretAuthenticator(ClientAuthenticator):
    """The SDK's client authentication, comparing the SHA-256 of the presented secret with the stored
    hash (billing never holds a client secret itself)."""

    async def authenticate_request(self, request: Request) -> OAuthClientInformationFull:
        form = await request.form()
        client_id = form.get("client_id")
        header = request.headers.get("authorization", "")
        basic_id, basic_secret = None, None
        if header.startswith("Basic "):
            try:
                decoded = base64.b64decode(header[6:]).decode()
                basic_id, _, basic_secret = decoded.partition(":")
                basic_id, basic_secret = unquote(basic_id), unquote(basic_secret)
            except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
                raise AuthenticationError("Invalid Basic authentication header") from exc
        client_id = client_id or basic_id
        if not isinstance(client_id, str) or not client_id:
            raise AuthenticationError("Missing client_id")
        if basic_id is not None and basic_id != client_id:
            raise AuthenticationError("Client ID mismatch in Basic auth")
        client = await self.provider.get_client(client_id)
        if client is None:
            raise AuthenticationError("Invalid client_id")
        stored = client.client_secret
        if not stored:
            return client  # a public client: PKCE is its proof
        posted = form.get("client_secret")
        presented = basic_secret if basic_secret is not None else posted if isinstance(posted, str) else None
        if not presented:
            raise AuthenticationError("Client secret is required")
        if not hmac.compare_digest(sha256_hex(presented).encode(), stored.encode()):
            raise AuthenticationError("Invalid client_secret")
        return client


# The token endpoint


class TokenEndpoint(TokenHandler):
    """The SDK's token endpoint, with the authorization code exchanged in billing (which checks client,
    redirect URI, PKCE verifier, resource and single use in one transaction) and RFC 8707 enforced."""

    def __init__(self, context: OAuthContext, authenticator: ClientAuthenticator) -> None:
        super().__init__(context.provider, authenticator)  # type: ignore[arg-type]
        self.context = context

    def _error(self, error: str, description: str) -> Response:
        answer: Response = self.response(TokenErrorResponse(error=error, error_description=description))
        return answer

    async def handle(self, request: Request) -> Response:
        form = await request.form()
        grant_type = form.get("grant_type")
        resource = form.get("resource")
        resource = resource.rstrip("/") if isinstance(resource, str) else None
        if resource is not None and resource != self.context.resource:
            return self._error("invalid_target", f"the only resource here is {self.context.resource}")
        if grant_type == "refresh_token":
            return await self._refresh(request, resource or "")
        if grant_type != "authorization_code":
            delegated: Response = await super().handle(request)
            return delegated
        if resource is None:
            return self._error("invalid_request", "the resource parameter (RFC 8707) is required")
        return await self._exchange_code(request, resource)

    async def _client(self, request: Request) -> OAuthClientInformationFull | Response:
        try:
            return await self.client_authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            body = TokenErrorResponse(error="invalid_client", error_description=exc.message)
            return JSONResponse(body.model_dump(exclude_none=True), status_code=401, headers=NO_STORE)

    async def _refresh(self, request: Request, resource: str) -> Response:
        """Rotation in billing, which alone can tell a used refresh token (reuse: the grant is revoked)
        from an unknown one; the SDK's handler would refuse a used one before billing saw it."""
        client = await self._client(request)
        if isinstance(client, Response):
            return client
        form = await request.form()
        token, scope = form.get("refresh_token"), form.get("scope")
        if not isinstance(token, str) or not token:
            return self._error("invalid_request", "refresh_token is required")
        scopes = scope.split() if isinstance(scope, str) else []
        try:
            answer = await self.context.billing.call(
                lambda s: s.ExchangeRefreshToken,
                pb.ExchangeRefreshTokenRequest(
                    refresh_token=token, client_id=client.client_id, scopes=scopes, resource=resource
                ),
            )
        except OAuthCallError as exc:
            if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
                return self._error("invalid_scope", "a refresh may only keep or narrow the granted scopes")
            return self._error("invalid_grant", "the refresh token is invalid, used, expired or revoked")
        issued: Response = self.response(oauth_token(answer.tokens))
        return issued

    async def _exchange_code(self, request: Request, resource: str) -> Response:
        form = await request.form()
        client = await self._client(request)
        if isinstance(client, Response):
            return client
        fields = {name: form.get(name) for name in ("code", "redirect_uri", "code_verifier")}
        if not all(isinstance(value, str) and value for value in fields.values()):
            return self._error("invalid_request", "code, redirect_uri and code_verifier are required")
        try:
            answer = await self.context.billing.call(
                lambda s: s.ExchangeAuthorizationCode,
                pb.ExchangeAuthorizationCodeRequest(
                    code=str(fields["code"]),
                    client_id=client.client_id,
                    redirect_uri=str(fields["redirect_uri"]),
                    code_verifier=str(fields["code_verifier"]),
                    resource=resource,
                ),
            )
        except OAuthCallError:
            return self._error(
                "invalid_grant",
                "the authorization code is invalid, used, expired or was not issued for this request",
            )
        issued: Response = self.response(oauth_token(answer.tokens))
        return issued


class RevocationEndpoint:
    """RFC 7009 revocation in one call to billing, which revokes the grant when the token is this
    client's and changes nothing otherwise. (The SDK's handler insists on a ``client_secret`` field
    even from public clients.)"""

    def __init__(self, context: OAuthContext, authenticator: ClientAuthenticator) -> None:
        self.context = context
        self.authenticator = authenticator

    async def handle(self, request: Request) -> Response:
        try:
            client = await self.authenticator.authenticate_request(request)
        except AuthenticationError as exc:
            body = {"error": "invalid_client", "error_description": exc.message}
            return JSONResponse(body, status_code=401, headers=NO_STORE)
        token = (await request.form()).get("token")
        if not isinstance(token, str) or not token:
            body = {"error": "invalid_request", "error_description": "token is required"}
            return JSONResponse(body, status_code=400, headers=NO_STORE)
        await self.context.billing.call(
            lambda s: s.RevokeToken, pb.RevokeTokenRequest(token=token, client_id=client.client_id)
        )
        return Response(status_code=200, headers=NO_STORE)


class AuthorizationEndpoint:
    """The SDK's ``/authorize`` handler, with RFC 9207 ``iss`` added to the error responses it sends
    back to a client (the success response comes from the consent page, which adds it itself)."""

    def __init__(self, context: OAuthContext) -> None:
        self.context = context
        self.handler = AuthorizationHandler(context.provider)  # type: ignore[arg-type]

    async def handle(self, request: Request) -> Response:
        response: Response = await self.handler.handle(request)
        location = response.headers.get("location", "")
        if response.status_code == 302 and location and not location.startswith(CONSENT_PATH):
            response.headers["location"] = construct_redirect_uri(location, iss=self.context.issuer)
        return response


# Metadata


def authorization_server_metadata(issuer: str) -> dict[str, Any]:
    # Strings through validation, so that the path-less issuer keeps no trailing slash.
    metadata = OAuthMetadata.model_validate(
        {
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "registration_endpoint": f"{issuer}/register",
            "revocation_endpoint": f"{issuer}/revoke",
            "scopes_supported": SCOPES_SUPPORTED,
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": [
                "none",
                "client_secret_post",
                "client_secret_basic",
            ],
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": True,
            "authorization_response_iss_parameter_supported": True,
            "service_documentation": f"{issuer}/api/docs",
        }
    )
    return metadata.model_dump(mode="json", exclude_none=True)


def protected_resource_metadata(issuer: str, resource: str) -> dict[str, Any]:
    metadata = ProtectedResourceMetadata.model_validate(
        {
            "resource": resource,
            "authorization_servers": [issuer],
            "scopes_supported": SCOPES_SUPPORTED,
            "bearer_methods_supported": ["header"],
            "resource_name": "imagegen",
            "resource_documentation": f"{issuer}/api/docs",
        }
    )
    return metadata.model_dump(mode="json", exclude_none=True)


def _json_endpoint(body: dict[str, Any]) -> ASGIApp:
    async def handle(request: Request) -> Response:
        return JSONResponse(body, headers={"Cache-Control": "public, max-age=300"})

    return cors_middleware(handle, ["GET", "OPTIONS"])


# The challenge on the API


class ChallengeMiddleware:
    """Adds ``resource_metadata`` (RFC 9728) and the scopes to the API's Bearer challenges, so that an
    MCP client finds the authorization server from a bare 401 (or a 403 ``insufficient_scope``)."""

    def __init__(self, app: ASGIApp, resource_metadata_url: str) -> None:
        self.app = app
        self.addition = f'resource_metadata="{resource_metadata_url}"'
        self.scope = f'scope="{" ".join(SCOPES_SUPPORTED)}"'

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (401, 403):
                headers = [
                    (key, self._extend(value) if key.lower() == b"www-authenticate" else value)
                    for key, value in message.get("headers", [])
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)

    def _extend(self, value: bytes) -> bytes:
        text = value.decode("latin-1")
        if not text.lower().startswith("bearer") or "resource_metadata=" in text:
            return value
        parts = [text.rstrip(", "), self.addition]
        if "scope=" not in text:
            parts.append(self.scope)
        return ", ".join(parts).replace("Bearer, ", "Bearer ", 1).encode("latin-1")


# Consent and Connected apps (pages of the portal)

router = APIRouter(include_in_schema=False)


def scope_words(scopes: list[str] | tuple[str, ...]) -> list[str]:
    return [SCOPE_WORDS.get(scope, scope) for scope in scopes]


class ConsentRefused(Exception):
    """An authorization request that cannot go back to its client (unknown client or redirect URI)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


async def _checked(
    request: Request, values: dict[str, str]
) -> tuple[OAuthClientInformationFull, PendingAuthorization]:
    """The pending authorization of a consent request, checked again (the URL is the client's to make)."""
    context = oauth_of(request)
    client = await context.provider.get_client(values.get("client_id", ""))
    if client is None:
        raise ConsentRefused("This app is not registered here.")
    try:
        redirect_uri = str(client.validate_redirect_uri(AnyUrl(values.get("redirect_uri", ""))))
    except (InvalidRedirectUriError, ValueError) as exc:
        raise ConsentRefused("This app asked to return to an address it did not register.") from exc
    scopes = tuple(values.get("scope", "").split())
    challenge = values.get("code_challenge", "")
    if (
        values.get("resource") != context.resource
        or not scopes
        or not set(scopes) <= ALL_SCOPES
        or not 43 <= len(challenge) <= 128
    ):
        raise ConsentRefused("This authorization request is not valid. Start again from the app.")
    pending = PendingAuthorization(
        client_id=client.client_id,
        redirect_uri=redirect_uri,
        code_challenge=challenge,
        resource=context.resource,
        scopes=scopes,
        state=values.get("state", ""),
    )
    return client, pending


def _back_to_client(
    context: OAuthContext, pending: PendingAuthorization, status: int, **params: str
) -> Response:
    target = construct_redirect_uri(
        pending.redirect_uri, state=pending.state or None, iss=context.issuer, **params
    )
    return RedirectResponse(target, status_code=status, headers={"Cache-Control": "no-store"})


async def _issue_code(
    request: Request, session_token: str, pending: PendingAuthorization, status: int
) -> Response:
    context = oauth_of(request)
    answer = await context.billing.call(
        lambda s: s.CreateAuthorizationCode,
        pb.CreateAuthorizationCodeRequest(
            session_token=session_token,
            client_id=pending.client_id,
            redirect_uri=pending.redirect_uri,
            code_challenge=pending.code_challenge,
            resource=pending.resource,
            scopes=pending.scopes,
        ),
    )
    return _back_to_client(context, pending, status, code=answer.code)


def _refused_page(request: Request, exc: ConsentRefused, session: Any) -> Response:
    return portal_of(request).message(request, "This app cannot be connected", exc.message, 400, session)


@router.get(CONSENT_PATH)
async def consent(request: Request) -> Response:
    session = await require_session(request)
    values = dict(request.query_params.items())
    try:
        client, pending = await _checked(request, values)
    except ConsentRefused as exc:
        return _refused_page(request, exc, session)
    secret = security.session_secret(request)
    context = oauth_of(request)
    remembered = await context.billing.call(
        lambda s: s.GetConsent,
        pb.GetConsentRequest(session_token=secret, client_id=pending.client_id, scopes=pending.scopes),
    )
    if remembered.granted:
        return await _issue_code(request, secret, pending, 302)
    fields = [
        ("client_id", pending.client_id),
        ("redirect_uri", pending.redirect_uri),
        ("code_challenge", pending.code_challenge),
        ("resource", pending.resource),
        ("scope", " ".join(pending.scopes)),
        ("state", pending.state),
    ]
    response = portal_of(request).render(
        request,
        "oauth_consent.html",
        session,
        client_name=client.client_name or client.client_id,
        redirect_host=urlsplit(pending.redirect_uri).netloc,
        scope_words=scope_words(pending.scopes),
        email=session.account.account.email,
        fields=fields,
    )
    # The form's answer redirects to the client: the policy must let the form go there.
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(pending.redirect_uri))
    response.headers["Content-Security-Policy"] = security.CONTENT_SECURITY_POLICY.replace(
        "form-action 'self'", f"form-action 'self' {origin}"
    )
    return response


@router.post(CONSENT_PATH)
async def decide(  # noqa: PLR0913 - one parameter per form field
    request: Request,
    *,
    csrf: CsrfField = "",
    decision: Annotated[str, Form()] = "",
    client_id: Annotated[str, Form()] = "",
    redirect_uri: Annotated[str, Form()] = "",
    code_challenge: Annotated[str, Form()] = "",
    resource: Annotated[str, Form()] = "",
    scope: Annotated[str, Form()] = "",
    state: Annotated[str, Form()] = "",
) -> Response:
    check_csrf(request, csrf)
    session = await require_session(request)
    values = {
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "code_challenge": code_challenge,
        "resource": resource,
        "scope": scope,
        "state": state,
    }
    try:
        _, pending = await _checked(request, values)
    except ConsentRefused as exc:
        return _refused_page(request, exc, session)
    if decision != "allow":
        return _back_to_client(oauth_of(request), pending, 303, error="access_denied")
    return await _issue_code(request, security.session_secret(request), pending, 303)


@dataclass(frozen=True)
class GrantRow:
    id: str
    client_name: str
    scope_words: list[str]
    created: str
    last_used: str


@router.get("/account/apps")
async def connected_apps(request: Request, revoked: str = "") -> Response:
    session = await require_session(request)
    answer = await oauth_of(request).billing.call(
        lambda s: s.ListGrants, pb.ListGrantsRequest(session_token=security.session_secret(request))
    )
    grants = [
        GrantRow(
            id=grant.id,
            client_name=grant.client_name,
            scope_words=scope_words(list(grant.scopes)),
            created=views.show_time(grant.create_time),
            last_used=views.show_time(grant.last_used_time, "never"),
        )
        for grant in answer.grants
    ]
    return portal_of(request).render(
        request, "connected_apps.html", session, active="apps", grants=grants, revoked=revoked[:255]
    )


@router.post("/account/apps/{grant_id}/revoke")
async def disconnect(request: Request, grant_id: str, csrf: CsrfField = "") -> Response:
    check_csrf(request, csrf)
    await require_session(request)
    secret = security.session_secret(request)
    context = oauth_of(request)
    grants = (
        await context.billing.call(lambda s: s.ListGrants, pb.ListGrantsRequest(session_token=secret))
    ).grants
    name = next((grant.client_name for grant in grants if grant.id == grant_id), "")
    try:
        await context.billing.call(
            lambda s: s.RevokeGrant, pb.RevokeGrantRequest(session_token=secret, grant_id=grant_id)
        )
    except OAuthCallError:
        return see_other("/account/apps")
    return see_other(views.page_link("/account/apps", revoked=name))


# Installation


def install_oauth(app: FastAPI, settings: GatewaySettings) -> None:
    """Adds the authorization server, the metadata documents, consent and Connected apps to the app."""
    issuer = issuer_of(settings.public_base_url)
    resource = settings.public_base_url.rstrip("/") + MCP_PATH
    billing = OAuthBilling(
        settings.billing_address,
        settings.billing_timeout_seconds,
        settings.billing_gateway_secret.get_secret_value(),
    )
    provider = BillingOAuthProvider(billing, resource, frozenset(settings.oauth_metadata_document_hosts))
    context = OAuthContext(provider, billing, issuer, resource)
    app.state.oauth = context
    authenticator = HashedSecretAuthenticator(provider)  # type: ignore[arg-type]
    registration = RegistrationHandler(
        provider,  # type: ignore[arg-type]
        options=ClientRegistrationOptions(
            enabled=True, valid_scopes=SCOPES_SUPPORTED, default_scopes=SCOPES_SUPPORTED
        ),
    )
    revocation = RevocationEndpoint(context, authenticator)
    token = TokenEndpoint(context, authenticator)
    as_metadata = _json_endpoint(authorization_server_metadata(issuer))
    pr_metadata = _json_endpoint(protected_resource_metadata(issuer, resource))
    app.router.routes.extend(
        [
            Route("/.well-known/oauth-authorization-server", as_metadata, methods=["GET", "OPTIONS"]),
            Route(PROTECTED_RESOURCE_PATH + MCP_PATH, pr_metadata, methods=["GET", "OPTIONS"]),
            Route(PROTECTED_RESOURCE_PATH, pr_metadata, methods=["GET", "OPTIONS"]),
            Route("/authorize", AuthorizationEndpoint(context).handle, methods=["GET", "POST"]),
            Route("/token", cors_middleware(token.handle, ["POST", "OPTIONS"]), methods=["POST", "OPTIONS"]),
            Route(
                "/register",
                cors_middleware(registration.handle, ["POST", "OPTIONS"]),
                methods=["POST", "OPTIONS"],
            ),
            Route(
                "/revoke",
                cors_middleware(revocation.handle, ["POST", "OPTIONS"]),
                methods=["POST", "OPTIONS"],
            ),
        ]
    )
    app.include_router(router)
    app.add_middleware(ChallengeMiddleware, resource_metadata_url=context.resource_metadata_url)
