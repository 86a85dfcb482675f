"""Throwaway PostgreSQL databases on the server the tests can reach.

The server is ``IMAGEGEN_TEST_POSTGRES_URL`` (default postgresql://postgres@127.0.0.1:5432/postgres).
Where none answers the tests that need it are skipped, except under ``CI=true``, where that is a
failure: CI must run them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

DEFAULT_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def server_url() -> str:
    return os.environ.get("IMAGEGEN_TEST_POSTGRES_URL", DEFAULT_SERVER_URL)


def _with_database(url: str, database: str, driver: str = "postgresql") -> str:
    parts = urlsplit(url)
    return urlunsplit((driver, parts.netloc, f"/{database}", parts.query, ""))


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(
        _with_database(server_url(), urlsplit(server_url()).path.lstrip("/") or "postgres"), timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def reachable() -> str | None:
    """None when the server answers, otherwise why not."""
    try:
        asyncio.run(_admin("SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


class TemporaryDatabase:
    """CREATE DATABASE on enter, DROP DATABASE (forcing connections off) on exit."""

    def __init__(self) -> None:
        self.name = f"imagegen_test_{secrets.token_hex(6)}"

    @property
    def sqlalchemy_url(self) -> str:
        return _with_database(server_url(), self.name, "postgresql+asyncpg")

    @property
    def url(self) -> str:
        return _with_database(server_url(), self.name)

    def __enter__(self) -> TemporaryDatabase:
        asyncio.run(_admin(f'CREATE DATABASE "{self.name}"'))
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
