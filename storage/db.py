"""Database sessions: an async SQLAlchemy engine for SQLite (aiosqlite) or Postgres (asyncpg).

The schema is created with ``create_all`` for now; the first schema change brings in migrations.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from storage import models  # noqa: F401  (registers the tables)

SQLITE_BUSY_TIMEOUT_MS = 10_000


class Database:
    """Owns the engine and hands out sessions. ``await Database.open(url)`` creates the schema."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)

    @classmethod
    async def open(cls, url: str) -> Database:
        if url.startswith("sqlite"):
            _ensure_sqlite_folder(url)
        engine = create_async_engine(url)
        if url.startswith("sqlite"):
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        database = cls(engine)
        async with engine.begin() as connection:
            await connection.run_sync(SQLModel.metadata.create_all)
        return database

    async def close(self) -> None:
        await self.engine.dispose()


def _ensure_sqlite_folder(url: str) -> None:
    path = url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    """WAL lets readers run beside the writer; busy_timeout waits on a lock instead of failing."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
