"""job_images (the results table) keeps where each image lies and what made it: storage key, byte size,
prompt digest, model and generation time.

Rows stored before get their storage key (the local folder's layout, the only store there was) and the
prompt digest, model and engine seconds of their job; their byte size stays unknown.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_images") as batch:
        batch.add_column(sa.Column("storage_key", sa.String(), nullable=True))
        batch.add_column(sa.Column("byte_size", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("prompt_sha256", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("model", sa.String(), nullable=True))
        batch.add_column(sa.Column("generation_seconds", sa.Float(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT job_images.id, job_images.key, jobs.prompt, jobs.model, jobs.engine_seconds "
            "FROM job_images JOIN jobs ON jobs.id = job_images.job_id"
        )
    ).all()
    update = sa.text(
        "UPDATE job_images SET storage_key = :storage_key, prompt_sha256 = :digest, model = :model, "
        "generation_seconds = :seconds WHERE id = :id"
    )
    for row in rows:
        bind.execute(
            update,
            {
                "id": row.id,
                "storage_key": f"{row.key[:2]}/{row.key}.png",
                "digest": hashlib.sha256(row.prompt.encode()).hexdigest(),
                "model": row.model,
                "seconds": row.engine_seconds,
            },
        )


def downgrade() -> None:
    with op.batch_alter_table("job_images") as batch:
        for name in ("generation_seconds", "model", "prompt_sha256", "byte_size", "storage_key"):
            batch.drop_column(name)
