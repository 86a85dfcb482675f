"""The official MCP conformance suite's authorization-server scenarios (``conformance authorization``)
against imagegen's issuer: the metadata endpoint, and the authorization code grant with a client an
operator registered, approved by a signed-in person (headless: the test follows the authorize URL the
runner prints with a portal session and approves the consent page)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable
from html import unescape
from pathlib import Path
from typing import Any

import grpc
import httpx

from imagegen.portal.v1 import portal_service_pb2 as portal_pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_testing.net import free_port
from imagegen_testing.stack import RunningStack

CONFORMANCE = Path("node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js")
AUTHORIZE = re.compile(r"(https?://\S+/authorize\?\S+)")
HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def public_client(stack: RunningStack, redirect_uri: str) -> str:
    """A public client by Dynamic Client Registration. (The runner authenticates with ``none`` whenever
    the server lists it, secret or not, so the client it is given must be a public one.)"""
    registered = httpx.post(
        f"{stack.gateway_url}/register",
        json={
            "client_name": "Conformance",
            "redirect_uris": [redirect_uri],
            "token_endpoint_auth_method": "none",
        },
    )
    assert registered.status_code == 201, registered.text
    client_id: str = registered.json()["client_id"]
    return client_id


def session_for(stack: RunningStack, email: str) -> str:
    with grpc.insecure_channel(stack.billing_address) as channel:
        portal = portal_service_pb2_grpc.PortalServiceStub(channel)
        auth = (("authorization", f"Bearer {stack.admin_token}"),)
        link = portal.CreateLoginLink(portal_pb.CreateLoginLinkRequest(account=email), metadata=auth)
        token: str = portal.CompleteEmailSignIn(
            portal_pb.CompleteEmailSignInRequest(link_token=link.link_token),
            metadata=stack.billing_metadata(),  # as the gateway's portal pages call it
        ).session_token
    return token


def approve(gateway_url: str, session: str, authorize_url: str) -> None:
    """A signed-in person follows the authorize URL and allows; the browser lands on the callback."""
    with httpx.Client(cookies={"imagegen_session": session}, follow_redirects=False, timeout=30) as http:
        response = http.get(authorize_url)
        while response.status_code in (302, 303) and response.headers["location"].startswith(
            (gateway_url, "/")
        ):
            response = http.get(httpx.URL(gateway_url).join(response.headers["location"]))
        if response.status_code == 200:
            fields = {name: unescape(value) for name, value in HIDDEN.findall(response.text)}
            response = http.post(f"{gateway_url}/oauth/consent", data={**fields, "decision": "allow"})
        assert response.status_code in (302, 303), response.text[:300]
        httpx.get(response.headers["location"], timeout=30)  # the runner's callback server


def run_scenario(
    tools_node: str, ts_client: Path, args: list[str], on_line: Callable[[str], None] | None = None
) -> tuple[int, str]:
    lines: list[str] = []
    deadline = time.monotonic() + 240
    with subprocess.Popen(
        [tools_node, str(CONFORMANCE), "authorization", *args],
        cwd=ts_client,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line)
            if time.monotonic() > deadline:
                process.kill()
                break
        code = process.wait(timeout=60)
    return code, "".join(lines)


SCENARIOS = {"authorization-server-metadata-endpoint", "authorization-code-grant"}


def test_the_authorization_server_scenarios_pass(
    outside_stack: RunningStack, tools_node: str, ts_client: Path, tmp_path: Path
) -> None:
    """Every scenario in one run: the code grant reads the metadata the first scenario fetched."""
    port = free_port()
    client_id = public_client(outside_stack, f"http://127.0.0.1:{port}/callback")
    account = outside_stack.create_account(credits=10)
    session = session_for(outside_stack, account.email)
    threads: list[threading.Thread] = []

    def on_line(line: str) -> None:
        found = AUTHORIZE.search(line)
        if found:
            thread = threading.Thread(
                target=approve, args=(outside_stack.gateway_url, session, found.group(1)), daemon=True
            )
            thread.start()
            threads.append(thread)

    code, output = run_scenario(
        tools_node,
        ts_client,
        [
            "--url", outside_stack.gateway_url,
            "--client-id", client_id,
            "--resource", outside_stack.mcp_url,
            "--port", str(port),
            "--output-dir", str(tmp_path / "results"),
        ],
        on_line,
    )  # fmt: skip
    for thread in threads:
        thread.join(timeout=30)
    assert code == 0, output
    checks: list[dict[str, Any]] = []
    for found in (tmp_path / "results").rglob("checks.json"):
        checks.extend(json.loads(found.read_text()))
    for scenario in SCENARIOS:
        assert f"✓ {scenario}:" in output, output
    assert any(
        check["id"] == "authorization-code-grant" and check["status"] == "SUCCESS" for check in checks
    ), output
    failed = [check for check in checks if check["status"] not in ("SUCCESS", "INFO", "SKIPPED")]
    assert not failed, (failed, output)
