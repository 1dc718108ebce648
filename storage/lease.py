"""The ``bot_lease`` row: which of several bot processes sharing one Postgres database is active.

Every statement is one atomic ``INSERT … ON CONFLICT … WHERE`` or ``UPDATE … WHERE``, and the times are
the database server's (``clock_timestamp()``), so two processes on hosts with different clocks still
agree on when a lease expired. Postgres only: a SQLite file has one process at a time (``bot/lease.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from storage.db import Database

_ACQUIRE = text(
    """
    INSERT INTO bot_lease (name, holder, acquired_at, expires_at)
    VALUES (:name, :holder, clock_timestamp(), clock_timestamp() + make_interval(secs => :seconds))
    ON CONFLICT (name) DO UPDATE
        SET holder = excluded.holder, acquired_at = excluded.acquired_at, expires_at = excluded.expires_at
        WHERE bot_lease.holder = excluded.holder OR bot_lease.expires_at < clock_timestamp()
    RETURNING holder
    """
)
_RENEW = text(
    """
    UPDATE bot_lease SET expires_at = clock_timestamp() + make_interval(secs => :seconds)
    WHERE name = :name AND holder = :holder
    """
)
_RELEASE = text("DELETE FROM bot_lease WHERE name = :name AND holder = :holder")
_CURRENT = text(
    "SELECT holder, expires_at, expires_at < clock_timestamp() AS expired FROM bot_lease WHERE name = :name"
)


@dataclass(frozen=True)
class LeaseHolder:
    holder: str
    expires_at: datetime
    expired: bool


class LeaseRepository:
    def __init__(self, database: Database) -> None:
        if database.engine.dialect.name != "postgresql":
            raise ValueError("the bot lease needs Postgres (a SQLite file is used by one process only)")
        self.database = database

    async def try_acquire(self, name: str, holder: str, seconds: float) -> bool:
        """Take the lease (free, expired, or ours already) for ``seconds``; False when another holds it."""
        async with self.database.engine.begin() as connection:
            row = (
                await connection.execute(_ACQUIRE, {"name": name, "holder": holder, "seconds": seconds})
            ).first()
        return row is not None

    async def renew(self, name: str, holder: str, seconds: float) -> bool:
        """Extend our lease; False when it is no longer ours (another process took it over)."""
        async with self.database.engine.begin() as connection:
            result = await connection.execute(_RENEW, {"name": name, "holder": holder, "seconds": seconds})
        return result.rowcount == 1

    async def release(self, name: str, holder: str) -> None:
        """Give the lease up at once (a clean stop), so a standby need not wait for it to expire."""
        async with self.database.engine.begin() as connection:
            await connection.execute(_RELEASE, {"name": name, "holder": holder})

    async def current(self, name: str) -> LeaseHolder | None:
        async with self.database.engine.connect() as connection:
            row = (await connection.execute(_CURRENT, {"name": name})).first()
        return None if row is None else LeaseHolder(row.holder, row.expires_at, row.expired)
