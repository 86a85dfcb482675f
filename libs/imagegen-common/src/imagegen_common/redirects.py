"""Where a person's browser may be sent back to, one rule each, shared by billing and the gateway.

``safe_next_path``: after signing in, only to a path of our own origin. ``redirect_uri_allowed``: an
OAuth client's redirect URI (https anywhere, or http on a loopback address, as OAuth 2.1 and the MCP
authorization spec allow native apps).
"""

from __future__ import annotations

from ipaddress import ip_address
from urllib.parse import urlsplit

#: Long enough for an OAuth authorize URL (PKCE, state, resource, redirect URI) to come back to.
MAX_NEXT_PATH_CHARS = 2048


def safe_next_path(path: str | None) -> str:
    """``path`` when it is a path of our own origin, otherwise "" (the caller's default applies).

    Refuses anything a browser could read as another origin: schemes, ``//host``, ``/\\host``, and
    control characters or backslashes anywhere.
    """
    path = (path or "").strip()
    if (
        not path.startswith("/")
        or path.startswith(("//", "/\\"))
        or len(path) > MAX_NEXT_PATH_CHARS
        or any(ch == "\\" or ord(ch) < 0x21 or ord(ch) == 0x7F for ch in path)
    ):
        return ""
    return path


def redirect_uri_allowed(uri: str) -> bool:
    """https anywhere, or http on a loopback address (any port: native apps pick one); no fragment."""
    parts = urlsplit(uri)
    if parts.fragment or not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    if parts.scheme != "http":
        return False
    if parts.hostname == "localhost":
        return True
    try:
        return ip_address(parts.hostname).is_loopback
    except ValueError:
        return False
