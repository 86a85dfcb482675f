"""The official MCP SDK client pointed at a running gateway."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client


@contextlib.asynccontextmanager
async def mcp_client(url: str, token: str, mode: str = "auto") -> AsyncIterator[Client]:
    """A connected SDK client that sends ``Authorization: Bearer <token>``.

    ``mode``: ``auto`` (probe, then pick), ``legacy`` (initialize handshake) or a modern protocol
    version. The HTTP client is ours, so we close it: the SDK leaves a client it was given open.
    """
    async with (
        create_mcp_http_client(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http), mode=mode) as client,
    ):
        yield client
