"""`imagegen admin`: accounts, tokens and credits, through billing's AdminService.

Every failure is one line on stderr and a non-zero exit (1 for an error from or reaching billing, 2 for
a missing admin token), never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Annotated, Any, NoReturn, TypeVar, cast

import grpc
import typer
from google.protobuf import json_format
from google.protobuf.descriptor import EnumDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from imagegen.admin.v1 import admin_service_pb2 as pb
from imagegen.admin.v1 import admin_service_pb2_grpc
from imagegen.billing.v1 import resources_pb2
from imagegen_common import rpc_errors

app = typer.Typer(help="Administer accounts, tokens and credits.", no_args_is_help=True)
account_app = typer.Typer(help="Create, show and list accounts.", no_args_is_help=True)
token_app = typer.Typer(help="Issue, list and revoke API tokens.", no_args_is_help=True)
credits_app = typer.Typer(help="Grant or remove credits.", no_args_is_help=True)
webhook_app = typer.Typer(
    help="An account's default webhook URL and its signing secret (Standard Webhooks).", no_args_is_help=True
)
app.add_typer(account_app, name="account")
app.add_typer(token_app, name="token")
app.add_typer(credits_app, name="credits")
app.add_typer(webhook_app, name="webhook")

Reply = TypeVar("Reply", bound=Message)
Stub = admin_service_pb2_grpc.AdminServiceStub
_KIND = resources_pb2.LedgerEntry.Kind.DESCRIPTOR


@dataclass(frozen=True, slots=True)
class Admin:
    """Where billing is, how to authenticate, and how to print."""

    address: str
    token: str
    as_json: bool
    timeout: float

    def call(self, rpc: Callable[[Stub], Callable[..., Reply]], request: Message) -> Reply:
        """One AdminService call, ``rpc`` picking the method of the stub (``lambda s: s.GetAccount``);
        exits with one line on stderr when it fails."""
        if not self.token:
            fail("no admin token: pass --admin-token or set IMAGEGEN_ADMIN_TOKEN", code=2)
        with grpc.insecure_channel(self.address) as channel:
            method = rpc(admin_service_pb2_grpc.AdminServiceStub(channel))
            try:
                return method(
                    request, metadata=[("authorization", f"Bearer {self.token}")], timeout=self.timeout
                )
            except grpc.RpcError as error:
                fail(self._explain(rpc_errors.from_error(error)))

    def _explain(self, error: rpc_errors.RpcError) -> str:
        details = error.message or error.code.name.lower()
        if error.code is grpc.StatusCode.UNAVAILABLE:
            return f"billing at {self.address} is unreachable ({details})"
        if error.code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"billing at {self.address} did not answer within {self.timeout:g}s"
        if error.code is grpc.StatusCode.UNAUTHENTICATED:
            return "billing refused the admin token (check --admin-token or IMAGEGEN_ADMIN_TOKEN)"
        return details

    def show(self, data: Any, lines: Callable[[], Iterator[str]]) -> None:
        """Prints ``data`` as JSON with --json, otherwise the lines for people."""
        if self.as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            for line in lines():
                typer.echo(line)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _admin(ctx: typer.Context) -> Admin:
    admin = ctx.find_object(Admin)
    assert admin is not None, "the admin callback sets it"
    return admin


@app.callback()
def main(
    ctx: typer.Context,
    billing: Annotated[
        str, typer.Option("--billing", envvar="IMAGEGEN_BILLING_ADDRESS", help="Billing's gRPC address.")
    ] = "127.0.0.1:50051",
    admin_token: Annotated[
        str,
        typer.Option(
            "--admin-token",
            envvar="IMAGEGEN_ADMIN_TOKEN",
            help="The admin token of billing.",
            show_default=False,
        ),
    ] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for billing.")] = 10.0,
) -> None:
    """Administer accounts, tokens and credits."""
    ctx.obj = Admin(address=billing, token=admin_token, as_json=as_json, timeout=timeout)


@account_app.command("create")
def account_create(
    ctx: typer.Context,
    email: str,
    credits: Annotated[int, typer.Option(help="Credits to start with.", min=0)] = 0,
    label: Annotated[str, typer.Option(help="Label of the first token.")] = "default",
) -> None:
    """Create an account and its first API token (the secret is shown once)."""
    admin = _admin(ctx)
    reply: pb.CreateAccountResponse = admin.call(
        lambda s: s.CreateAccount, pb.CreateAccountRequest(email=email, credits=credits, token_label=label)
    )
    data = {**_account(reply.account), **_prefixed_token(reply.token), "token": reply.token_secret}

    def lines() -> Iterator[str]:
        yield from _account_lines(reply.account)
        yield f"token     {reply.token.id}  {reply.token.label}"
        yield f"secret    {reply.token_secret}"
        yield "(the secret is shown only now: store it)"

    admin.show(data, lines)


@account_app.command("show")
def account_show(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id or email.")]
) -> None:
    """An account: balance and tokens."""
    admin = _admin(ctx)
    reply: pb.GetAccountResponse = admin.call(lambda s: s.GetAccount, pb.GetAccountRequest(account=account))
    data = {**_account(reply.account), "tokens": [_token(t) for t in reply.tokens]}

    def lines() -> Iterator[str]:
        yield from _account_lines(reply.account)
        yield from _token_lines(reply.tokens)

    admin.show(data, lines)


@account_app.command("list")
def account_list(ctx: typer.Context) -> None:
    """Every account, by email."""
    admin = _admin(ctx)
    accounts: list[resources_pb2.Account] = []
    page_token = ""
    while True:
        reply: pb.ListAccountsResponse = admin.call(
            lambda s: s.ListAccounts, pb.ListAccountsRequest(page_size=500, page_token=page_token)
        )
        accounts.extend(reply.accounts)
        page_token = reply.next_page_token
        if not page_token:
            break

    def lines() -> Iterator[str]:
        for a in accounts:
            yield f"{a.id}  {a.email}  credits {a.credits}  reserved {a.reserved_credits}"

    admin.show([_account(a) for a in accounts], lines)


@token_app.command("issue")
def token_issue(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id or email.")],
    label: Annotated[str, typer.Option(help="What the token is for.")] = "default",
) -> None:
    """Issue a new API token (the secret is shown once)."""
    admin = _admin(ctx)
    reply: pb.IssueTokenResponse = admin.call(
        lambda s: s.IssueToken, pb.IssueTokenRequest(account=account, label=label)
    )

    def lines() -> Iterator[str]:
        yield f"token     {reply.token.id}  {reply.token.label}"
        yield f"secret    {reply.token_secret}"
        yield "(the secret is shown only now: store it)"

    admin.show({**_token(reply.token), "token": reply.token_secret}, lines)


@token_app.command("list")
def token_list(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id or email.")]
) -> None:
    """The tokens of an account (prefixes only; secrets are never stored)."""
    admin = _admin(ctx)
    reply: pb.ListTokensResponse = admin.call(lambda s: s.ListTokens, pb.ListTokensRequest(account=account))
    admin.show([_token(t) for t in reply.tokens], lambda: _token_lines(reply.tokens))


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context, token_id: Annotated[str, typer.Argument(help="Token id (tok_…).")]
) -> None:
    """Revoke a token; it stops working at once."""
    admin = _admin(ctx)
    reply: pb.RevokeTokenResponse = admin.call(
        lambda s: s.RevokeToken, pb.RevokeTokenRequest(token_id=token_id)
    )
    admin.show(_token(reply.token), lambda: iter([f"revoked {reply.token.id} ({reply.token.prefix}…)"]))


@credits_app.command("grant", context_settings={"ignore_unknown_options": True})
def credits_grant(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id or email.")],
    amount: Annotated[int, typer.Argument(help="Credits to add; negative to remove (never below zero).")],
    note: Annotated[str, typer.Option(help="Why, for the ledger.")] = "",
) -> None:
    """Add credits to an account, or remove them with a negative amount."""
    admin = _admin(ctx)
    reply: pb.GrantCreditsResponse = admin.call(
        lambda s: s.GrantCredits, pb.GrantCreditsRequest(account=account, amount=amount, note=note)
    )
    data = {**_account(reply.account), "entry": _entry(reply.entry)}
    admin.show(
        data,
        lambda: iter([f"{reply.entry.amount:+d} credits: {reply.account.email} has {reply.account.credits}"]),
    )


@app.command("ledger")
def ledger(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id or email.")],
    limit: Annotated[int, typer.Option(help="Newest entries to show.", min=1, max=1000)] = 20,
) -> None:
    """An account's ledger, newest first."""
    admin = _admin(ctx)
    reply: pb.ListLedgerEntriesResponse = admin.call(
        lambda s: s.ListLedgerEntries, pb.ListLedgerEntriesRequest(account=account, page_size=limit)
    )

    def lines() -> Iterator[str]:
        for e in reply.entries:
            yield (
                f"{e.id:>8}  {_time(e.create_time)}  {_enum_label(_KIND, e.kind):<8} {e.amount:>+8d}  "
                f"balance {e.balance_after:<8d} {e.job_id}  {e.note}".rstrip()
            )

    admin.show([_entry(e) for e in reply.entries], lines)


