"""The portal's web security: the session cookie, CSRF tokens, safe redirects and response headers.

The session cookie holds billing's opaque session secret (HttpOnly, SameSite=Lax, Secure on https).
CSRF tokens are an HMAC of a secret the browser holds in an HttpOnly cookie: the session's, or before
sign-in a random pre-session one. A page can put the token in its forms; another site can neither read
the cookie nor compute the token, so a forged form post is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

SESSION_COOKIE = "imagegen_session"
CSRF_COOKIE = "imagegen_csrf"
CSRF_FIELD = "csrf_token"
_CSRF_CONTEXT = b"imagegen portal csrf v1"

#: Our pages load scripts, styles and images from our own origin only; no inline script or style.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    secure: bool

    @classmethod
    def for_public_url(cls, public_base_url: str) -> CookiePolicy:
        return cls(secure=public_base_url.lower().startswith("https://"))

    def set_session(self, response: Response, secret: str, max_age: int) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            secret,
            max_age=max(max_age, 0),
            path="/",
            httponly=True,
            samesite="lax",
            secure=self.secure,
        )
        # The pre-session CSRF secret has done its job; a signed-in page uses the session's.
        response.delete_cookie(CSRF_COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)

    def clear_session(self, response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=self.secure)

    def set_csrf(self, response: Response, secret: str) -> None:
        response.set_cookie(CSRF_COOKIE, secret, path="/", httponly=True, samesite="lax", secure=self.secure)


def session_secret(request: Request) -> str:
    return request.cookies.get(SESSION_COOKIE, "")


def csrf_key(request: Request) -> tuple[str, bool]:
    """The secret CSRF tokens are made from, and whether it is new (then the response must set it)."""
    existing = request.cookies.get(SESSION_COOKIE) or request.cookies.get(CSRF_COOKIE)
    if existing:
        return existing, False
    fresh: str | None = getattr(request.state, "portal_csrf_secret", None)
    if fresh is None:
        fresh = secrets.token_urlsafe(32)
        request.state.portal_csrf_secret = fresh
    return fresh, True


def csrf_token_for(key: str) -> str:
    return hmac.new(key.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def csrf_valid(request: Request, presented: str) -> bool:
    """Whether a form's token matches the browser's cookie (constant time)."""
    existing = request.cookies.get(SESSION_COOKIE) or request.cookies.get(CSRF_COOKIE)
    if not existing or not presented:
        return False
    return hmac.compare_digest(csrf_token_for(existing), presented)


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""
