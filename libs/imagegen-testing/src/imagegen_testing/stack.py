"""The whole imagegen stack as real processes for end-to-end tests: NATS, billing, generators and
the gateway, started with the same code as ``imagegen dev``, each process logging to a file.

Like every shipped deployment, NATS runs with authorization (a user per service, ``nats_auth.ROLES``)
and billing checks its callers' service credentials: every end-to-end test proves that each service's
permissions suffice for its work."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen.billing.v1 import resources_pb2
from imagegen_cli.dev import ServiceSecrets, Stack, port_or_free
from imagegen_common.nats_auth import Role
from imagegen_common.service_auth import Caller, caller_metadata
from imagegen_testing.nats_server import NatsServer
from imagegen_testing.polling import eventually_blocking


@dataclass(frozen=True)
class Account:
    account_id: str
    email: str
    token: str


@dataclass
class RunningStack:
    stack: Stack
    generator_env: dict[str, str]
    nats: NatsServer
    gateway_url: str
    billing_address: str
    admin_token: str
    log_dir: Path
    generators: list[str] = field(default_factory=list)

    @property
    def mcp_url(self) -> str:
        return f"{self.gateway_url}/api/mcp"

    @property
    def rest_url(self) -> str:
        return f"{self.gateway_url}/api"

    @property
    def nats_url(self) -> str:
        return self.nats.url

    @property
    def secrets(self) -> ServiceSecrets:
        return self.stack.secrets

    def nats_credentials(self, role: Role) -> dict[str, str]:
        """``user=``/``password=`` for ``nats.connect``: a test looks at NATS as that service."""
        return self.nats.credentials(role)

    def billing_metadata(self, caller: Caller = Caller.GATEWAY) -> tuple[tuple[str, str], ...]:
        """Metadata of a BillingService call made as one of billing's callers."""
        return caller_metadata(caller, self.secrets.billing[caller])

    def _admin(self, channel: grpc.Channel) -> admin_service_pb2_grpc.AdminServiceStub:
        return admin_service_pb2_grpc.AdminServiceStub(channel)

    @property
    def _auth(self) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {self.admin_token}"),)

    def create_account(self, credits: int, email: str | None = None) -> Account:
        """A new account of its own for a test, with ``credits`` and one token."""
        email = email or f"{secrets.token_hex(6)}@example.test"
        with grpc.insecure_channel(self.billing_address) as channel:
            reply = self._admin(channel).CreateAccount(
                admin_service_pb2.CreateAccountRequest(email=email, credits=credits),
                metadata=self._auth,
                timeout=10,
            )
        return Account(account_id=reply.account.id, email=email, token=reply.token_secret)

    def account(self, account_id: str) -> admin_service_pb2.GetAccountResponse:
        with grpc.insecure_channel(self.billing_address) as channel:
            reply: admin_service_pb2.GetAccountResponse = self._admin(channel).GetAccount(
                admin_service_pb2.GetAccountRequest(account=account_id), metadata=self._auth, timeout=10
            )
        return reply

    def credits(self, account_id: str) -> int:
        return int(self.account(account_id).account.credits)

    def ledger(self, account_id: str) -> list[resources_pb2.LedgerEntry]:
        """The account's ledger, newest first."""
        with grpc.insecure_channel(self.billing_address) as channel:
            reply = self._admin(channel).ListLedgerEntries(
                admin_service_pb2.ListLedgerEntriesRequest(account=account_id, page_size=1000),
                metadata=self._auth,
                timeout=10,
            )
        return list(reply.entries)

    def wait_for(self, condition: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        """Polls until ``condition`` holds (never asserts on how long it took, only that it happened);
        the services' logs are in the failure."""
        eventually_blocking(condition, timeout=timeout, what=what, detail=self.logs)

    def logs(self) -> str:
        return "\n".join(
            f"==> {p.name}\n{p.read_text(errors='replace')[-6000:]}" for p in self.log_dir.glob("*.log")
        )

    def add_generator(self, name: str) -> None:
        """One more generator replica, configured like the first ones."""
        self.stack.start_generator(name, **self.generator_env)
        self.generators.append(name)

    def stop(self) -> None:
        """Stops every process; fails when NATS refused a service anything meanwhile (each service's
        permissions in ``nats_auth.ROLES`` must suffice for its work)."""
        self.stack.stop()
        violations = self.nats.permission_violations()
        self.nats.close()
        if violations:
            raise AssertionError("NATS refused a service:\n" + "\n".join(violations[:20]))


def start_stack(
    tmp_path: Path,
    generators: int = 1,
    env: dict[str, str] | None = None,
    gateway_env: dict[str, str] | None = None,
    generator_env: dict[str, str] | None = None,
) -> RunningStack:
    """Starts NATS, billing, ``generators`` generator replicas and the gateway; all ready on return."""
    data = tmp_path / "data"
    log_dir = tmp_path / "logs"
    data.mkdir(parents=True, exist_ok=True)
    service_secrets = ServiceSecrets.generate()
    nats = NatsServer(store_dir=data / "nats", passwords=service_secrets.nats).start()
    admin_token = "iga_" + secrets.token_urlsafe(32)
    gateway_port = port_or_free(0)
    gateway_url = f"http://127.0.0.1:{gateway_port}"
    stack = Stack(
        data,
        {
            "IMAGEGEN_DATA_DIR": str(data),
            "IMAGEGEN_LOG_FORMAT": "text",
            "IMAGEGEN_ADMIN_TOKEN": admin_token,
            "IMAGEGEN_NATS_URL": nats.url,
            "IMAGEGEN_PUBLIC_BASE_URL": gateway_url,
            **(env or {}),
        },
        log_dir=log_dir,
        preferred_ports=False,
        secrets=service_secrets,
        nats_auth=True,
    )
    try:
        billing_address = stack.start_billing()
        names = [f"generator-{i}" for i in range(generators)]
        for name in names:
            stack.start_generator(name, **(generator_env or {}))
        stack.start_gateway("127.0.0.1", gateway_port, **(gateway_env or {}))
    except BaseException:
        stack.stop()
        nats.close()
        raise
    return RunningStack(
        stack=stack,
        generator_env=generator_env or {},
        nats=nats,
        gateway_url=gateway_url,
        billing_address=billing_address,
        admin_token=admin_token,
        log_dir=log_dir,
        generators=names,
    )
