"""The official TypeScript SDK (``@modelcontextprotocol/sdk``, pinned in ts-client/package-lock.json)
against a whole stack, the way a new user's script meets it: ``ts-client/client.mjs`` connects with
a bearer header, lists tools, calls both, and reports what it saw as JSON."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it


def run_client(
    node: str, ts_client: Path, stack: RunningStack, token: str, *, width: int, height: int
) -> Any:
    completed = subprocess.run(
        [node, "client.mjs", stack.mcp_url, token, str(width), str(height)],
        cwd=ts_client,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert completed.returncode == 0, f"client.mjs failed:\n{completed.stderr}\n{stack.logs()}"
    return json.loads(completed.stdout)


def test_the_typescript_sdk_lists_generates_and_gets_helpful_errors(
    outside_stack: RunningStack, node: str, ts_client: Path
) -> None:
    account = outside_stack.create_account(credits=20)
    summary = run_client(node, ts_client, outside_stack, account.token, width=768, height=512)

    assert summary["server"]["name"] == "imagegen"
    assert "tools" in summary["capabilities"]
    assert "generate_image" in summary["instructions"]
    tools = {tool["name"]: tool for tool in summary["tools"]}
    assert set(tools) == {"generate_image", "list_models"}
    assert tools["generate_image"]["required"] == ["prompt"]
    assert all(tool["hasOutputSchema"] for tool in tools.values())

    listing = summary["listModels"]
    assert not listing["isError"]
    assert "nano-banana" in {model["key"] for model in listing["structuredContent"]["models"]}

    # The SDK validated structuredContent against the outputSchema before handing it over.
    generated = summary["generate"]
    assert not generated["isError"], generated["text"]
    body = generated["structuredContent"]
    assert set(body) == {"image_url", "image_id", "credits_used", "credits_remaining"}
    assert json.loads(generated["text"]) == body
    assert generated["contentTypes"] == ["text", "resource_link"]
    response = httpx.get(body["image_url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.format, image.size) == ("PNG", (768, 512))

    # nano-banana costs 5 credits per megapixel, rounded up: 768x512 costs 2. Failed calls cost nothing.
    assert body["credits_used"] == 2
    assert body["credits_remaining"] == 20 - 2 == outside_stack.credits(account.account_id)

    progress = generated["progress"]
    assert progress, "no progress notification reached onprogress"
    values = [p["progress"] for p in progress]
    assert values == sorted(values) and len(set(values)) == len(values)  # strictly increasing
    assert progress[0]["message"].startswith("queued")

    unknown = summary["unknownModel"]
    assert unknown["isError"] and unknown["structuredContent"] is None
    assert "unknown model 'no-such-model'" in unknown["text"]
    assert "nano-banana" in unknown["text"]  # says what would work

    too_small = summary["widthOutOfRange"]
    assert too_small["isError"]
    assert "width" in too_small["text"] and "512" in too_small["text"]

    wrong = summary["wrongToken"]
    assert (wrong["connected"], wrong["code"]) == (False, 401)
    assert "invalid or revoked API token" in wrong["error"]


def test_the_get_stream_the_sdk_opens_after_initialize_is_refused(outside_stack: RunningStack) -> None:
    """The TypeScript SDK (so Claude Code) opens ``GET /api/mcp`` after initialize for
    server-initiated messages and keeps it for the client's lifetime. A stateless server has
    no way to use it: answering 405 tells the SDK so (it handles 405) instead of holding an idle
    connection per client, and lets the gateway stop without waiting on them."""
    token = outside_stack.create_account(credits=1).token
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }
    with httpx.stream("GET", outside_stack.mcp_url, headers=headers, timeout=30) as response:
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
