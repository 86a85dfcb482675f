"""Alembic, driven from code: the migrations ship inside the package (``imagegen_billing/migrations``)."""

from __future__ import annotations

import asyncio
import logging

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "imagegen_billing:migrations"

# Alembic announces each of its plugins at INFO on every run; the migrations themselves stay visible.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def alembic_config(database_url: str = "") -> Config:
    """An Alembic configuration of billing's migrations on a database (SQLAlchemy URL)."""
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an option: options go through configparser, which mangles "%".
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrates the database to ``revision`` (the latest by default)."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str, revision: str = "head") -> None:
    # env.py runs its own event loop, so Alembic gets a thread of its own.
    await asyncio.to_thread(upgrade, database_url, revision)


def heads() -> list[str]:
    """The head revisions of the migrations (one, unless two branches were left unmerged)."""
    return list(ScriptDirectory.from_config(alembic_config()).get_heads())
