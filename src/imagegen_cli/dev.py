"""`imagegen dev`: the whole stack on one machine, on embedded defaults.

It starts, as child processes: an embedded nats-server with JetStream and NATS authorization (unless
IMAGEGEN_NATS_URL is set), billing on SQLite in the data dir, one generator and the gateway. On first
start it creates an admin token, the services' secrets (a NATS password per service, a billing
secret per caller identity) and a demo account, kept in ``<data dir>/dev-state.json`` (0600, in a
0700 directory) so that later starts reuse them. Each child gets only its own credentials.
Once everything answers its readiness probe it prints how to connect and writes the ready file.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Annotated
from urllib.parse import urlencode

import grpc
import typer

from imagegen.admin.v1 import admin_service_pb2, admin_service_pb2_grpc
from imagegen.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from imagegen.portal.v1 import portal_service_pb2, portal_service_pb2_grpc
from imagegen_cli.nats_embedded import embedded_nats_command, private_dir, write_private
from imagegen_cli.processes import ChildProcess, ReadyCheck, grpc_serving, http_ok, imagegen_command
from imagegen_common.nats_auth import Role
from imagegen_common.service_auth import Caller, caller_metadata, new_secret, secret_variable

DEMO_EMAIL = "demo@imagegen.local"
DEMO_CREDITS = 1000
STATE_FILE = "dev-state.json"


def _nats_passwords() -> dict[str, str]:
    return {role.value: new_secret() for role in Role}


def _billing_secrets() -> dict[str, str]:
    return {caller.value: new_secret() for caller in Caller}


@dataclass(frozen=True)
class ServiceSecrets:
    """The services' credentials: a NATS password per user (``nats_auth.ROLES``) and a billing secret
    per caller identity (``service_auth.Caller``)."""

    nats: dict[Role, str]
    billing: dict[Caller, str]

    @classmethod
    def generate(cls) -> ServiceSecrets:
        return cls({role: new_secret() for role in Role}, {caller: new_secret() for caller in Caller})

    def nats_env(self, role: Role) -> dict[str, str]:
        """One service's NATS user and password, and nobody else's."""
        return {"IMAGEGEN_NATS_USER": role.value, "IMAGEGEN_NATS_PASSWORD": self.nats[role]}

    def billing_env(self) -> dict[str, str]:
        """The caller secrets, for billing (which checks them) and the gateway (which holds both)."""
        return {secret_variable(caller): secret for caller, secret in self.billing.items()}


@dataclass
class DevState:
    """What must survive a restart of the dev stack: its secrets and the demo account."""

    admin_token: str
    token: str = ""
    account_id: str = ""
    nats_passwords: dict[str, str] = field(default_factory=_nats_passwords)
    billing_secrets: dict[str, str] = field(default_factory=_billing_secrets)

    @classmethod
    def load_or_create(cls, path: Path) -> DevState:
        if path.exists():
            state = cls(**json.loads(path.read_text()))
            # a state file of an older version lacks some secrets: add them
            state.nats_passwords = {**_nats_passwords(), **state.nats_passwords}
            state.billing_secrets = {**_billing_secrets(), **state.billing_secrets}
            return state
        return cls(admin_token="iga_" + secrets.token_urlsafe(32))

    def save(self, path: Path) -> None:
        write_private(path, json.dumps(asdict(self), indent=2))

    @property
    def service_secrets(self) -> ServiceSecrets:
        return ServiceSecrets(
            {role: self.nats_passwords[role.value] for role in Role},
            {caller: self.billing_secrets[caller.value] for caller in Caller},
        )


def port_or_free(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` when it is free, otherwise any free port."""
    for candidate in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise RuntimeError("no free port")


