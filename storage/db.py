"""Database sessions: an async SQLAlchemy engine for SQLite (aiosqlite) or Postgres (asyncpg).

The schema is owned by the Alembic revisions in ``storage/migrations``: ``Database.open`` upgrades the
database to the newest revision before handing out sessions, so a database made by any earlier version
(including one from the ``create_all`` days, which is stamped at the baseline) is upgraded in place.
The upgrade runs in one transaction on a connection of its own: on SQLite it starts with
``BEGIN IMMEDIATE``, so a second process opening the same file waits for the first to finish and then
finds nothing left to do; on Postgres an advisory lock does the same.

On SQLite, openers of one file also take turns on a lock file beside it (``<file>.open-lock``) while
they connect and upgrade: the first connection to a new file switches it to WAL, and SQLite answers
``PRAGMA journal_mode=WAL`` with "database is locked" at once, without waiting on the busy timeout,
when another connection touches the file meanwhile. Once the file is in WAL mode (it stays so) the
pragma needs no lock, so only the opening has to take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from pathlib import Path

from filelock import FileLock, Timeout
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import migrations, models  # noqa: F401  (models registers the tables)

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_MIGRATION_BUSY_TIMEOUT_MS = 120_000
"""How long a start waits for another process's schema upgrade of the same SQLite file."""


class Database:
    """Owns the engine and hands out sessions. ``await Database.open(url)`` upgrades the schema first."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str) -> Database:
        """Connect and upgrade the schema; raises ``migrations.MigrationError`` when that is impossible."""
        sqlite = url.startswith("sqlite")
        if sqlite:
            _ensure_sqlite_folder(url)
        engine = create_async_engine(url)
        if sqlite:
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        try:
            if sqlite and _sqlite_in_memory(url):
                await _upgrade(engine)  # private to this engine's one connection: nobody to wait for
            elif sqlite:
                async with _opening_turn(url):
                    await _upgrade_on_own_connection(url)
            else:
                await _upgrade_on_own_connection(url)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        """Close every connection, including ones that canceled work left behind holding a lock.

        A task canceled while a statement runs leaves SQLAlchemy's execution context (and with it the
        driver's cursor) in the ``CancelledError``'s traceback, a reference cycle. The pool then closes
        that connection without a rollback, and ``sqlite3`` can only make it a "zombie": it keeps its
        transaction, and the file's write lock, until the cursor is freed. Nothing frees it until the
        garbage collector runs, and an idle process may not run it for a long time, so the next opener
        of the file (a restart in the same process, a migration) waited on the lock until it gave up.
        One turn of the event loop first lets the callbacks of the canceled work drop their references.
        """
        await self.engine.dispose()
        await asyncio.sleep(0)
        gc.collect()


async def _upgrade(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.run_sync(migrations.upgrade)


async def _upgrade_on_own_connection(url: str) -> None:
    """Upgrade in one transaction on a fresh connection that holds the database's write lock throughout."""
    engine = create_async_engine(url, poolclass=NullPool)
    if url.startswith("sqlite"):
        event.listen(engine.sync_engine, "connect", _sqlite_migration_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin_immediate)
    try:
        await _upgrade(engine)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def _opening_turn(url: str) -> AsyncIterator[None]:
    """Hold ``<file>.open-lock`` (an OS file lock, released by the OS if the process dies)."""
    lock = FileLock(
        f"{_sqlite_path(url)}.open-lock", timeout=SQLITE_MIGRATION_BUSY_TIMEOUT_MS / 1000, thread_local=False
    )
    try:
        lock.acquire(blocking=False)  # the usual case: nobody else is opening the file
    except Timeout:
        await asyncio.to_thread(lock.acquire)  # wait (blocking) for the other opener's turn to end
    try:
        yield
    finally:
        lock.release()


def _sqlite_path(url: str) -> str:
    return str(make_url(url).database)


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_in_memory(url: str) -> bool:
    database = make_url(url).database
    return not database or database == ":memory:" or database.startswith("file::memory:")


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """WAL lets readers run beside the writer; busy_timeout waits on a lock instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")  # first: switching to WAL may wait a lock
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_migration_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """The driver must not open transactions itself (``_sqlite_begin_immediate`` does), so that DDL is
    transactional; foreign keys stay off, as batch migrations that copy a table need."""
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_MIGRATION_BUSY_TIMEOUT_MS}")  # before WAL, which may wait
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin_immediate(connection) -> None:  # type: ignore[no-untyped-def]
    connection.exec_driver_sql("BEGIN IMMEDIATE")
