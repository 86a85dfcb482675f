"""Billing's files are its owner's only."""

from __future__ import annotations

import stat
from pathlib import Path

from imagegen_billing import migrate
from imagegen_billing.db import Database


async def test_the_sqlite_database_is_created_for_its_owner_only(tmp_path: Path) -> None:
    """It holds webhook signing secrets: 0600 for the file (and its WAL), 0700 for a new directory."""
    path = tmp_path / "new-dir" / "billing.db"
    await migrate.upgrade_async(f"sqlite+aiosqlite:///{path}")
    database = Database.from_url(f"sqlite+aiosqlite:///{path}")
    try:
        assert await database.ping(5)
        async with database.write() as conn:
            await conn.exec_driver_sql("CREATE TABLE probe (x INTEGER)")
    finally:
        await database.close()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for file in path.parent.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file.name
    # A file left world-readable by an older version is narrowed on the next start.
    path.chmod(0o644)
    await Database.from_url(f"sqlite+aiosqlite:///{path}").close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
