"""Stored banned words and the record of refused prompts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import col, select

from storage.db import Database
from storage.models import BannedWord, ModerationHit

_DAY = timedelta(days=1)


class ModerationRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def words(self) -> Sequence[str]:
        async with self.database.sessions() as session:
            return [
                row.term
                for row in (await session.exec(select(BannedWord).order_by(col(BannedWord.term)))).all()
            ]

    async def add_word(self, term: str, added_by: int) -> bool:
        async with self.database.sessions() as session:
            if await session.get(BannedWord, term) is not None:
                return False
            session.add(BannedWord(term=term, added_by=added_by))
            await session.commit()
            return True

    async def remove_word(self, term: str) -> bool:
        async with self.database.sessions() as session:
            row = await session.get(BannedWord, term)
            if row is None:
                return False
            await session.delete(row)
            await session.commit()
            return True

    async def record_hit(self, user_id: int, term: str, at: datetime) -> int:
        """Record a refused prompt; returns the user's hits since ``at`` minus a day (this one included)."""
        async with self.database.sessions() as session:
            session.add(ModerationHit(user_id=user_id, term=term, at=at))
            await session.commit()
        return await self.hits_since(user_id, at - _DAY)

    async def hits_since(self, user_id: int, since: datetime) -> int:
        statement = (
            select(func.count())
            .select_from(ModerationHit)
            .where(col(ModerationHit.user_id) == user_id, col(ModerationHit.at) >= since)
        )
        async with self.database.sessions() as session:
            return int((await session.exec(statement)).one())  # type: ignore[call-overload]
