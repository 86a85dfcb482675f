"""`imagegen billing`: runs one billing process; `imagegen billing migrate` migrates its database."""

from __future__ import annotations

import asyncio
import logging

import typer
from pydantic import ValidationError

from imagegen_billing.config import BillingSettings, admin_token_problem, caller_secret_problems
from imagegen_common.logging import configure_logging
from imagegen_common.tracing import setup_tracing

app = typer.Typer(help="Run the billing service.", no_args_is_help=False)

log = logging.getLogger("imagegen_billing")

#: Exit code for a configuration billing refuses to run with.
EXIT_CONFIG = 2
_TOKEN_RECIPE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def _settings() -> BillingSettings:
    try:
        settings = BillingSettings()
    except ValidationError as error:
        configure_logging("billing")
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        log.error("invalid settings: %s", problems)
        raise typer.Exit(EXIT_CONFIG) from None
    configure_logging("billing", settings.log_level, settings.log_format)
    return settings


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """Run the billing gRPC server until SIGTERM (migrating the database first, unless
    IMAGEGEN_DATABASE_AUTO_MIGRATE=false)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = _settings()
    problems = [admin_token_problem(settings.admin_token.get_secret_value())]
    # Without its callers' secrets billing would refuse every BillingService call: say so at once.
    problems += caller_secret_problems(settings)
    for problem in filter(None, problems):
        log.error("refusing to start: %s; generate one with: %s", problem, _TOKEN_RECIPE)
    if any(problems):
        raise typer.Exit(EXIT_CONFIG)
    # Imported here: the root `imagegen` command loads this module for every sub-command (`imagegen
    # admin …` too), and the server's dependencies (SQLAlchemy, Alembic, nats-py) take seconds.
    from imagegen_billing.server import serve  # noqa: PLC0415

    setup_tracing("billing")
    try:
        asyncio.run(serve(settings))
    except Exception:
        log.exception("billing failed")
        raise typer.Exit(1) from None


@app.command()
def migrate() -> None:
    """Migrate billing's database to the latest schema, then exit."""
    settings = _settings()
    from imagegen_billing import migrate as migrations  # noqa: PLC0415  (see main)

    url = settings.resolved_database_url()
    try:
        migrations.upgrade(url)
    except Exception:
        log.exception("migration failed")
        raise typer.Exit(1) from None
    log.info("database migrated", extra={"heads": migrations.heads()})
