"""The engine server's jobs and result images in a database (``storage.server_jobs``' tables).

The only module of the engine that imports ``storage``: it reuses ``storage.db.Database`` (sessions,
SQLite WAL pragmas, Alembic migrations on open). Every state change is written before it is announced,
so a server killed at any moment restarts from what its clients were last told: unfinished jobs run
again, finished ones (and their images) are served until they expire.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, update
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession

from storage.db import Database
from storage.server_jobs import EngineServerImage, EngineServerJob

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")


def now() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """SQLite gives naive datetimes back; they were written as UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class JobStore:
    def __init__(self, database: Database) -> None:
        self.database = database

    @classmethod
    async def open(cls, url: str) -> JobStore:
        return cls(await Database.open(url))

    async def close(self) -> None:
        await self.database.close()

    # -- jobs ------------------------------------------------------------------------------------------

    async def insert(self, row: EngineServerJob) -> None:
        async with self.database.sessions() as session:
            session.add(row)
            await session.commit()

    async def get(self, job_id: str) -> EngineServerJob | None:
        """The job, unless its retention period has passed."""
        async with self.database.sessions() as session:
            row = await session.get(EngineServerJob, job_id)
            return None if row is None or expired(row) else row

    async def by_idempotency_key(self, key: str) -> EngineServerJob | None:
        """The job submitted with ``key``; an expired one is deleted (the key may be used again)."""
        async with self.database.sessions() as session:
            result = await session.execute(
                select(EngineServerJob).where(col(EngineServerJob.idempotency_key) == key)
            )
            row = result.scalars().first()
            if row is not None and expired(row):
                await session.delete(row)
                await session.commit()
                return None
            return row

    async def update(self, job_id: str, **values: Any) -> None:
        async with self.database.sessions() as session:
            await session.execute(
                update(EngineServerJob).where(col(EngineServerJob.id) == job_id).values(**values)
            )
            await session.commit()

    async def finish(
        self, job_id: str, values: dict[str, Any], images: Sequence[tuple[str, bytes]], expires: datetime
    ) -> None:
        """A terminal state and its images in one transaction (never a SUCCEEDED job without its images)."""
        async with self.database.sessions() as session:
            await _keep(session, images, expires)
            await session.execute(
                update(EngineServerJob)
                .where(col(EngineServerJob.id) == job_id)
                .values(**values, init_image=None, expires_at=expires)
            )
            await session.commit()

    async def put_images(self, images: Sequence[tuple[str, bytes]], expires: datetime) -> None:
        async with self.database.sessions() as session:
            await _keep(session, images, expires)
            await session.commit()

    async def unfinished(self) -> list[EngineServerJob]:
        async with self.database.sessions() as session:
            result = await session.execute(
                select(EngineServerJob)
                .where(col(EngineServerJob.state).not_in(TERMINAL_STATES))
                .order_by(col(EngineServerJob.created_at))
            )
            return list(result.scalars().all())

    async def pending_webhooks(self) -> list[EngineServerJob]:
        async with self.database.sessions() as session:
            result = await session.execute(
                select(EngineServerJob).where(col(EngineServerJob.webhook_pending).is_(True))
            )
            return list(result.scalars().all())

    async def cached(self, cache_key: str) -> EngineServerJob | None:
        """A SUCCEEDED, unexpired job made for the same cache key, whose images are still kept."""
        async with self.database.sessions() as session:
            result = await session.execute(
                select(EngineServerJob)
                .where(
                    col(EngineServerJob.cache_key) == cache_key,
                    col(EngineServerJob.state) == "SUCCEEDED",
                    col(EngineServerJob.expires_at) > now(),
                )
                .order_by(col(EngineServerJob.created_at))
                .limit(1)
            )
            return result.scalars().first()

    async def counts(self) -> dict[str, int]:
        async with self.database.sessions() as session:
            result = await session.execute(
                select(col(EngineServerJob.state), func.count()).group_by(col(EngineServerJob.state))
            )
            return {str(state): int(count) for state, count in result.all()}

    # -- images and retention ----------------------------------------------------------------------------

    async def image(self, key: str) -> bytes | None:
        async with self.database.sessions() as session:
            row = await session.get(EngineServerImage, key)
            return None if row is None or aware(row.expires_at) <= now() else row.data

    async def purge(self, keep_finished: int) -> int:
        """Delete expired jobs and images, and the oldest finished jobs beyond ``keep_finished``."""
        moment = now()
        async with self.database.sessions() as session:
            overflow = (
                select(col(EngineServerJob.id))
                .where(col(EngineServerJob.state).in_(TERMINAL_STATES))
                .order_by(col(EngineServerJob.finished_at).desc())
                .offset(keep_finished)
            )
            old = list((await session.execute(overflow)).scalars().all())
            result = await session.execute(
                delete(EngineServerJob).where(
                    (col(EngineServerJob.expires_at) < moment) | col(EngineServerJob.id).in_(old)
                )
            )
            await session.execute(delete(EngineServerImage).where(col(EngineServerImage.expires_at) < moment))
            await session.commit()
            return int(getattr(result, "rowcount", 0) or 0)


def expired(row: EngineServerJob) -> bool:
    return row.expires_at is not None and aware(row.expires_at) <= now()


def expiry(ttl_seconds: float) -> datetime:
    return now() + timedelta(seconds=ttl_seconds)


async def _keep(session: AsyncSession, images: Sequence[tuple[str, bytes]], expires: datetime) -> None:
    """Add the images, or keep ones already stored (same content, same key) at least until ``expires``;
    empty ``data`` only extends an image that must already exist (a cache hit)."""
    for key, data in images:
        existing = await session.get(EngineServerImage, key)
        if existing is None:
            if data:
                session.add(EngineServerImage(key=key, data=data, expires_at=expires))
        elif aware(existing.expires_at) < expires:
            existing.expires_at = expires