class Stack:
    """The child processes of a stack, each started once ready, stopped in reverse order.

    ``imagegen dev`` runs one with the children's output on its own; the end-to-end tests run
    others with each child's output in ``log_dir``.
    """

    def __init__(
        self,
        data: Path,
        env: dict[str, str],
        log_dir: Path | None = None,
        preferred_ports: bool = True,
        *,
        secrets: ServiceSecrets | None = None,
        nats_auth: bool = False,
    ) -> None:
        self.data = data
        self.env = env
        #: The services' credentials; each child is given its own.
        self.secrets = secrets or ServiceSecrets.generate()
        #: Whether the NATS server checks users (the embedded one does; a given IMAGEGEN_NATS_URL may not).
        self.nats_auth = nats_auth
        self.log_dir = log_dir
        self.preferred_ports = preferred_ports
        self.children: list[ChildProcess] = []
        self.stopping = False

    def _nats_env(self, role: Role) -> dict[str, str]:
        return self.secrets.nats_env(role) if self.nats_auth else {}

    def start(self, name: str, command: list[str], ready: ReadyCheck, **env: str) -> ChildProcess:
        log_path = self.log_dir / f"{name}.log" if self.log_dir else None
        child = ChildProcess(name, command, {**self.env, **env}, log_path=log_path).start()
        self.children.append(child)
        child.wait_ready(ready, timeout=60)
        return child

    def port(self, preferred: int) -> int:
        """The well-known port when free (a developer's stack), any free one otherwise (tests)."""
        return port_or_free(preferred if self.preferred_ports else 0)

    def child(self, name: str) -> ChildProcess:
        return next(c for c in self.children if c.name == name)

    def start_nats(self) -> str:
        nats_url = os.environ.get("IMAGEGEN_NATS_URL")
        if not nats_url:
            port = self.port(4222)
            nats_url = f"nats://127.0.0.1:{port}"
            command = embedded_nats_command(port, self.data / "nats", self.secrets.nats)
            self.start("nats", command, tcp_open(port))
            self.nats_auth = True
        self.env["IMAGEGEN_NATS_URL"] = nats_url
        return nats_url

    def start_billing(self) -> str:
        address = f"127.0.0.1:{self.port(50051)}"
        self.env["IMAGEGEN_BILLING_ADDRESS"] = address
        ops = f"127.0.0.1:{self.port(9101)}"
        self.start(
            "billing",
            imagegen_command("billing"),
            grpc_serving(address),
            IMAGEGEN_BILLING_LISTEN=address,
            IMAGEGEN_BILLING_OPS_LISTEN=ops,
            **self._nats_env(Role.BILLING),
            **self.secrets.billing_env(),
        )
        return address

    def start_generator(self, name: str = "generator", **env: str) -> ChildProcess:
        ops = f"127.0.0.1:{self.port(9102)}"
        ready = http_ok(f"http://{ops}/readyz")
        env = {**self._nats_env(Role.GENERATOR), **env}
        return self.start(
            name, imagegen_command("generator"), ready, IMAGEGEN_GENERATOR_OPS_LISTEN=ops, **env
        )

    def start_gateway(self, host: str, port: int, name: str = "gateway", **env: str) -> ChildProcess:
        """A gateway replica (``name`` tells a second one apart) with the gateway's credentials."""
        ready = http_ok(f"http://127.0.0.1:{port}/readyz")
        listen = f"{host}:{port}"
        env = {**self._nats_env(Role.GATEWAY), **self.secrets.billing_env(), **env}
        return self.start(name, imagegen_command("gateway"), ready, IMAGEGEN_GATEWAY_LISTEN=listen, **env)

    def dead_child(self) -> ChildProcess | None:
        return next((c for c in self.children if not c.alive()), None)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop(timeout=30)


def ensure_demo_account(state: DevState, billing_address: str) -> None:
    """Creates the demo account on first start; on later ones checks that its token still works."""
    admin_auth = (("authorization", f"Bearer {state.admin_token}"),)
    as_gateway = caller_metadata(Caller.GATEWAY, state.billing_secrets[Caller.GATEWAY.value])
    with grpc.insecure_channel(billing_address) as channel:
        if state.token:
            try:
                billing_service_pb2_grpc.BillingServiceStub(channel).Authenticate(
                    billing_service_pb2.AuthenticateRequest(token=state.token),
                    metadata=as_gateway,
                    timeout=10,
                )
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                    raise
        admin = admin_service_pb2_grpc.AdminServiceStub(channel)
        try:
            created = admin.CreateAccount(
                admin_service_pb2.CreateAccountRequest(
                    email=DEMO_EMAIL, credits=DEMO_CREDITS, token_label="dev"
                ),
                metadata=admin_auth,
                timeout=10,
            )
            state.account_id, state.token = created.account.id, created.token_secret
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            issued = admin.IssueToken(
                admin_service_pb2.IssueTokenRequest(account=DEMO_EMAIL, label="dev"),
                metadata=admin_auth,
                timeout=10,
            )
            state.account_id, state.token = issued.token.account_id, issued.token_secret


def demo_login_url(state: DevState, billing_address: str, public_url: str) -> str:
    """A fresh one-time sign-in link (15 minutes) of the demo account, for the portal."""
    with grpc.insecure_channel(billing_address) as channel:
        reply = portal_service_pb2_grpc.PortalServiceStub(channel).CreateLoginLink(
            portal_service_pb2.CreateLoginLinkRequest(account=DEMO_EMAIL),
            metadata=(("authorization", f"Bearer {state.admin_token}"),),
            timeout=10,
        )
    return f"{public_url}/signin/link?{urlencode({'token': reply.link_token})}"


