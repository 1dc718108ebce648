"""The quota ledger: append-only entries whose sum per user and period is the fast time used."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func
from sqlmodel import col, select

from storage.db import Database
from storage.models import LedgerEntry, LedgerKind


class LedgerRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def add(self, entries: Sequence[LedgerEntry]) -> None:
        async with self.database.sessions() as session:
            session.add_all(list(entries))
            await session.commit()

    async def used(self, user_id: int, period_start: datetime) -> float:
        """Seconds used (including reservations of unfinished jobs) in the period starting at ``period_start``."""
        statement = select(func.coalesce(func.sum(LedgerEntry.seconds), 0.0)).where(
            col(LedgerEntry.user_id) == user_id, col(LedgerEntry.period_start) == period_start
        )
        async with self.database.sessions() as session:
            return float((await session.exec(statement)).one())  # type: ignore[call-overload]

    async def open_reservations(self, user_id: int, period_start: datetime) -> float:
        """Seconds still reserved by unfinished jobs in the period: reservations minus their releases."""
        statement = select(func.coalesce(func.sum(LedgerEntry.seconds), 0.0)).where(
            col(LedgerEntry.user_id) == user_id,
            col(LedgerEntry.period_start) == period_start,
            col(LedgerEntry.kind).in_([LedgerKind.RESERVE, LedgerKind.RELEASE]),
        )
        async with self.database.sessions() as session:
            return float((await session.exec(statement)).one())  # type: ignore[call-overload]

    async def entries(self, user_id: int | None = None, job_id: str | None = None) -> Sequence[LedgerEntry]:
        statement = select(LedgerEntry).order_by(col(LedgerEntry.id))
        if user_id is not None:
            statement = statement.where(col(LedgerEntry.user_id) == user_id)
        if job_id is not None:
            statement = statement.where(col(LedgerEntry.job_id) == job_id)
        async with self.database.sessions() as session:
            return (await session.exec(statement)).all()
