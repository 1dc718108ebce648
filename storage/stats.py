"""Usage statistics for `/admin stats`: jobs by state and tier, engine time, queue waits."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from storage.db import Database
from storage.models import Job, JobTransition
from storage.states import JobState


class StatsRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def jobs_by(self, column: str, since: datetime | None = None) -> dict[str, int]:
        field = getattr(Job, column)
        statement = select(field, func.count()).group_by(field)
        if since is not None:
            statement = statement.where(col(Job.created_at) >= since)
        async with self.database.sessions() as session:
            rows = (await session.exec(statement)).all()  # type: ignore[call-overload]
        return {str(key): int(count) for key, count in rows}

    async def engine_seconds(self, since: datetime) -> float:
        statement = select(func.coalesce(func.sum(Job.engine_seconds), 0.0)).where(
            col(Job.state) == JobState.SUCCEEDED, col(Job.finished_at) >= since
        )
        async with self.database.sessions() as session:
            return float((await session.exec(statement)).one() or 0.0)  # type: ignore[call-overload]

    async def queue_waits(self, since: datetime) -> list[float]:
        """Seconds from entering QUEUED to starting PROCESSING, per attempt that started since ``since``."""
        statement = (
            select(JobTransition)
            .where(
                col(JobTransition.to_state).in_([JobState.QUEUED, JobState.PROCESSING]),
                col(JobTransition.at) >= since,
            )
            .order_by(col(JobTransition.id))
        )
        async with self.database.sessions() as session:
            rows = (await session.exec(statement)).all()
        queued_at: dict[tuple[str, int], datetime] = {}
        waits: defaultdict[str, list[float]] = defaultdict(list)
        for row in rows:
            key = (row.job_id, row.attempt)
            if row.to_state == JobState.QUEUED:
                queued_at[key] = row.at
            elif key in queued_at:
                waits[row.job_id].append((row.at - queued_at.pop(key)).total_seconds())
        return [wait for job_waits in waits.values() for wait in job_waits]
