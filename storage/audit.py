"""The audit log of admin actions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlmodel import col, select

from storage.db import Database
from storage.models import AuditEntry


class AuditRepository:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def record(self, actor_id: int, action: str, target: str = "", **details: Any) -> AuditEntry:
        entry = AuditEntry(actor_id=actor_id, action=action, target=target, details=details)
        async with self.database.sessions() as session:
            session.add(entry)
            await session.commit()
            await session.refresh(entry)
        return entry

    async def recent(self, limit: int = 20) -> Sequence[AuditEntry]:
        statement = select(AuditEntry).order_by(col(AuditEntry.id).desc()).limit(limit)
        async with self.database.sessions() as session:
            return (await session.exec(statement)).all()
