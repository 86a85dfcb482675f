"""The ``imagegen`` command: one entry point for every service, the admin client and the dev stack."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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


@app.command()
def settings(
    write_readme: Annotated[
        Path | None, typer.Option(help="Rewrite the settings section of this README instead of printing.")
    ] = None,
) -> None:
    """Every setting of every service (environment variable, default, meaning) as a Markdown table."""
    from imagegen_cli.settings_docs import readme_with_table, settings_table

    table = settings_table()
    if write_readme is None:
        typer.echo(table)
        return
    write_readme.write_text(readme_with_table(write_readme.read_text(), table))


if __name__ == "__main__":
    app()
