"""`imagegen gateway`: runs one gateway process."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the gateway service.", no_args_is_help=False)