@webhook_app.command("set")
def webhook_set(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Account id or email.")],
    url: Annotated[str, typer.Argument(help="http(s) URL that receives the outcomes of REST jobs.")],
) -> None:
    """Set the account's default webhook URL (used by REST requests that name none). The first time,
    it makes the signing secret and prints it once."""
    admin = _admin(ctx)
    reply: pb.SetWebhookResponse = admin.call(
        lambda s: s.SetWebhook, pb.SetWebhookRequest(account=account, url=url)
    )

    def lines() -> Iterator[str]:
        yield from _webhook_lines(reply.settings)
        yield from _secret_lines(reply.signing_secret)

    admin.show({**_webhook(reply.settings), "signing_secret": reply.signing_secret or None}, lines)


@webhook_app.command("show")
def webhook_show(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id or email.")]
) -> None:
    """The account's default webhook URL and whether it has a signing secret (never the secret)."""
    admin = _admin(ctx)
    reply: pb.GetWebhookResponse = admin.call(lambda s: s.GetWebhook, pb.GetWebhookRequest(account=account))
    admin.show(_webhook(reply.settings), lambda: _webhook_lines(reply.settings))


@webhook_app.command("clear")
def webhook_clear(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id or email.")]
) -> None:
    """Remove the default webhook URL (the secret stays, for webhooks that requests name)."""
    admin = _admin(ctx)
    reply: pb.ClearWebhookResponse = admin.call(
        lambda s: s.ClearWebhook, pb.ClearWebhookRequest(account=account)
    )
    admin.show(_webhook(reply.settings), lambda: _webhook_lines(reply.settings))


