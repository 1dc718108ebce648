"""The tables: users, jobs, the history of job transitions, and result images."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from storage.params import JobParams, JobParamsColumn
from storage.states import JobState


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands back naive values; they are UTC)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_job_id() -> str:
    """32 hex characters: short enough for a button's custom_id, unguessable, unique across databases."""
    return uuid.uuid4().hex


class JobKind(StrEnum):
    """What a job does; stored as text so new kinds need no migration."""

    IMAGINE = "imagine"  # a 2x2 grid from a prompt
    UPSCALE = "upscale"  # U1–U4: one tile of a grid on its own, full resolution
    VARIATION = "variation"  # V1–V4: four new images from one tile (img2img)
    REROLL = "reroll"  # 🔄: the same prompt with a new seed
    ENHANCE = "enhance"  # Upscale (Subtle/Creative) of a single image: 2x with the engine
    OUTPAINT = "outpaint"  # Zoom Out 2x/1.5x, Make Square, pans: the canvas grows around a single image
    # Vary (Subtle/Strong) of a single image is a VARIATION whose operation is vary_subtle/vary_strong


class Mode(StrEnum):
    """A job's speed: fast jobs are charged against the quota, relax jobs run when the GPU is free."""

    FAST = "fast"
    RELAX = "relax"


class User(SQLModel, table=True):
    __tablename__ = "users"

    id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    name: str = ""
    tier: str | None = None  # None: the configured default tier
    mode: str = Mode.FAST  # default speed for new jobs
    banned: bool = False
    ban_reason: str | None = None
    blocked_until: datetime | None = None  # a timed block after repeated moderation hits
    preferences: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    suffix: str = ""  # /prefer suffix: appended to every prompt
    remix: bool = False  # remix mode: variations and rerolls first open a prompt editor
    created_at: datetime = Field(default_factory=utcnow)


class BannedWord(SQLModel, table=True):
    """A term added with `/admin banned-words` (terms from the BANNED_WORDS setting are not stored)."""

    __tablename__ = "banned_words"

    term: str = Field(primary_key=True, max_length=100)
    added_by: int = Field(sa_column=Column(BigInteger, nullable=False))
    at: datetime = Field(default_factory=utcnow)


class ModerationHit(SQLModel, table=True):
    """A prompt refused by the banned-word check (the prompt itself is not kept)."""

    __tablename__ = "moderation_hits"

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    term: str
    at: datetime = Field(default_factory=utcnow, index=True)


class LedgerKind(StrEnum):
    """Entries of the quota ledger. A user's fast time used in a period is the sum of ``seconds``."""

    RESERVE = "reserve"  # +estimate when a fast job is accepted
    RELEASE = "release"  # -estimate when it ends (whatever the outcome)
    CHARGE = "charge"  # +measured engine seconds when it succeeds
    GRANT = "grant"  # -seconds: an admin gave extra time
    RESET = "reset"  # -used: an admin set the period's usage back to zero


class LedgerEntry(SQLModel, table=True):
    """Append-only. One reserve/release/charge per job at most (unique), so retries never double-charge."""

    __tablename__ = "quota_ledger"
    __table_args__ = (UniqueConstraint("job_id", "kind", name="one_entry_per_job_and_kind"),)

    id: int | None = Field(default=None, primary_key=True)
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    job_id: str | None = Field(default=None, max_length=32, index=True)
    kind: str
    seconds: float
    period_start: datetime = Field(index=True)
    actor_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    at: datetime = Field(default_factory=utcnow)


class AuditEntry(SQLModel, table=True):
    """Every admin action: who did what to whom, and when."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    actor_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    action: str
    target: str = ""
    details: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    at: datetime = Field(default_factory=utcnow, index=True)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"

    id: str = Field(default_factory=new_job_id, primary_key=True, max_length=32)
    user_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    kind: str = Field(default=JobKind.IMAGINE, index=True)
    state: JobState = Field(default=JobState.DRAFT, index=True)
    attempts: int = 0
    error: str | None = None

    # where: the Discord message that shows this job
    guild_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    channel_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    message_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    application_id: int | None = Field(default=None, sa_column=Column(BigInteger))
    interaction_token: str | None = None  # valid 15 minutes after the interaction (≈ created_at)

    # what
    prompt: str = ""
    negative_prompt: str = ""
    params: JobParams = Field(default_factory=JobParams, sa_column=Column(JobParamsColumn, nullable=False))
    parent_job_id: str | None = Field(default=None, foreign_key="jobs.id", max_length=32)
    parent_index: int | None = None  # which tile of the parent (0-based)

    # how: ``operation`` is an engine.base.Operation value; ``params`` carries the other engine knobs
    # (guidance, strength, tile, model, engine_prompt, ...) set when the job was made
    operation: str = "txt2img"
    engine: str | None = None
    model: str | None = None
    width: int = 0
    height: int = 0
    steps: int = 0
    seed: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))

    mode: str = Mode.FAST  # charged against the quota (fast) or not (relax)
    tier: str = ""  # the user's tier when the job was accepted
    priority: int = 0  # the tier's priority (higher runs first)
    estimate_seconds: float = 0.0  # engine seconds reserved when accepted (fast jobs)
    engine_seconds: float | None = None  # measured engine time when it succeeded
    created_at: datetime = Field(default_factory=utcnow, index=True)
    updated_at: datetime = Field(default_factory=utcnow)
    state_since: datetime = Field(default_factory=utcnow)  # when the job entered its current state
    finished_at: datetime | None = None


class JobTransition(SQLModel, table=True):
    """Append-only history of a job's states: gives timings per state and an audit trail."""

    __tablename__ = "job_transitions"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=32)
    from_state: JobState | None = None
    to_state: JobState
    attempt: int = 0
    note: str | None = None
    at: datetime = Field(default_factory=utcnow)


class Favourite(SQLModel, table=True):
    """A user's ❤️ on a result (one row per user and job; toggled by the button)."""

    __tablename__ = "favourites"

    user_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    job_id: str = Field(foreign_key="jobs.id", primary_key=True, max_length=32)
    at: datetime = Field(default_factory=utcnow)


class JobImage(SQLModel, table=True):
    """One result image of a job, stored under the key of its content hash."""

    __tablename__ = "job_images"

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", index=True, max_length=32)
    index: int
    key: str = Field(max_length=64)
    width: int
    height: int
    seed: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
