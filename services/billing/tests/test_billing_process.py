"""`imagegen billing` as a real process: health, reflection, the admin CLI, metrics, SIGTERM."""

from __future__ import annotations

import json
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from imagegen.billing.v1 import billing_service_pb2 as pb
from imagegen.billing.v1 import billing_service_pb2_grpc
from imagegen_cli.processes import imagegen_command
from imagegen_common.service_auth import Caller
from imagegen_testing.billing_callers import generate_secrets, metadata_for, secrets_env
from imagegen_testing.net import free_port
from imagegen_testing.processes import ServiceProcess, grpc_serving, http_ok

pytestmark = pytest.mark.slow  # starts service processes: `-m "not slow"` skips it

CALLER_SECRETS = generate_secrets()


@pytest.fixture
def admin_token() -> str:
    return secrets.token_urlsafe(32)


@pytest.fixture
def billing_process(tmp_path: Path, admin_token: str) -> Iterator[ServiceProcess]:
    address, ops = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    process = ServiceProcess(
        "billing",
        ["billing"],
        env={
            "IMAGEGEN_BILLING_LISTEN": address,
            "IMAGEGEN_BILLING_OPS_LISTEN": ops,
            "IMAGEGEN_DATA_DIR": str(tmp_path / "data"),
            "IMAGEGEN_DATABASE_URL": "",
            "IMAGEGEN_ADMIN_TOKEN": admin_token,
            "IMAGEGEN_BILLING_SETTLEMENT_ENABLED": "false",
            **secrets_env(CALLER_SECRETS),
        },
        log_dir=tmp_path,
    )
    process.start()
    try:
        process.wait_ready(grpc_serving(address))
        yield process
    finally:
        process.stop()


def _address(process: ServiceProcess) -> str:
    return process.env["IMAGEGEN_BILLING_LISTEN"]


def admin(process: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        imagegen_command("admin", "--billing", _address(process), *args),
        env={**process.env, "IMAGEGEN_LOG_FORMAT": "json"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_billing_process_serves_the_admin_cli_and_stops_on_sigterm(billing_process: ServiceProcess) -> None:
    address = _address(billing_process)
    with grpc.insecure_channel(address) as channel:
        replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
        )
        services = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"imagegen.billing.v1.BillingService", "imagegen.admin.v1.AdminService"} <= services

    created = admin(billing_process, "--json", "account", "create", "a@example.test", "--credits", "50")
    assert created.returncode == 0, created.stderr
    account = json.loads(created.stdout)
    with grpc.insecure_channel(address) as channel:
        reply = billing_service_pb2_grpc.BillingServiceStub(channel).Authenticate(
            pb.AuthenticateRequest(token=account["token"]),
            metadata=metadata_for("Authenticate", CALLER_SECRETS),
            timeout=10,
        )
    assert (reply.account.id, reply.account.email, reply.account.credits) == (
        account["account_id"],
        "a@example.test",
        50,
    )

    shown = admin(billing_process, "account", "show", "a@example.test")
    assert shown.returncode == 0, shown.stderr
    assert "credits   50 (reserved 0)" in shown.stdout

    ops = billing_process.env["IMAGEGEN_BILLING_OPS_LISTEN"]
    assert http_ok(f"http://{ops}/readyz")()
    with urllib.request.urlopen(f"http://{ops}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert (
        'imagegen_billing_rpc_requests_total{code="OK",method="Authenticate",'
        'service="imagegen.billing.v1.BillingService"} 1.0'
    ) in metrics
    assert "imagegen_billing_reservations_open" in metrics

    assert billing_process.stop() == 0
    logs = billing_process.logs()
    assert "billing stopped" in logs
    assert account["token"] not in logs


def test_billing_refuses_to_start_without_a_real_admin_token(tmp_path: Path) -> None:
    result = subprocess.run(
        imagegen_command("billing"),
        env={
            **ServiceProcess("billing", [], {}, tmp_path).env,
            "IMAGEGEN_ADMIN_TOKEN": "changeme",
            "IMAGEGEN_DATA_DIR": str(tmp_path / "data"),
            "IMAGEGEN_LOG_FORMAT": "json",
            **secrets_env(CALLER_SECRETS),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    assert json.loads(line)["message"].startswith("refusing to start: IMAGEGEN_ADMIN_TOKEN is a placeholder")
    assert not (tmp_path / "data").exists()


def test_billing_refuses_to_start_without_its_callers_secrets(tmp_path: Path) -> None:
    """Without them every BillingService call would be refused: better a clear exit at start-up."""
    result = subprocess.run(
        imagegen_command("billing"),
        env={
            **ServiceProcess("billing", [], {}, tmp_path).env,
            "IMAGEGEN_ADMIN_TOKEN": secrets.token_urlsafe(32),
            "IMAGEGEN_DATA_DIR": str(tmp_path / "data"),
            "IMAGEGEN_LOG_FORMAT": "json",
            "IMAGEGEN_BILLING_GATEWAY_SECRET": CALLER_SECRETS[Caller.GATEWAY],
            "IMAGEGEN_BILLING_WEBHOOKS_SECRET": "changethis",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()
    message = json.loads(line)["message"]
    assert message.startswith("refusing to start: IMAGEGEN_BILLING_WEBHOOKS_SECRET is not set or shorter")
    assert CALLER_SECRETS[Caller.GATEWAY] not in result.stderr
