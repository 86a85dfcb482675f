"""The database engine and transactions, on SQLite or PostgreSQL.

Writers never overdraw on either database: the ledger decides a group of writes on the balances it
read (locked, on PostgreSQL) and writes them in one transaction with their ledger entries (see
``ledger``). On PostgreSQL concurrent writers serialise on the account's row lock. SQLite has a
single writer per file: here every write transaction is taken by one coroutine at a time (an
asyncio lock) and opens with ``BEGIN IMMEDIATE``, so it holds the write lock from its first statement
and can never fail half-way with "database is locked"; ``busy_timeout`` covers other processes on the
same file, and WAL keeps readers off the writer's way.

``run_write`` runs a plain function on a write transaction's (sync) connection: the ledger's group
commit, the hot path, is written that way. On SQLite the whole transaction then runs in one hop to
a writer thread with the sqlite3 driver itself, instead of aiosqlite's three or four thread hops per
statement (a reserve or a settlement costs about a third of the CPU); on PostgreSQL it runs on an
asyncpg connection through SQLAlchemy's ``run_sync``, as any other transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, event, text
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")

_BEGIN_OPTION = "imagegen_sqlite_begin"


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_engine(url: str, pool_size: int = 10, timeout_seconds: float = 10.0) -> AsyncEngine:
    """An async engine for a SQLAlchemy URL (``sqlite+aiosqlite`` or ``postgresql+asyncpg``).

    A SQLite file is created for its owner only (``private_sqlite_file``), with its directory when
    missing.
    """
    parsed = make_url(url)
    if is_sqlite(parsed):
        return _sqlite_engine(parsed, pool_size, timeout_seconds)
    return create_async_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=timeout_seconds,
        pool_pre_ping=True,
        connect_args={"command_timeout": timeout_seconds, "timeout": timeout_seconds},
    )


def private_sqlite_file(path: Path) -> None:
    """Creates the database file (and a missing directory) for its owner only: 0600 (0700), as it holds
    webhook signing secrets and token hashes. SQLite gives its WAL and shared-memory files the mode of
    the database file, so they follow. An existing file is narrowed to 0600 too."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if companion.exists():
            companion.chmod(0o600)


def _sqlite_engine(url: URL, pool_size: int, timeout_seconds: float) -> AsyncEngine:
    if _is_file(url):
        assert url.database is not None
        private_sqlite_file(Path(url.database))
    # No overflow: a connection past the pool would be opened (a thread, four PRAGMAs) and closed
    # again for every burst, and SQLite serialises the writers anyway.
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=timeout_seconds,
        connect_args={"timeout": timeout_seconds},
    )
    _configure_sqlite(engine.sync_engine, timeout_seconds)
    return engine


def _is_file(url: URL) -> bool:
    return bool(url.database) and url.database != ":memory:" and not str(url.database).startswith("file:")


def _configure_sqlite(engine: Engine, timeout_seconds: float) -> None:
    busy_ms = int(timeout_seconds * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide where transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        # A committed ledger entry must survive a power cut, not only a crash of the process.
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class _SqliteWriter:
    """A sync engine on the same SQLite file with one connection, used by one thread: ``run_write``'s
    transactions, each in one hop to that thread."""

    def __init__(self, url: URL, timeout_seconds: float) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        # One thread uses the one connection, but SQLAlchemy's pool may close it from another.
        self._engine = create_sync_engine(
            url.set(drivername="sqlite+pysqlite"),
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": timeout_seconds, "check_same_thread": False},
        )
        _configure_sqlite(self._engine, timeout_seconds)
        self._writer = self._engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        with self._writer.begin() as conn:
            return work(conn)

    async def run(self, work: Callable[[Connection], T]) -> T:
        # The caller's context goes along: its trace is the parent of the statements' spans.
        context = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(
            self._executor, context.run, functools.partial(self._transaction, work)
        )
        cancelled = False
        while not future.done():
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                # The thread cannot be stopped: the transaction ends (committed or not) before we go
                # on, so that nobody closes the database under it or takes the write lock meanwhile.
                cancelled = True
            except Exception:  # the transaction's own failure: raised below
                break
        if cancelled:
            raise asyncio.CancelledError
        return future.result()

    @property
    def engine(self) -> Engine:
        return self._engine

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._engine.dispose)
        self._executor.shutdown(wait=True)


class Database:
    """Transactions on one engine: ``read()`` for queries, ``write()`` for changes."""

    def __init__(self, engine: AsyncEngine, timeout_seconds: float = 10.0) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._writer = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"}) if self.sqlite else engine
        self._write_lock = asyncio.Lock() if self.sqlite else None
        self._writer_thread: _SqliteWriter | None = None
        if self.sqlite and _is_file(engine.url):
            self._writer_thread = _SqliteWriter(engine.url, timeout_seconds)

    @classmethod
    def from_url(cls, url: str, pool_size: int = 10, timeout_seconds: float = 10.0) -> Database:
        return cls(create_engine(url, pool_size=pool_size, timeout_seconds=timeout_seconds), timeout_seconds)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """A transaction for queries (on SQLite a deferred one, which never waits for the writer)."""
        async with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that commits when the block ends without an exception."""
        if self._write_lock is None:
            async with self._writer.begin() as conn:
                yield conn
            return
        async with self._write_lock, self._writer.begin() as conn:
            yield conn

    @property
    def sync_engines(self) -> tuple[Engine, ...]:
        """The (sync) engines whose statements this database runs: the engine's, and on a SQLite
        file the writer thread's (for listeners that count statements, say)."""
        if self._writer_thread is None:
            return (self.engine.sync_engine,)
        return (self.engine.sync_engine, self._writer_thread.engine)

    async def run_write(self, work: Callable[[Connection], T]) -> T:
        """Runs ``work`` on a write transaction's connection and returns its result once committed
        (nothing is committed when it raises). On a SQLite file, in one hop to the writer thread; the
        write lock is held meanwhile, so that it stays the only writer. ``work`` must not touch the
        event loop's objects: on SQLite it runs in another thread."""
        if self._writer_thread is not None:
            assert self._write_lock is not None
            async with self._write_lock:
                return await self._writer_thread.run(work)
        async with self.write() as conn:
            return await conn.run_sync(work)

    async def ping(self, timeout_seconds: float = 5.0) -> bool:
        """Whether the database answers within the timeout."""
        try:
            async with asyncio.timeout(timeout_seconds), self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:  # any failure means "not reachable now"; the caller asks again later
            return False
        return True

    async def close(self) -> None:
        if self._writer_thread is not None:
            await self._writer_thread.close()
        await self.engine.dispose()
