"""`imagegen admin`: accounts, tokens and credits, through billing's AdminService."""

from __future__ import annotations

import typer

app = typer.Typer(help="Administer accounts, tokens and credits.", no_args_is_help=True)