def banner(ready: dict[str, str]) -> str:
    mcp_config = {
        "mcpServers": {
            "imagegen": {
                "type": "http",
                "url": ready["mcp_url"],
                "headers": {"Authorization": f"Bearer {ready['token']}"},
            }
        }
    }
    return f"""
imagegen is running.

  Portal         {ready["portal_url"]}
  Sign in        {ready["login_url"]}
                 (the demo account {DEMO_EMAIL}; one use, 15 minutes; later links for any account are
                 logged here when you ask for them on the portal, or: imagegen admin account login-link)
  MCP endpoint   {ready["mcp_url"]}
  REST API       {ready["rest_url"]}
  Demo token     {ready["token"]}   ({DEMO_CREDITS} credits on first start)
  Admin token    {ready["admin_token"]}
  Billing gRPC   {ready["billing_address"]}

Try it:
  curl -X POST {ready["mcp_url"]} \\
    -H "Authorization: Bearer {ready["token"]}" \\
    -H "Content-Type: application/json" \\
    -d '{{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {{}}}}'

  curl -X POST {ready["rest_url"]}/images/generate \\
    -H "Authorization: Bearer {ready["token"]}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "flux-1", "prompt": "a lighthouse at dusk", "width": 1024, "height": 1024}}'

  claude mcp add --transport http imagegen {ready["mcp_url"]} \\
    --header "Authorization: Bearer {ready["token"]}"

.mcp.json:
{json.dumps(mcp_config, indent=2)}

Administer:
  imagegen admin --billing {ready["billing_address"]} --admin-token {ready["admin_token"]} account list
Stop with Ctrl-C.
"""


def dev(
    port: Annotated[int, typer.Option(help="Port of the gateway (MCP and REST).")] = 8000,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where SQLite, NATS data and the dev state live [IMAGEGEN_DATA_DIR].")
    ] = None,
    ready_file: Annotated[
        Path | None,
        typer.Option(help="Write one JSON object with the stack's addresses and tokens once ready."),
    ] = None,
    host: Annotated[str, typer.Option(help="Interface the gateway listens on.")] = "127.0.0.1",
    any_ports: Annotated[
        bool,
        typer.Option(
            "--any-ports",
            help="Give billing, the generator and NATS any free ports rather than the well-known ones "
            "(50051, 9101, 9102, 4222), so that several stacks can run on one machine.",
        ),
    ] = False,
) -> None:
    """Start the whole stack (NATS, billing, generator, gateway) with embedded defaults."""
    data = (data_dir or Path(os.environ.get("IMAGEGEN_DATA_DIR", ".imagegen"))).resolve()
    # The data dir holds webhook secrets (billing.db) and every service's credentials: owner only,
    # and so is whatever the children create in it.
    os.umask(0o077)
    private_dir(data)
    state_path = data / STATE_FILE
    state = DevState.load_or_create(state_path)
    state.save(state_path)
    public_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    stack = Stack(
        data,
        {
            "IMAGEGEN_DATA_DIR": str(data),
            "IMAGEGEN_LOG_FORMAT": os.environ.get("IMAGEGEN_LOG_FORMAT", "text"),
            "IMAGEGEN_ADMIN_TOKEN": state.admin_token,
            "IMAGEGEN_PUBLIC_BASE_URL": os.environ.get("IMAGEGEN_PUBLIC_BASE_URL", public_url),
            # Without SMTP, the portal's sign-in links are logged on this console.
            "IMAGEGEN_SIGNIN_LINKS_ON_CONSOLE": os.environ.get("IMAGEGEN_SIGNIN_LINKS_ON_CONSOLE", "true"),
        },
        secrets=state.service_secrets,
        preferred_ports=not any_ports,
    )

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stack.stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        nats_url = stack.start_nats()
        billing_address = stack.start_billing()
        ensure_demo_account(state, billing_address)
        state.save(state_path)
        stack.start_generator()
        stack.start_gateway(host, port)
        portal_url = stack.env["IMAGEGEN_PUBLIC_BASE_URL"].rstrip("/")
        ready = {
            "portal_url": f"{portal_url}/",
            "login_url": demo_login_url(state, billing_address, portal_url),
            "mcp_url": f"{public_url}/api/mcp",
            "rest_url": f"{public_url}/api",
            "billing_address": billing_address,
            "nats_url": nats_url,
            "admin_token": state.admin_token,
            "token": state.token,
            "account_id": state.account_id,
            "data_dir": str(data),
        }
        typer.echo(banner(ready))
        if ready_file:
            tmp = ready_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(ready, indent=2))
            tmp.replace(ready_file)  # readers never see half a file
        while not stack.stopping:
            dead = stack.dead_child()
            if dead is not None:
                typer.echo(f"imagegen dev: {dead.name} exited (code {dead.returncode()}); stopping", err=True)
                raise typer.Exit(1)
            time.sleep(0.2)
    except (RuntimeError, TimeoutError, grpc.RpcError) as exc:
        typer.echo(f"imagegen dev: {exc}", err=True)
        raise typer.Exit(1) from exc
    finally:
        stack.stop()
        if ready_file:
            ready_file.unlink(missing_ok=True)


def tcp_open(port: int) -> ReadyCheck:
    """Ready when something accepts connections on the loopback ``port``."""

    def check() -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex(("127.0.0.1", port)) == 0

    return check
