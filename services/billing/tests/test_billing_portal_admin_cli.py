"""`imagegen admin account login-link` and `account set-role` against a real billing server."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

from typer.testing import CliRunner

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_billing.admin_cli import app as admin_app
from imagegen_billing.server import BillingServer
from imagegen_testing.billing_callers import service_channel


async def run_json(server: BillingServer, *args: str) -> Any:
    options = ["--billing", server.settings.billing_listen, "--admin-token"]
    options.append(server.settings.admin_token.get_secret_value())

    def invoke() -> Any:
        result = CliRunner().invoke(admin_app, [*options, "--json", *args], env={"IMAGEGEN_ADMIN_TOKEN": ""})
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    return await asyncio.to_thread(invoke)


async def test_login_link_signs_in_once_and_set_role_makes_an_admin(billing_server: BillingServer) -> None:
    await run_json(billing_server, "account", "create", "ada@example.test")
    link = await run_json(
        billing_server,
        "account",
        "login-link",
        "ada@example.test",
        "--public-url",
        "https://img.example.test/",
    )
    url = urlsplit(link["url"])
    assert (url.scheme, url.netloc, url.path) == ("https", "img.example.test", "/signin/link")
    assert link["expires_at"] and link["email"] == "ada@example.test"
    token = parse_qs(url.query)["token"][0]
    role = await run_json(billing_server, "account", "set-role", "ada@example.test", "admin")
    assert role["role"] == "admin"
    async with service_channel(billing_server.settings) as channel:
        portal = portal_service_pb2_grpc.PortalServiceStub(channel)
        done = await portal.CompleteEmailSignIn(pb.CompleteEmailSignInRequest(link_token=token))
        assert done.session.account.role == pb.ROLE_ADMIN


async def test_login_link_errors_are_one_line(billing_server: BillingServer) -> None:
    options = ["--billing", billing_server.settings.billing_listen, "--admin-token", "wrong-token"]

    def invoke() -> Any:
        return CliRunner().invoke(
            admin_app,
            [*options, "account", "login-link", "nobody@example.test"],
            env={"IMAGEGEN_ADMIN_TOKEN": ""},
        )

    result = await asyncio.to_thread(invoke)
    assert result.exit_code == 1
    assert "refused the admin token" in result.output and "Traceback" not in result.output