@webhook_app.command("rotate-secret")
def webhook_rotate_secret(
    ctx: typer.Context, account: Annotated[str, typer.Argument(help="Account id or email.")]
) -> None:
    """Make a new signing secret and print it once; the old one stops signing at once."""
    admin = _admin(ctx)
    reply: pb.RotateWebhookSecretResponse = admin.call(
        lambda s: s.RotateWebhookSecret, pb.RotateWebhookSecretRequest(account=account)
    )

    def lines() -> Iterator[str]:
        yield from _webhook_lines(reply.settings)
        yield from _secret_lines(reply.signing_secret)

    admin.show({**_webhook(reply.settings), "signing_secret": reply.signing_secret}, lines)


def _webhook(w: resources_pb2.WebhookSettings) -> dict[str, Any]:
    data = _record(w)
    return {**data, "url": data["url"] or None}


def _webhook_lines(w: resources_pb2.WebhookSettings) -> Iterator[str]:
    yield f"account   {w.account_id}"
    yield f"webhook   {w.url or '(none)'}"
    yield f"secret    {'set' if w.has_secret else 'none (webhooks are refused until one is made)'}"


def _secret_lines(secret: str) -> Iterator[str]:
    if secret:
        yield f"signing secret  {secret}"
        yield "(the secret is shown only now: store it, and verify the webhook-signature header with it)"
    else:
        yield "(the signing secret is unchanged; `webhook rotate-secret` makes a new one)"


def _time(stamp: Timestamp) -> str | None:
    if not stamp.seconds and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def _record(message: Message, renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """A message as the --json output shows it: every field by its proto name, int64 as numbers,
    times as ISO 8601 to the second (null when unset), enums as lower-case names without prefix."""
    data = json_format.MessageToDict(
        message,
        always_print_fields_with_no_presence=True,
        preserving_proto_field_name=True,
        unquote_int64_if_possible=True,
    )
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if isinstance(value, Timestamp):
            data[field.name] = _time(value) if message.HasField(field.name) else None
        elif field.enum_type is not None:
            # The stubs type enum_type as the pure-Python or the upb descriptor; both have the same API.
            data[field.name] = _enum_label(cast(EnumDescriptor, field.enum_type), value)
    renames = renames or {}
    return {renames.get(key, key): value for key, value in data.items()}


def _enum_label(enum: EnumDescriptor, number: int) -> str:
    """``KIND_GRANT`` → ``grant`` (``unspecified`` for a number newer than this build)."""
    value = enum.values_by_number.get(number)
    if value is None:
        return "unspecified"
    prefix = enum.values[0].name.removesuffix("UNSPECIFIED")
    return value.name.removeprefix(prefix).lower()


def _account(a: resources_pb2.Account) -> dict[str, Any]:
    return _record(a, {"id": "account_id"})


def _token(t: resources_pb2.ApiToken) -> dict[str, Any]:
    return _record(t, {"id": "token_id"})


def _prefixed_token(t: resources_pb2.ApiToken) -> dict[str, Any]:
    return {"token_id": t.id, "token_label": t.label, "token_prefix": t.prefix}


def _entry(e: resources_pb2.LedgerEntry) -> dict[str, Any]:
    return _record(e)


def _account_lines(a: resources_pb2.Account) -> Iterator[str]:
    yield f"account   {a.id}"
    yield f"email     {a.email}"
    yield f"credits   {a.credits} (reserved {a.reserved_credits})"


def _token_lines(tokens: Any) -> Iterator[str]:
    for t in tokens:
        state = "revoked" if t.HasField("revoke_time") else "active"
        used = _time(t.last_used_time) or "never used"
        yield f"token     {t.id}  {t.prefix}…  {t.label}  {state}  {used}"


# The portal's commands (account login-link, account set-role) and OAuth's (oauth-client create, issue 12)
# live in their own modules.
from imagegen_billing import (  # noqa: E402
    oauth_admin_cli,  # noqa: F401
    portal_admin_cli,  # noqa: F401
)
