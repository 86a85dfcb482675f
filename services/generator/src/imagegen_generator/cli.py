"""`imagegen generator`: runs one generator process."""

from __future__ import annotations

import typer

app = typer.Typer(help="Run the generator service.", no_args_is_help=False)
