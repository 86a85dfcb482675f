"""`imagegen dev` as a new user runs it: one command, a ready file, a working stack, a clean stop."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats.aio.client
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imagegen.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from imagegen_cli.processes import ChildProcess, grpc_serving, imagegen_command
from imagegen_common.service_auth import Caller, caller_metadata
from imagegen_testing import eventually_blocking
from imagegen_testing.net import free_port

# Starts service processes (`-m "not slow"` skips it). `imagegen dev` prefers the well-known ports
# (50051, 9101, 9102), so two dev stacks starting at once could race for one: every module that starts
# `imagegen dev` runs on the same xdist worker (`--dist loadgroup`), one after the other.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("imagegen-dev")]

TOOLS_LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}


def start_dev(data_dir: Path, ready_file: Path, port: int) -> ChildProcess:
    dev = ChildProcess(
        "dev",
        imagegen_command(
            "dev",
            "--port",
            str(port),
            "--any-ports",
            "--data-dir",
            str(data_dir),
            "--ready-file",
            str(ready_file),
        ),
        log_path=data_dir.parent / "dev.log",
    ).start()
    dev.wait_ready(ready_file.exists, timeout=120)
    return dev


@pytest.fixture
def dev_stack(tmp_path: Path) -> Iterator[tuple[ChildProcess, dict[str, Any], Path]]:
    data_dir, ready_file = tmp_path / "data", tmp_path / "ready.json"
    dev = start_dev(data_dir, ready_file, free_port())
    try:
        yield dev, json.loads(ready_file.read_text()), tmp_path
    finally:
        dev.stop()


def admin(ready: dict[str, Any], *args: str) -> subprocess.CompletedProcess[str]:
    command = imagegen_command(
        "admin", "--billing", ready["billing_address"], "--admin-token", ready["admin_token"], *args
    )
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_the_ready_file_describes_a_working_stack(
    dev_stack: tuple[ChildProcess, dict[str, Any], Path],
) -> None:
    _, ready, _ = dev_stack
    assert {"billing_address", "admin_token", "token", "mcp_url", "rest_url"} <= set(ready)
    assert ready["mcp_url"].endswith("/api/mcp")
    assert ready["rest_url"].endswith("/api")
    assert grpc_serving(ready["billing_address"])()

    with grpc.insecure_channel(ready["billing_address"]) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        [reply] = reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        services = {service.name for service in reply.list_services_response.service}
        assert "imagegen.billing.v1.BillingService" in services
        assert "imagegen.admin.v1.AdminService" in services

    headers = {"Authorization": f"Bearer {ready['token']}", "Content-Type": "application/json"}
    tools = httpx.post(ready["mcp_url"], headers=headers, json=TOOLS_LIST).json()["result"]["tools"]
    assert {tool["name"] for tool in tools} == {"generate_image", "list_models"}


def test_the_admin_cli_creates_an_account_whose_token_works(
    dev_stack: tuple[ChildProcess, dict[str, Any], Path],
) -> None:
    _, ready, _ = dev_stack
    created = admin(ready, "--json", "account", "create", "a@example.test", "--credits", "50")
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    assert {"account_id", "email", "credits", "token"} <= set(account)
    assert (account["email"], account["credits"]) == ("a@example.test", 50)
    with grpc.insecure_channel(ready["billing_address"]) as channel:
        state = json.loads((Path(ready["data_dir"]) / "dev-state.json").read_text())
        who = billing_service_pb2_grpc.BillingServiceStub(channel).Authenticate(
            billing_service_pb2.AuthenticateRequest(token=account["token"]),
            metadata=caller_metadata(Caller.GATEWAY, state["billing_secrets"]["gateway"]),
        )
    assert who.account.id == account["account_id"]
    shown = admin(ready, "--json", "account", "show", "a@example.test")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["credits"] == 50
    missing = admin(ready, "account", "show", "nobody@example.test")
    assert missing.returncode != 0
    assert "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_sigterm_stops_every_process_and_a_restart_keeps_the_demo_account(tmp_path: Path) -> None:
    data_dir, ready_file = tmp_path / "data", tmp_path / "ready.json"
    dev = start_dev(data_dir, ready_file, free_port())
    first = json.loads(ready_file.read_text())
    children = subprocess.run(
        ["pgrep", "-P", str(dev.pid)], capture_output=True, text=True, check=False
    ).stdout.split()
    assert len(children) == 4  # nats, billing, generator, gateway
    dev.send_signal(signal.SIGTERM)
    assert dev.wait(timeout=60) == 0
    assert not ready_file.exists()
    eventually_blocking(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in children),
        timeout=10,
        what="the children to exit",
    )

    again = start_dev(data_dir, ready_file, free_port())
    try:
        second = json.loads(ready_file.read_text())
        assert (second["token"], second["admin_token"]) == (first["token"], first["admin_token"])
        headers = {"Authorization": f"Bearer {second['token']}", "Content-Type": "application/json"}
        assert httpx.post(second["mcp_url"], headers=headers, json=TOOLS_LIST).status_code == 200
    finally:
        assert again.stop(timeout=60) == 0


def test_dev_runs_from_the_installed_entry_point() -> None:
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "imagegen"), "dev", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "--ready-file" in completed.stdout


def test_the_data_directory_and_its_secrets_are_the_owners_only(
    dev_stack: tuple[ChildProcess, dict[str, Any], Path],
) -> None:
    _, ready, _ = dev_stack
    data = Path(ready["data_dir"])
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for name in ("dev-state.json", "billing.db", "nats/nats-server.conf"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o600, name
    for name in ("nats", "nats/jetstream"):
        assert stat.S_IMODE((data / name).stat().st_mode) == 0o700, name
    state = json.loads((data / "dev-state.json").read_text())
    assert set(state["nats_passwords"]) == {"gateway", "generator", "billing"}
    assert set(state["billing_secrets"]) == {"gateway", "webhooks"}


def test_the_embedded_nats_admits_only_the_services_users(
    dev_stack: tuple[ChildProcess, dict[str, Any], Path],
) -> None:
    _, ready, _ = dev_stack
    passwords = json.loads((Path(ready["data_dir"]) / "dev-state.json").read_text())["nats_passwords"]

    async def try_connect(user: str | None = None, password: str | None = None) -> bool:
        client = nats.aio.client.Client()
        try:
            await client.connect(
                ready["nats_url"],
                user=user,
                password=password,
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
        except Exception:
            return False
        finally:
            await client.close()  # also after a refusal: nats-py leaves the socket open otherwise
        return True

    assert not asyncio.run(try_connect())
    assert not asyncio.run(try_connect(user="gateway", password="guessed-password-0123456789"))
    assert asyncio.run(try_connect(user="generator", password=passwords["generator"]))
