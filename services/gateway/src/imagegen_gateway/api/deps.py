"""The routes' dependencies as ``Annotated`` aliases: the gateway's parts (``GatewayDep``), the caller
(``Caller``, from the bearer token) and the generate quota (``GenerateQuota``)."""

from __future__ import annotations

import logging
from typing import Annotated

import nats.errors
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from imagegen_gateway.authentication import Principal, required_scope
from imagegen_gateway.errors import RateLimitedError, ServiceUnavailableError
from imagegen_gateway.metrics import RATE_LIMITED
from imagegen_gateway.ratelimit import RateDecision
from imagegen_gateway.state import Gateway

log = logging.getLogger(__name__)

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearerAuth",
    description="An API token: `Authorization: Bearer igk_…` (the same token as MCP).",
)


def gateway_of(request: Request) -> Gateway:
    """The gateway's long-lived parts, built by the app's lifespan."""
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(gateway_of)]


async def authenticated(
    request: Request,
    gateway: GatewayDep,
    _: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    """The caller; InvalidTokenError (401) for a missing, unknown or revoked token, and
    InsufficientScopeError (403) for an OAuth token without the scope the path needs."""
    principal = await gateway.authenticator.from_headers(request.headers)
    scope = required_scope(request.url.path)  # oauth
    if scope is not None:
        principal.require(scope)
    return principal


Caller = Annotated[Principal, Depends(authenticated)]


async def generate_quota(gateway: GatewayDep, principal: Caller) -> RateDecision | None:
    """Counts a generate request against its token's quota; 429 when it is spent (None: no limit)."""
    limiter = gateway.rate_limiter
    if not limiter.enabled:
        return None
    try:
        decision = await limiter.take(principal.token_id)
    except (nats.errors.Error, TimeoutError) as exc:
        log.warning("rate limiter unavailable", extra={"error": repr(exc)})
        raise ServiceUnavailableError("the service is unavailable for a moment; please try again") from exc
    if not decision.allowed:
        RATE_LIMITED.inc()
        raise RateLimitedError(
            f"Too many generate requests: at most {decision.limit} a minute with one API token. "
            f"Try again in {decision.reset_seconds} seconds; nothing was charged.",
            retry_after=decision.reset_seconds,
            headers=decision.headers(),
        )
    return decision


GenerateQuota = Annotated[RateDecision | None, Depends(generate_quota)]
