"""Baseline: the schema as ``SQLModel.metadata.create_all`` made it before migrations existed.

The tables are written out here, frozen, rather than imported from ``storage.models``: the models will
move on, this revision must not. ``storage.migrations`` also uses ``metadata`` below to check a database
made by the old ``create_all`` code (and to add a table it lacked) before stamping it at this revision.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

metadata = sa.MetaData()

# storage.states.JobState as it was: a native ENUM on Postgres, VARCHAR(10) on SQLite.
job_state = sa.Enum(
    "DRAFT",
    "SUBMITTED",
    "QUEUED",
    "PROCESSING",
    "GENERATED",
    "STORING",
    "SUCCEEDED",
    "FAILED",
    "TIMED_OUT",
    "CANCELED",
    name="jobstate",
)


def _timestamp(name: str, *, nullable: bool = False, index: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, index=index)


sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("name", sa.String(), nullable=False),
    sa.Column("tier", sa.String(), nullable=True),
    sa.Column("mode", sa.String(), nullable=False),
    sa.Column("banned", sa.Boolean(), nullable=False),
    sa.Column("ban_reason", sa.String(), nullable=True),
    _timestamp("blocked_until", nullable=True),
    sa.Column("preferences", sa.JSON(), nullable=False),
    sa.Column("suffix", sa.String(), nullable=False),
    sa.Column("remix", sa.Boolean(), nullable=False),
    _timestamp("created_at"),
)

sa.Table(
    "banned_words",
    metadata,
    sa.Column("term", sa.String(length=100), primary_key=True),
    sa.Column("added_by", sa.BigInteger(), nullable=False),
    _timestamp("at"),
)

sa.Table(
    "moderation_hits",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("user_id", sa.BigInteger(), nullable=False, index=True),
    sa.Column("term", sa.String(), nullable=False),
    _timestamp("at", index=True),
)

sa.Table(
    "quota_ledger",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("user_id", sa.BigInteger(), nullable=False, index=True),
    sa.Column("job_id", sa.String(length=32), nullable=True, index=True),
    sa.Column("kind", sa.String(), nullable=False),
    sa.Column("seconds", sa.Float(), nullable=False),
    _timestamp("period_start", index=True),
    sa.Column("actor_id", sa.BigInteger(), nullable=True),
    _timestamp("at"),
    sa.UniqueConstraint("job_id", "kind", name="one_entry_per_job_and_kind"),
)

sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("actor_id", sa.BigInteger(), nullable=False, index=True),
    sa.Column("action", sa.String(), nullable=False),
    sa.Column("target", sa.String(), nullable=False),
    sa.Column("details", sa.JSON(), nullable=False),
    _timestamp("at", index=True),
)

sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.String(length=32), primary_key=True),
    sa.Column("user_id", sa.BigInteger(), nullable=False, index=True),
    sa.Column("kind", sa.String(), nullable=False, index=True),
    sa.Column("state", job_state, nullable=False, index=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("error", sa.String(), nullable=True),
    sa.Column("guild_id", sa.BigInteger(), nullable=True),
    sa.Column("channel_id", sa.BigInteger(), nullable=True),
    sa.Column("message_id", sa.BigInteger(), nullable=True),
    sa.Column("application_id", sa.BigInteger(), nullable=True),
    sa.Column("interaction_token", sa.String(), nullable=True),
    sa.Column("prompt", sa.String(), nullable=False),
    sa.Column("negative_prompt", sa.String(), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    sa.Column("parent_job_id", sa.String(length=32), sa.ForeignKey("jobs.id"), nullable=True),
    sa.Column("parent_index", sa.Integer(), nullable=True),
    sa.Column("operation", sa.String(), nullable=False),
    sa.Column("engine", sa.String(), nullable=True),
    sa.Column("model", sa.String(), nullable=True),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("steps", sa.Integer(), nullable=False),
    sa.Column("seed", sa.BigInteger(), nullable=False),
    sa.Column("mode", sa.String(), nullable=False),
    sa.Column("tier", sa.String(), nullable=False),
    sa.Column("priority", sa.Integer(), nullable=False),
    sa.Column("estimate_seconds", sa.Float(), nullable=False),
    sa.Column("engine_seconds", sa.Float(), nullable=True),
    _timestamp("created_at", index=True),
    _timestamp("updated_at"),
    _timestamp("state_since"),
    _timestamp("finished_at", nullable=True),
)

sa.Table(
    "job_transitions",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("from_state", job_state, nullable=True),
    sa.Column("to_state", job_state, nullable=False),
    sa.Column("attempt", sa.Integer(), nullable=False),
    sa.Column("note", sa.String(), nullable=True),
    _timestamp("at"),
)

sa.Table(
    "favourites",
    metadata,
    sa.Column("user_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id"), primary_key=True),
    _timestamp("at"),
)

sa.Table(
    "job_images",
    metadata,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("job_id", sa.String(length=32), sa.ForeignKey("jobs.id"), nullable=False, index=True),
    sa.Column("index", sa.Integer(), nullable=False),
    sa.Column("key", sa.String(length=64), nullable=False),
    sa.Column("width", sa.Integer(), nullable=False),
    sa.Column("height", sa.Integer(), nullable=False),
    sa.Column("seed", sa.BigInteger(), nullable=False),
)


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
