"""`imagegen generator`: runs one generator replica (any number may run side by side)."""

from __future__ import annotations

import logging

import typer
from pydantic import ValidationError

from imagegen_common.logging import configure_logging

app = typer.Typer(help="Run the generator service.", no_args_is_help=False)

log = logging.getLogger("imagegen_generator")

#: Exit code for a configuration the generator refuses to run with.
EXIT_CONFIG = 2


@app.callback(invoke_without_command=True)
def main(ctx: typer.Context) -> None:
    """Take generation jobs from NATS until SIGTERM (settings: IMAGEGEN_… environment variables)."""
    if ctx.invoked_subcommand is not None:
        return
    from imagegen_generator.app import main as run_generator
    from imagegen_generator.config import GeneratorSettings

    try:
        settings = GeneratorSettings()
    except ValidationError as error:
        configure_logging("generator")
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        log.error("invalid settings: %s", problems)
        raise typer.Exit(EXIT_CONFIG) from None
    raise typer.Exit(run_generator(settings))
