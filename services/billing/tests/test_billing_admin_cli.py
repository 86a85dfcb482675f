"""`imagegen admin` against a real billing server: every sub-command, and one-line errors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from typer.testing import CliRunner, Result

from imagegen_billing.admin_cli import app as admin_app
from imagegen_billing.server import BillingServer
from imagegen_testing.net import free_port


async def run(
    server: BillingServer | None, *args: str, token: str | None = None, address: str = ""
) -> Result:
    """``imagegen admin …`` in a thread (its gRPC calls block), against ``server``."""
    if server is not None:
        address = address or server.settings.billing_listen
        token = server.settings.admin_token.get_secret_value() if token is None else token
    options = ["--billing", address, "--admin-token", token or ""]

    def invoke() -> Result:
        return CliRunner().invoke(admin_app, [*options, *args], env={"IMAGEGEN_ADMIN_TOKEN": ""})

    return await asyncio.to_thread(invoke)


async def run_json(server: BillingServer, *args: str) -> Any:
    result = await run(server, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


async def test_accounts_tokens_credits_and_ledger(billing_server: BillingServer) -> None:
    created = await run_json(billing_server, "account", "create", "a@example.test", "--credits", "50")
    assert created["email"] == "a@example.test" and created["credits"] == 50
    assert created["account_id"].startswith("acc_") and created["token"].startswith("igk_")
    assert created["token_prefix"] == created["token"][:8]
    account_id = created["account_id"]

    shown = await run_json(billing_server, "account", "show", "a@example.test")
    assert (shown["account_id"], shown["credits"]) == (account_id, 50)
    assert [t["token_id"] for t in shown["tokens"]] == [created["token_id"]]
    # the JSON shape operators script against: plain numbers, times to the second, null when unset
    assert shown["create_time"] == created["create_time"] and shown["create_time"].endswith("+00:00")
    assert set(shown) == {"account_id", "email", "credits", "reserved_credits", "create_time", "tokens"}
    assert shown["tokens"][0]["revoke_time"] is None and isinstance(shown["reserved_credits"], int)
    text = await run(billing_server, "account", "show", account_id)
    assert text.exit_code == 0 and "credits   50 (reserved 0)" in text.stdout
    assert created["token"] not in text.stdout

    await run_json(billing_server, "account", "create", "b@example.test")
    listed = await run_json(billing_server, "account", "list")
    assert [a["email"] for a in listed] == ["a@example.test", "b@example.test"]

    issued = await run_json(billing_server, "token", "issue", "a@example.test", "--label", "ci")
    assert issued["label"] == "ci" and issued["token"].startswith("igk_")
    tokens = await run_json(billing_server, "token", "list", account_id)
    assert [t["label"] for t in tokens] == ["default", "ci"]
    revoked = await run_json(billing_server, "token", "revoke", issued["token_id"])
    assert revoked["revoke_time"] is not None
    text = await run(billing_server, "token", "list", account_id)
    assert "revoked" in text.stdout and "active" in text.stdout

    granted = await run_json(billing_server, "credits", "grant", "a@example.test", "25", "--note", "bonus")
    assert granted["credits"] == 75 and granted["entry"]["kind"] == "grant"
    removed = await run_json(billing_server, "credits", "grant", "a@example.test", "-5")
    assert removed["credits"] == 70 and removed["entry"] == removed["entry"] | {"kind": "debit", "amount": -5}
    too_much = await run(billing_server, "credits", "grant", "a@example.test", "-71")
    assert too_much.exit_code == 1
    assert too_much.stderr == "error: cannot remove 71 credits: the account has 70\n"

    entries = await run_json(billing_server, "ledger", "a@example.test", "--limit", "2")
    assert [(e["kind"], e["amount"], e["balance_after"]) for e in entries] == [
        ("debit", -5, 70),
        ("grant", 25, 75),
    ]
    text = await run(billing_server, "ledger", account_id)
    assert text.exit_code == 0 and len(text.stdout.splitlines()) == 3


async def test_errors_are_one_line_and_a_non_zero_exit(billing_server: BillingServer) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    cases = [
        (
            await run(None, "account", "list", token="x" * 30, address=nobody),
            1,
            f"error: billing at {nobody} is unreachable",
        ),
        (
            await run(billing_server, "account", "list", token="wrong-token"),
            1,
            "error: billing refused the admin token (check --admin-token or IMAGEGEN_ADMIN_TOKEN)",
        ),
        (
            await run(billing_server, "account", "list", token=""),
            2,
            "error: no admin token: pass --admin-token or set IMAGEGEN_ADMIN_TOKEN",
        ),
        (
            await run(billing_server, "account", "show", "nobody@example.test"),
            1,
            "error: no account with email nobody@example.test",
        ),
        (
            await run(billing_server, "account", "create", "not-an-email"),
            1,
            "error: 'not-an-email' is not an email address",
        ),
        (
            await run(billing_server, "credits", "grant", "nobody@example.test", "0"),
            1,
            "error: amount must not be zero",
        ),
        (await run(billing_server, "token", "revoke", "tok_missing"), 1, "error: no token 'tok_missing'"),
    ]
    for result, code, message in cases:
        assert result.exit_code == code, result.output
        assert result.stderr.startswith(message), result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert "Traceback" not in result.output


async def test_webhook_commands_print_the_secret_only_when_it_is_made(billing_server: BillingServer) -> None:
    created = await run_json(billing_server, "account", "create", "w@example.test")
    account_id = created["account_id"]
    shown = await run_json(billing_server, "webhook", "show", account_id)
    assert (shown["url"], shown["has_secret"]) == (None, False)

    first = await run(billing_server, "webhook", "set", "w@example.test", "https://hooks.example.test/a")
    assert first.exit_code == 0, first.output
    secret_line = next(line for line in first.stdout.splitlines() if line.startswith("signing secret"))
    secret = secret_line.split()[-1]
    assert secret.startswith("whsec_") and "shown only now" in first.stdout

    again = await run_json(billing_server, "webhook", "set", account_id, "https://hooks.example.test/b")
    assert again["url"] == "https://hooks.example.test/b" and again["signing_secret"] is None
    shown_text = await run(billing_server, "webhook", "show", account_id)
    assert "https://hooks.example.test/b" in shown_text.stdout and secret not in shown_text.stdout

    rotated = await run_json(billing_server, "webhook", "rotate-secret", account_id)
    assert rotated["signing_secret"].startswith("whsec_") and rotated["signing_secret"] != secret
    cleared = await run_json(billing_server, "webhook", "clear", account_id)
    assert (cleared["url"], cleared["has_secret"]) == (None, True)

    refused = await run(billing_server, "webhook", "set", account_id, "ftp://hooks.example.test/")
    assert refused.exit_code == 1 and "is not an http or https URL" in refused.stderr
