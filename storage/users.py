"""Users: their tier, default mode and ban, and counts of their jobs by state."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from storage.db import Database
from storage.models import Job, User
from storage.states import JobState


class UserRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def get(self, user_id: int, name: str = "") -> User:
        """The user's row, created on first sight (concurrent first sights are fine)."""
        async with self.database.sessions() as session:
            user = await session.get(User, user_id)
            if user is not None:
                return user
            session.add(User(id=user_id, name=name))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()  # the other request created it first
        async with self.database.sessions() as session:
            user = await session.get(User, user_id)
            assert user is not None
            return user

    async def update(self, user_id: int, **values: Any) -> User:
        await self.get(user_id)
        async with self.database.sessions() as session:
            await session.execute(update(User).where(col(User.id) == user_id).values(**values))
            await session.commit()
        return await self.get(user_id)

    async def count_jobs(
        self, user_id: int, states: Iterable[JobState], *, since: datetime | None = None
    ) -> int:
        statement = (
            select(func.count())
            .select_from(Job)
            .where(col(Job.user_id) == user_id, col(Job.state).in_(list(states)))
        )
        if since is not None:
            statement = statement.where(col(Job.created_at) >= since)
        async with self.database.sessions() as session:
            return int((await session.exec(statement)).one())  # type: ignore[call-overload]
