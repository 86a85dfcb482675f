"""The ``imagegen`` command: one entry point for every service, the admin client and the dev stack."""

from __future__ import annotations

import typer

from imagegen_billing.admin_cli import app as admin_app
from imagegen_billing.cli import app as billing_app
from imagegen_cli.dev import dev
from imagegen_gateway.cli import app as gateway_app
from imagegen_generator.cli import app as generator_app

app = typer.Typer(
    name="imagegen",
    help="Self-hostable image generation for AI assistants (MCP) and scripts (REST).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(billing_app, name="billing")
app.add_typer(generator_app, name="generator")
app.add_typer(gateway_app, name="gateway")
app.add_typer(admin_app, name="admin")
app.command()(dev)

if __name__ == "__main__":
    app()
