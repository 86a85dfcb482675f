"""The portal's page logic without a browser or a server: snippets, rows, links, next paths."""

from __future__ import annotations

import json
import shlex

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.billing.v1 import resources_pb2
from imagegen_common.redirects import safe_next_path
from imagegen_gateway.portal import views
from imagegen_gateway.portal.security import csrf_token_for

MCP_URL = "https://img.example.test/api/mcp"


def test_connect_snippets_carry_the_url_and_the_token() -> None:
    snippets = {s.id: s for s in views.connect_snippets(MCP_URL, "igk_secret")}
    server = json.loads(snippets["claude-code"].text)["mcpServers"]["imagegen"]
    assert server == {"type": "http", "url": MCP_URL, "headers": {"Authorization": "Bearer igk_secret"}}
    desktop = json.loads(snippets["claude-desktop"].text)["mcpServers"]["imagegen"]
    assert MCP_URL in desktop["args"] and "Authorization:Bearer igk_secret" in desktop["args"]
    assert shlex.split(snippets["claude-add"].text) == [
        "claude", "mcp", "add", "--transport", "http", "imagegen", MCP_URL,
        "--header", "Authorization: Bearer igk_secret",
    ]  # fmt: skip
    assert snippets["cursor"].text.startswith("cursor://anysphere.cursor-deeplink/mcp/install?name=imagegen")
    assert MCP_URL in snippets["curl"].text


def test_without_a_token_the_snippets_say_where_it_goes() -> None:
    assert all(views.TOKEN_PLACEHOLDER in s.text for s in views.connect_snippets(MCP_URL) if s.id != "cursor")


def _stamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)


def test_live_tokens_come_first_newest_first() -> None:
    rows = views.token_rows(
        [
            resources_pb2.ApiToken(id="a", label="old", create_time=_stamp(100)),
            resources_pb2.ApiToken(id="b", label="gone", create_time=_stamp(300), revoke_time=_stamp(400)),
            resources_pb2.ApiToken(id="c", label="new", create_time=_stamp(200), last_used_time=_stamp(250)),
        ]
    )
    assert [(r.id, r.revoked) for r in rows] == [("c", False), ("a", False), ("b", True)]
    assert rows[1].last_used == "never" and rows[0].last_used.endswith("UTC")


def test_ledger_rows_name_the_kinds() -> None:
    rows = views.ledger_rows(
        [
            resources_pb2.LedgerEntry(kind=resources_pb2.LedgerEntry.KIND_GRANT, amount=5, note="hi"),
            resources_pb2.LedgerEntry(kind=resources_pb2.LedgerEntry.KIND_RESERVE, amount=-2, job_id="img_1"),
        ]
    )
    assert [(r.kind, r.amount, r.note) for r in rows] == [("Grant", 5, "hi"), ("Hold", -2, "image img_1")]


def test_page_links_encode_their_tokens() -> None:
    assert views.page_link("/account/usage", ledger="a b&c", images="") == "/account/usage?ledger=a+b%26c"
    assert views.page_link("/account/usage") == "/account/usage"


@pytest.mark.parametrize(
    ("path", "safe"),
    [
        ("/account/tokens", "/account/tokens"),
        ("//evil.test", ""),
        ("/\\evil.test", ""),
        ("https://evil.test", ""),
        ("/a\nb", ""),
        (None, ""),
        ("/authorize?" + "x" * 1500, "/authorize?" + "x" * 1500),  # an OAuth request comes back whole
        ("/" + "x" * 2048, ""),
    ],
)
def test_next_paths_are_ours_only(path: str | None, safe: str) -> None:
    assert safe_next_path(path) == safe


def test_csrf_tokens_depend_on_the_secret() -> None:
    assert csrf_token_for("a") == csrf_token_for("a") != csrf_token_for("b")
