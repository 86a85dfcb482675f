"""What ``imagegen dev`` tells a Claude Code user to paste: the ``.mcp.json`` block has the
documented shape (``type: http``, ``url``, ``headers.Authorization``), says the same as the ready
file, and works as written with an MCP client given exactly that url and those headers."""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from imagegen_cli.processes import ChildProcess, imagegen_command
from imagegen_testing.net import free_port

# Starts service processes (`-m "not slow"` skips it). `imagegen dev` prefers the well-known ports
# (50051, 9101, 9102), so two dev stacks starting at once could race for one: every module that starts
# `imagegen dev` runs on the same xdist worker (`--dist loadgroup`), one after the other.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("imagegen-dev")]


class DevRun:
    def __init__(self, process: ChildProcess, ready: dict[str, str]) -> None:
        self.process = process
        self.ready = ready

    @property
    def output(self) -> str:
        return self.process.logs()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevRun]:
    """``imagegen dev`` as a user starts it, on a free port with a data dir of its own."""
    root = tmp_path_factory.mktemp("dev")
    ready_file = root / "ready.json"
    command = imagegen_command(
        "dev",
        "--port",
        str(free_port()),
        "--any-ports",
        "--data-dir",
        str(root / "data"),
        "--ready-file",
        str(ready_file),
    )
    process = ChildProcess("imagegen-dev", command, log_path=root / "dev.log")
    # Embedded defaults, as on a fresh machine: none of this environment's IMAGEGEN_ settings
    # (ChildProcess starts from os.environ, so they are dropped after construction).
    process.env = {k: v for k, v in process.env.items() if not k.startswith("IMAGEGEN_")}
    process.start()
    try:
        process.wait_ready(ready_file.exists, timeout=120)
        yield DevRun(process, json.loads(ready_file.read_text()))
    finally:
        process.stop(timeout=60)


def printed_mcp_json(output: str) -> Any:
    """The JSON block that follows the ``.mcp.json:`` line of the banner."""
    _, _, after = output.partition("\n.mcp.json:\n")
    assert after, f"no .mcp.json block in:\n{output}"
    block, _ = json.JSONDecoder().raw_decode(after)
    return block


async def test_the_printed_mcp_json_has_the_documented_shape_and_works_as_written(dev: DevRun) -> None:
    config = printed_mcp_json(dev.output)
    assert set(config) == {"mcpServers"}
    [(name, server)] = config["mcpServers"].items()
    assert re.fullmatch(r"[a-z][a-z0-9-]*", name)
    # Exactly the documented keys: anything else is a field some client may reject.
    assert server == {
        "type": "http",
        "url": dev.ready["mcp_url"],
        "headers": {"Authorization": f"Bearer {dev.ready['token']}"},
    }
    assert server["url"].endswith("/api/mcp")

    # The `claude mcp add` line beside it says the same.
    line = next(x for x in dev.output.splitlines() if x.strip().startswith("claude mcp add"))
    command = dev.output[dev.output.index(line) :].split("\n\n", 1)[0].replace("\\\n", " ")
    words = shlex.split(command)
    assert words[:5] == ["claude", "mcp", "add", "--transport", "http"]
    assert words[5:7] == [name, server["url"]]
    assert words[words.index("--header") + 1] == f"Authorization: {server['headers']['Authorization']}"

    # An MCP client given exactly that url and those headers works.
    async with (
        create_mcp_http_client(headers=server["headers"]) as http,
        Client(streamable_http_client(server["url"], http_client=http)) as client,
    ):
        result = await client.call_tool("list_models", {})
    assert not result.is_error, result.content
    assert isinstance(result.structured_content, dict)
    assert "nano-banana" in {model["key"] for model in result.structured_content["models"]}
