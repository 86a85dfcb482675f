"""`imagegen billing`: runs one billing process."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the billing service.", no_args_is_help=False)
