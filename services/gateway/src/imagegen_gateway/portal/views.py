"""What the portal's pages show, as plain data built from billing's messages: no HTTP, no templates,
so that it is tested without a browser."""

from __future__ import annotations

import base64
import json
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import resources_pb2
from imagegen.portal.v1 import portal_service_pb2 as pb

TOKEN_PLACEHOLDER = "YOUR_API_TOKEN"
SERVER_NAME = "imagegen"

_KINDS = {
    resources_pb2.LedgerEntry.KIND_GRANT: "Grant",
    resources_pb2.LedgerEntry.KIND_RESERVE: "Hold",
    resources_pb2.LedgerEntry.KIND_CAPTURE: "Charge",
    resources_pb2.LedgerEntry.KIND_RELEASE: "Release",
    resources_pb2.LedgerEntry.KIND_DEBIT: "Debit",
    resources_pb2.LedgerEntry.KIND_PURCHASE: "Purchase",  # payments (issue 13)
    resources_pb2.LedgerEntry.KIND_REFUND: "Refund",
    resources_pb2.LedgerEntry.KIND_DISPUTE: "Dispute",
    resources_pb2.LedgerEntry.KIND_DISPUTE_REVERSAL: "Dispute won",
}
_STATES = {
    resources_pb2.Reservation.STATE_HELD: "In progress",
    resources_pb2.Reservation.STATE_CAPTURED: "Done",
    resources_pb2.Reservation.STATE_RELEASED: "Failed",
}


def when(stamp: Timestamp) -> datetime | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


def show_time(stamp: Timestamp, empty: str = "—") -> str:
    value = when(stamp)
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else empty


@dataclass(frozen=True, slots=True)
class Header:
    """The header's user menu button: who is signed in and their balance."""

    email: str
    credits: int
    admin: bool


def header(session: pb.Session) -> Header:
    account = session.account
    return Header(
        email=account.account.email, credits=account.account.credits, admin=account.role == pb.ROLE_ADMIN
    )


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: str
    label: str
    prefix: str
    created: str
    last_used: str
    revoked: bool


def token_rows(tokens: list[resources_pb2.ApiToken]) -> list[TokenRow]:
    """Live tokens first (newest first), then revoked ones."""
    ordered = sorted(tokens, key=lambda t: (t.HasField("revoke_time"), -t.create_time.seconds))
    return [
        TokenRow(
            id=t.id,
            label=t.label,
            prefix=t.prefix,
            created=show_time(t.create_time),
            last_used=show_time(t.last_used_time, "never"),
            revoked=t.HasField("revoke_time"),
        )
        for t in ordered
    ]


@dataclass(frozen=True, slots=True)
class LedgerRow:
    kind: str
    amount: int
    balance_after: int
    note: str
    time: str


def ledger_rows(entries: list[resources_pb2.LedgerEntry]) -> list[LedgerRow]:
    return [
        LedgerRow(
            kind=_KINDS.get(e.kind, "Other"),
            amount=e.amount,
            balance_after=e.balance_after,
            note=e.note or (f"image {e.job_id}" if e.job_id else ""),
            time=show_time(e.create_time),
        )
        for e in entries
    ]


@dataclass(frozen=True, slots=True)
class ImageCard:
    id: str
    url: str
    prompt: str
    model: str
    size: str
    credits: int
    status: str
    time: str
    error: str


def image_cards(images: list[resources_pb2.Reservation]) -> list[ImageCard]:
    return [
        ImageCard(
            id=r.job_id,
            url=r.result.image_url,
            prompt=r.details.prompt,
            model=r.details.model,
            size=f"{r.details.width}×{r.details.height}",
            credits=r.amount,
            status=_STATES.get(r.state, "Unknown"),
            time=show_time(r.create_time),
            error=r.result.error_message,
        )
        for r in images
    ]


@dataclass(frozen=True, slots=True)
class Snippet:
    id: str
    title: str
    where: str
    language: str
    text: str


def connect_snippets(mcp_url: str, token: str = "") -> list[Snippet]:
    """Ready-to-paste client configurations for this deployment's MCP URL (and a token, when given)."""
    secret = token or TOKEN_PLACEHOLDER
    auth = f"Bearer {secret}"
    server = {"type": "http", "url": mcp_url, "headers": {"Authorization": auth}}
    claude_code = json.dumps({"mcpServers": {SERVER_NAME: server}}, indent=2)
    desktop = json.dumps(
        {
            "mcpServers": {
                SERVER_NAME: {
                    "command": "npx",
                    "args": ["-y", "mcp-remote", mcp_url, "--header", f"Authorization:{auth}"],
                }
            }
        },
        indent=2,
    )
    cursor_config = base64.b64encode(
        json.dumps({"url": mcp_url, "headers": {"Authorization": auth}}).encode()
    ).decode()
    cursor = f"cursor://anysphere.cursor-deeplink/mcp/install?name={SERVER_NAME}&config={cursor_config}"
    claude_add = (
        f"claude mcp add --transport http {SERVER_NAME} {shlex.quote(mcp_url)} "
        f"--header {shlex.quote('Authorization: ' + auth)}"
    )
    curl = (
        f"curl -X POST {shlex.quote(mcp_url)} \\\n"
        f"  -H {shlex.quote('Authorization: ' + auth)} \\\n"
        "  -H 'Content-Type: application/json' \\\n"
        "  -H 'Accept: application/json, text/event-stream' \\\n"
        """  -d '{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}'"""
    )
    return [
        Snippet("claude-code", "Claude Code", ".mcp.json in your project", "json", claude_code),
        Snippet("claude-add", "Claude Code (command line)", "run in a terminal", "shell", claude_add),
        Snippet(
            "claude-desktop",
            "Claude Desktop",
            "claude_desktop_config.json (through mcp-remote)",
            "json",
            desktop,
        ),
        Snippet("cursor", "Cursor", "open this install link", "text", cursor),
        Snippet("curl", "curl", "list the tools", "shell", curl),
    ]


def page_link(path: str, **params: str) -> str:
    """A link to ``path`` with the non-empty query parameters."""
    query = urlencode({k: v for k, v in params.items() if v})
    return f"{path}?{query}" if query else path


@dataclass(frozen=True, slots=True)
class AdminRow:
    id: str
    email: str
    credits: int
    reserved: int
    role: str
    disabled: bool
    created: str


def admin_row(value: pb.PortalAccount) -> AdminRow:
    account = value.account
    return AdminRow(
        id=account.id,
        email=account.email,
        credits=account.credits,
        reserved=account.reserved_credits,
        role="admin" if value.role == pb.ROLE_ADMIN else "user",
        disabled=value.disabled,
        created=show_time(account.create_time),
    )
