"""`imagegen dev`: the whole stack on one machine with embedded defaults."""

from __future__ import annotations


def dev() -> None:
    """Start every service with embedded defaults."""
    raise SystemExit("imagegen dev: not built yet")
