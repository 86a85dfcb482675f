"""Random identifiers. Every id that names something a client can fetch carries at least 128 bits."""

from __future__ import annotations

import base64
import secrets

ID_BYTES = 16  # 128 bits


def random_id(prefix: str, nbytes: int = ID_BYTES) -> str:
    """``prefix_`` followed by ``nbytes`` random bytes in lowercase base32 (URL- and filename-safe)."""
    body = base64.b32encode(secrets.token_bytes(nbytes)).decode().rstrip("=").lower()
    return f"{prefix}_{body}"


def new_job_id() -> str:
    """A job id, which is also the id of the image the job makes."""
    return random_id("img")
