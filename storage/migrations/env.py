"""Alembic environment: runs the revisions on the connection ``storage.migrations`` hands over.

There is no ``alembic.ini`` and no URL here: ``Database.open`` (and ``python -m storage.migrations``) open
the database, start the transaction and pass the connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

from storage import models  # noqa: F401  (registers the tables on SQLModel.metadata)
from storage.migrations import render_item

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "storage/migrations runs on a connection: use Database.open(url) or python -m storage.migrations"
    )

context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    # SQLite cannot ALTER most things; batch mode copies the table instead (and is plain ALTER elsewhere).
    render_as_batch=True,
    render_item=render_item,
    compare_type=True,
    transactional_ddl=True,  # true of both: SQLite and Postgres roll DDL back with the transaction
)
with context.begin_transaction():  # inside the caller's transaction: commits or rolls back with it
    context.run_migrations()
