"""Tables of the engine server (``python -m engine serve``): its jobs and their result images.

They live in the same migrations as the bot's tables (revision 0002), so ``Database.open`` makes them in
the engine server's own database (a SQLite file in ``ENGINE_DATA_DIR`` by default). The bot never writes
them; nothing here imports the engine (``engine.server.store`` maps its jobs onto these rows).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class EngineServerJob(SQLModel, table=True):
    """One job of the engine server. ``request`` is the validated wire request without its image."""

    __tablename__ = "engine_server_jobs"

    id: str = Field(primary_key=True, max_length=32)
    state: str = Field(max_length=16, index=True)
    idempotency_key: str | None = Field(default=None, max_length=200, unique=True, index=True)
    request: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    init_image: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    """The input PNG while the job may still run (a restart re-runs it); dropped when the job ends."""
    cache_key: str | None = Field(default=None, max_length=64, index=True)
    cache_hit: bool = False
    progress: int = 30
    step: int = 0
    total: int = 0
    attempts: int = 0
    error_code: str | None = Field(default=None, max_length=32)
    error_message: str | None = Field(default=None, max_length=1000)
    images: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    engine_seconds: float | None = None
    webhook_pending: bool = False
    created_at: datetime = Field(default_factory=utcnow)
    state_since: datetime = Field(default_factory=utcnow)
    finished_at: datetime | None = None
    expires_at: datetime | None = Field(default=None, index=True)


class EngineServerImage(SQLModel, table=True):
    """A result PNG, keyed by its content hash (cache hits share it); kept until ``expires_at``."""

    __tablename__ = "engine_server_images"

    key: str = Field(primary_key=True, max_length=40)
    data: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    expires_at: datetime = Field(index=True)
