"""`imagegen admin account login-link` and `account set-role`: the portal's operator commands, through
billing's PortalService (with the same admin token as the rest of `imagegen admin`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import urlencode

import grpc
import typer
from google.protobuf.message import Message

from imagegen.portal.v1 import portal_service_pb2 as pb
from imagegen.portal.v1 import portal_service_pb2_grpc
from imagegen_billing.admin_cli import Admin, _account, _admin, _time, account_app, fail

#: Where a sign-in link lands on the gateway (the portal's route; see imagegen_gateway.portal).
LINK_PATH = "/signin/link"
_ROLES = {"user": pb.ROLE_USER, "admin": pb.ROLE_ADMIN}


def _call(admin: Admin, method: str, request: Message) -> Any:
    if not admin.token:
        fail("no admin token: pass --admin-token or set IMAGEGEN_ADMIN_TOKEN", code=2)
    with grpc.insecure_channel(admin.address) as channel:
        stub = portal_service_pb2_grpc.PortalServiceStub(channel)
        try:
            return getattr(stub, method)(
                request, metadata=[("authorization", f"Bearer {admin.token}")], timeout=admin.timeout
            )
        except grpc.RpcError as error:
            fail(_explain(admin, error))


def _explain(admin: Admin, error: grpc.RpcError) -> str:
    """One line about a failed call, like the rest of `imagegen admin`."""
    code: grpc.StatusCode = error.code()
    details: str = error.details() or code.name.lower()
    if code is grpc.StatusCode.UNAVAILABLE:
        return f"billing at {admin.address} is unreachable ({details})"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"billing at {admin.address} did not answer within {admin.timeout:g}s"
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return "billing refused the admin token (check --admin-token or IMAGEGEN_ADMIN_TOKEN)"
    return details


def login_url(public_url: str, link_token: str) -> str:
    """The URL of a one-time sign-in link on the portal at ``public_url``."""
    return f"{public_url.rstrip('/')}{LINK_PATH}?{urlencode({'token': link_token})}"


@account_app.command("login-link")
def account_login_link(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id or email.")],
    public_url: Annotated[
        str,
        typer.Option("--public-url", envvar="IMAGEGEN_PUBLIC_BASE_URL", help="The portal's public base URL."),
    ] = "http://127.0.0.1:8000",
    next_path: Annotated[str, typer.Option("--next", help="Portal path to open after signing in.")] = "",
) -> None:
    """Print a one-time sign-in URL for an account (valid 15 minutes, single use)."""
    admin = _admin(ctx)
    reply: pb.CreateLoginLinkResponse = _call(
        admin, "CreateLoginLink", pb.CreateLoginLinkRequest(account=account, next_path=next_path)
    )
    url = login_url(public_url, reply.link_token)
    expires = _time(reply.expire_time)

    def lines() -> Iterator[str]:
        yield f"{url}"
        yield f"(for {reply.account.account.email}; single use, expires {expires})"

    admin.show({"url": url, "expires_at": expires, **_account(reply.account.account)}, lines)


@account_app.command("set-role")
def account_set_role(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id or email.")],
    role: Annotated[str, typer.Argument(help="`admin` (sees the portal's Admin page) or `user`.")],
) -> None:
    """Set an account's role in the portal."""
    admin = _admin(ctx)
    if role not in _ROLES:
        fail(f"role must be one of {', '.join(_ROLES)}, not {role!r}", code=2)
    reply: pb.SetAccountRoleResponse = _call(
        admin, "SetAccountRole", pb.SetAccountRoleRequest(account=account, role=_ROLES[role])
    )
    data = {**_account(reply.account.account), "role": role, "disabled": reply.account.disabled}

    def lines() -> Iterator[str]:
        yield f"{reply.account.account.email} is now {role}"

    admin.show(data, lines)
