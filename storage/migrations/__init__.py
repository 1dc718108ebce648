"""Schema migrations: Alembic revisions in ``versions/``, run on start by ``Database.open``.

``upgrade(connection)`` brings a database to the newest revision inside the caller's transaction, so two
processes opening the same database cannot both migrate it: on SQLite the caller holds the write lock
(``BEGIN IMMEDIATE``), on Postgres ``upgrade`` takes a transaction-scoped advisory lock first. A database
made by the ``create_all`` code that came before migrations (our tables, no ``alembic_version``) is checked
against the baseline revision and stamped with it, then upgraded like any other.

Alembic is configured here, in code: no ``alembic.ini`` is read at run time. Developers add a revision
with ``python -m storage.migrations revision -m "what changed"`` (see ``__main__.py``).
"""

from __future__ import annotations

import logging
from functools import cache
from pathlib import Path
from typing import Any, Literal

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.autogenerate.api import AutogenContext
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, inspect, text
from sqlmodel.sql.sqltypes import AutoString, UTCDateTime

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent
BASELINE_REVISION = "0001"
"""The schema the pre-migration ``create_all`` code made; older databases are stamped with it."""

POSTGRES_LOCK_KEY = 0x696D6167  # "imag": pg_advisory_xact_lock key held while upgrading


class MigrationError(Exception):
    """The database cannot be brought to the current schema automatically (the message says why)."""


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's settings, without an ini file; ``env.py`` runs on ``connection``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("file_template", "%%(rev)s_%%(slug)s")
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@cache
def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    head = script_directory().get_current_head()  # raises when the revisions have forked
    if head is None:
        raise MigrationError("storage/migrations/versions holds no revisions")
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in ``alembic_version``, or None for a database never migrated."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if len(rows) > 1:
        raise MigrationError(f"the database records several schema revisions at once: {', '.join(rows)}")
    return rows[0] if rows else None


def upgrade(connection: Connection) -> None:
    """Bring the database to the newest revision, inside the transaction ``connection`` is in."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
    current = current_revision(connection)
    head = head_revision()
    if current == head:
        return
    config = alembic_config(connection)
    if current is None and _adopt_create_all_schema(connection):
        command.stamp(config, BASELINE_REVISION)
        current = BASELINE_REVISION
    if current != head:
        command.upgrade(config, "head")
        log.info("database schema upgraded from %s to %s", current or "nothing", head)


def baseline_metadata() -> MetaData:
    """The tables of the baseline revision, frozen as ``create_all`` made them."""
    metadata: MetaData = script_directory().get_revision(BASELINE_REVISION).module.metadata
    return metadata


def _adopt_create_all_schema(connection: Connection) -> bool:
    """True when this unversioned database holds tables of ours: a pre-migration ``create_all`` database.

    Each table it has must have every column of the baseline (else this is some other schema, or one
    from before the baseline, and stamping it would hide the difference). A table it lacks is created,
    as ``create_all`` would have done.
    """
    baseline = baseline_metadata()
    inspector = inspect(connection)
    present = set(inspector.get_table_names()) & set(baseline.tables)
    if not present:
        return False
    missing = [
        f"{name}.{column.name}"
        for name in sorted(present)
        for column in baseline.tables[name].columns
        if column.name not in {c["name"] for c in inspector.get_columns(name)}
    ]
    if missing:
        raise MigrationError(
            "the database predates schema migrations and lacks columns of the baseline schema "
            f"({', '.join(missing)}); it was made by a development build older than the first release "
            "and cannot be upgraded automatically (it was left unchanged)"
        )
    absent = [table for table in baseline.sorted_tables if table.name not in present]
    baseline.create_all(connection, tables=absent)
    log.info(
        "database made before schema migrations: stamped at baseline %s%s",
        BASELINE_REVISION,
        f" (created {', '.join(t.name for t in absent)})" if absent else "",
    )
    return True


def schema_differences(connection: Connection) -> list[Any]:
    """What autogenerate would write for this database: empty when it matches ``storage.models``."""
    from sqlmodel import SQLModel

    from storage import models  # noqa: F401  (registers the tables)

    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "render_item": render_item, "render_as_batch": True}
    )
    return compare_metadata(context, SQLModel.metadata)


def render_item(type_: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """Autogenerate writes sqlmodel's column types as plain SQLAlchemy types (same DDL, no sqlmodel import)."""
    if type_ == "type" and isinstance(obj, AutoString):
        length = getattr(obj.impl, "length", None)
        return f"sa.String(length={length})" if length else "sa.String()"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False
