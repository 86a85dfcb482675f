"""API tokens: ``igk_`` and 192 random bits. Only their SHA-256 is stored; the secret is shown once."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "igk_"
#: Random bytes of a token (192 bits; the floor is 128).
TOKEN_BYTES = 24
#: Characters of a token shown to people: the prefix and four more ("igk_AbCd").
DISPLAY_CHARS = 8
#: Anything longer is not one of ours and is refused before hashing.
MAX_TOKEN_CHARS = 256


def generate_token() -> str:
    """A new secret token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def hash_token(token: str) -> str:
    """The stored form of a token: hex SHA-256. Tokens are long and random, so no salt or slow hash
    is needed, and a hash can be looked up directly."""
    return hashlib.sha256(token.encode()).hexdigest()


def display_prefix(token: str) -> str:
    return token[:DISPLAY_CHARS]


def plausible(token: str) -> bool:
    """Whether a string could be one of our tokens at all (cheap check before any lookup)."""
    return token.startswith(TOKEN_PREFIX) and len(token) <= MAX_TOKEN_CHARS


def hashes_match(stored_hash: str, token: str) -> bool:
    """Constant-time comparison of a stored hash with a presented token."""
    return hmac.compare_digest(stored_hash.encode(), hash_token(token).encode())
