"""What users did with a result: the jobs its buttons made (to mark used buttons and stop double
clicks) and the ❤️ favourites."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from storage.db import Database
from storage.models import Favourite, Job, as_utc
from storage.states import TERMINAL_STATES, JobState


class ResultRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def children(self, parent_id: str) -> Sequence[Job]:
        """Every job made from ``parent_id``'s buttons, oldest first."""
        statement = select(Job).where(col(Job.parent_job_id) == parent_id).order_by(col(Job.created_at))
        async with self.database.sessions() as session:
            return (await session.exec(statement)).all()

    async def duplicate_of(
        self,
        *,
        user_id: int,
        parent_id: str,
        kind: str,
        operation: str | None,
        index: int | None,
        prompt: str | None,
        since: datetime,
    ) -> Job | None:
        """A job of ``user_id`` from the same button of the same parent that is still live or was made
        after ``since`` (so a double click, even across a restart, makes one job)."""
        for job in await self.children(parent_id):
            if job.user_id != user_id or job.kind != kind or job.parent_index != index:
                continue
            if operation is not None and job.operation != operation:
                continue
            if prompt is not None and job.prompt != prompt:
                continue
            created = as_utc(job.created_at)
            if job.state not in TERMINAL_STATES or (job.state == JobState.SUCCEEDED and created >= since):
                return job
        return None

    async def toggle_favourite(self, user_id: int, job_id: str) -> bool:
        """Flip ``user_id``'s ❤️ on ``job_id``; returns whether it is a favourite now."""
        async with self.database.sessions() as session:
            existing = await session.get(Favourite, (user_id, job_id))
            if existing is not None:
                await session.delete(existing)
                await session.commit()
                return False
            session.add(Favourite(user_id=user_id, job_id=job_id))
            try:
                await session.commit()
            except IntegrityError:  # a concurrent click added it: this click removes it again
                await session.rollback()
                return await self.toggle_favourite(user_id, job_id)
            return True

    async def is_favourite(self, user_id: int, job_id: str) -> bool:
        async with self.database.sessions() as session:
            return await session.get(Favourite, (user_id, job_id)) is not None
