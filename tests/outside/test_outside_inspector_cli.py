"""The MCP Inspector's CLI (``@modelcontextprotocol/inspector --cli``, pinned in
ts-client/package-lock.json) against a whole stack: tools/list with its schema portability check,
and generate_image read from a ``.mcp.json`` of the documented shape, in both protocol eras."""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from imagegen_testing.stack import RunningStack

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

INSPECTOR = Path(
    "node_modules", "@modelcontextprotocol", "inspector", "clients", "launcher", "build", "index.js"
)
TOOL_IS_ERROR_EXIT = 5  # the Inspector's exit status for a tool result with isError: true


NodeTool = Callable[..., subprocess.CompletedProcess[str]]


def inspector(node_tool: NodeTool, *args: str) -> subprocess.CompletedProcess[str]:
    return node_tool(INSPECTOR, "--cli", *args, "--format", "json", "--quiet")


def result_of(completed: subprocess.CompletedProcess[str]) -> Any:
    assert completed.stdout, completed.stderr
    return json.loads(completed.stdout)["result"]


def test_tools_list_with_a_header_and_portable_schemas(
    outside_stack: RunningStack, node_tool: NodeTool
) -> None:
    token = outside_stack.create_account(credits=1).token
    # --strict reports tool-schema portability problems and exits 6 on an error-severity one.
    completed = inspector(
        node_tool,
        outside_stack.mcp_url, "--transport", "http", "--header", f"Authorization: Bearer {token}",
        "--method", "tools/list", "--strict",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    tools = {tool["name"]: tool for tool in result_of(completed)["tools"]}
    assert set(tools) == {"generate_image", "list_models"}
    assert tools["generate_image"]["inputSchema"]["required"] == ["prompt"]


@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_generate_image_from_a_documented_mcp_json(
    outside_stack: RunningStack, node_tool: NodeTool, tmp_path: Path, era: str
) -> None:
    account = outside_stack.create_account(credits=10)
    config = tmp_path / ".mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "imagegen": {
                        "type": "http",
                        "url": outside_stack.mcp_url,
                        "headers": {"Authorization": f"Bearer {account.token}"},
                    }
                }
            }
        )
    )
    server = ("--config", str(config), "--server", "imagegen", "--protocol-era", era)
    arguments = {"prompt": "a fox in the snow, from the Inspector", "width": 512, "height": 640}
    completed = inspector(
        node_tool,
        *server, "--method", "tools/call", "--tool-name", "generate_image",
        "--tool-args-json", json.dumps(arguments),
    )  # fmt: skip
    assert completed.returncode == 0, f"{completed.stdout}\n{completed.stderr}\n{outside_stack.logs()}"
    result = result_of(completed)
    body = result["structuredContent"]
    assert result["isError"] is False
    assert (body["credits_used"], body["credits_remaining"]) == (2, 8)
    image = Image.open(io.BytesIO(httpx.get(body["image_url"]).content))
    assert image.size == (512, 640)

    unknown = inspector(
        node_tool,
        *server, "--method", "tools/call", "--tool-name", "generate_image",
        "--tool-args-json", json.dumps({"prompt": "x", "model": "no-such-model"}),
    )  # fmt: skip
    assert unknown.returncode == TOOL_IS_ERROR_EXIT, unknown.stderr
    failed = result_of(unknown)
    assert failed["isError"] is True
    assert "unknown model 'no-such-model'" in failed["content"][0]["text"]
    assert outside_stack.credits(account.account_id) == 8
